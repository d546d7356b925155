#!/usr/bin/env bash
# Full shoe reconstruction on the device machine, in the background (a run can outlast one device call).
# Usage: bash scripts/device_shoe.sh OUT_DIR [extra --set overrides...]
set -u
out=$1; shift
mkdir -p "$out"
setsid nohup python3 scripts/bench_train.py --dataset .devdata/shoe/1024 --preset gpu-default --run-dir "$out/run" \
    --set geometry.mesh_scale=2.5 --set checkpoint_every=1000 --set snapshot_every=250 "$@" > "$out/log.txt" 2>&1 &
echo "started $!"

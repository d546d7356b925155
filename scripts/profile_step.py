"""Profile training steps with torch.profiler: the kit's ranges (rk.*) and the top operators.

    python scripts/profile_step.py --dataset path/to/prepared/1024 --preset gpu-default --steps 10 [--pass2]
    python scripts/profile_step.py --dataset ... --steps 0 --time 100     # wall time per step only, no profiler
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from recon_kit import config
from recon_kit.data import dataset as rk_dataset
from recon_kit.train import trainer


def launch_summary(prof, steps: int) -> str:
    """Per step: the device activities (kernels, memcpy and memset) with their summed time, and the most frequent
    CUDA runtime calls (launches, synchronisations, copies).

    Summed device time far below the wall time per step means the GPU waits on the host (launch- or sync-bound).
    """
    events = prof.events()
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    kernel_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    runtime = {}
    for e in events:
        if e.name.startswith("cuda") and getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU:
            runtime[e.name] = runtime.get(e.name, 0) + 1
    calls = ", ".join(f"{k} {v / steps:.1f}" for k, v in sorted(runtime.items(), key=lambda kv: -kv[1])[:8])
    return (f"per step: {len(kernels) / steps:.0f} device activities, {kernel_ms / steps:.2f} ms summed device time; "
            f"runtime calls per step: {calls}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--preset", default="gpu-default")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--pass2", action="store_true", help="profile pass-2 steps (runs 2 pass-1 steps, then bakes)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--time", type=int, default=0, help="also time this many steps without the profiler")
    a = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.pass2:
        overrides.setdefault("pass1.iterations", 2)
    cfg = config.resolve(a.preset, overrides)
    tr = trainer.Trainer(cfg, rk_dataset.load_viewset(a.dataset, resolution=cfg.data.resolution), None)
    if a.pass2:
        tr.run(cfg.pass1.iterations, progress=False)
    tr.run(a.warmup, progress=False)
    if a.time:
        sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        tr.run(a.time, progress=False)
        sync()
        ms = 1e3 * (time.perf_counter() - t0) / a.time
        print(f"{tr.pass_name}: {ms:.1f} ms/step over {a.time} steps ({tr.device}, {cfg.data.resolution}px, "
              f"batch {tr._pass_cfg.batch}, overrides {overrides})")
    if a.steps <= 0:
        return
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tr.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        tr.run(a.steps, progress=False)
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if tr.device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages()
    if tr.device.type == "cuda":
        print(launch_summary(prof, a.steps))
    print("per step, kit ranges:")
    for ev in sorted((e for e in table if e.key.startswith("rk.")), key=lambda e: e.key):
        dev_t = getattr(ev, "device_time_total", getattr(ev, "cuda_time_total", 0))
        print(f"  {ev.key:18s} cpu {ev.cpu_time_total / 1e3 / a.steps:8.2f} ms   device {dev_t / 1e3 / a.steps:8.2f} ms")
    print(table.table(sort_by=key.replace("cuda", "device") if tr.device.type == "cuda" else key, row_limit=a.rows))


if __name__ == "__main__":
    main()

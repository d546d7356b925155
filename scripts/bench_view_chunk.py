"""Peak memory and step time of training steps with a step's views rendered at once or in chunks (config
``view_chunk``), each setting in a fresh process.

    OMP_NUM_THREADS=2 python scripts/bench_view_chunk.py --dataset <prepared>/512 --res 512 --batch 6 --chunks 0 2 1
    python scripts/bench_view_chunk.py --dataset <shoe>/2048 --res 2048 --batch 6 --chunks 0 2 1 \\
        --set shade_chunk=262144 --device cuda --out mem.json                       # the 12-GB question (issue 15)

Every setting builds a ``gpu-default`` trainer (overrides with ``--set``), runs ``--steps`` pass-1 steps, switches
to pass 2 and runs as many again. Peak memory per pass is ``torch.cuda.max_memory_allocated`` on CUDA and the
process's peak RSS on the CPU (cumulative: pass 2's figure includes pass 1's). Without ``--dataset`` the built-in
demo capture is prepared at ``--res``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recon_kit, not another install


def one(dataset: str, res: int, batch: int, chunk: int, steps: int, device: str, sets: list[str]) -> dict:
    import resource

    import torch

    from recon_kit import config
    from recon_kit.data.dataset import load_viewset
    from recon_kit.train.trainer import Trainer

    overrides = {"data.resolution": res, "pass1.batch": batch, "pass2.batch": batch, "view_chunk": chunk,
                 "pass1.iterations": steps, "pass2.iterations": steps, "snapshot_every": 0, "checkpoint_every": 0,
                 "device": device, **config.parse_overrides(sets)}
    cfg = config.resolve("gpu-default", overrides)
    tr = Trainer(cfg, load_viewset(dataset))
    cuda = tr.device.type == "cuda"
    out = {"res": res, "batch": batch, "view_chunk": chunk, "steps": steps, "device": str(tr.device)}
    for name in ("pass1", "pass2"):
        if name == "pass2":
            tr.switch_to_pass2()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.step()
        if cuda:
            torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
        out[name] = {"peak_gib": round(peak, 3), "s_per_step": (time.perf_counter() - t0) / steps,
                     "loss": float(tr.history[-1]["total"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="prepared dataset folder (default: the demo capture prepared at --res)")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 2, 1])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.dataset, args.res, args.batch, args.chunks[0], args.steps, args.device, args.set)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset
        if dataset is None:
            from recon_kit import synth
            from recon_kit.data.dataset import prepare_dataset

            cap = synth.write_demo_capture(Path(tmp) / "capture", resolution=args.res, n_test=0)
            prepare_dataset(cap, Path(tmp) / "data", [args.res], progress=False)
            dataset = str(Path(tmp) / "data" / str(args.res))
        rows = []
        for chunk in args.chunks:
            cmd = [sys.executable, __file__, "--one", "--dataset", dataset, "--res", str(args.res), "--batch",
                   str(args.batch), "--chunks", str(chunk), "--steps", str(args.steps), "--device", args.device]
            cmd += [f"--set={s}" for s in args.set]
            row = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            rows.append(row)
            print(f"view_chunk {chunk}: pass 1 {row['pass1']['peak_gib']:.2f} GiB, {row['pass1']['s_per_step']:.2f} "
                  f"s/step; pass 2 {row['pass2']['peak_gib']:.2f} GiB, {row['pass2']['s_per_step']:.2f} s/step",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Time a sweep of N runs on the ray engine with 1, 2, ... GPUs (docs/benchmarks.md, "Sweeps on Ray").

    python scripts/bench_sweep.py --dataset demo --trials 4 --gpus 1 2 --out outputs/bench_sweep
    python scripts/bench_sweep.py --dataset path/to/prepared --preset gpu-default --trials 4 --gpus 1 2 \\
        --set pass1.iterations=1000 --set pass2.iterations=500

For each G in ``--gpus`` a fresh local Ray that may use G GPUs runs the same N runs (seeds 0..N-1, one GPU each,
or ``--gpus-per-trial``) into ``OUT/gpus=G``; ``--gpus 0`` is the sequential engine (no Ray) on one device, for
reference. Prints one line per configuration and the speed-up against the first, and writes ``OUT/bench.json``.
``--dataset demo`` prepares the built-in object at the preset's resolution into ``OUT/data``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from recon_kit import config
from recon_kit.runs import sweep as rk_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo", help="prepared dataset folder, or 'demo'")
    ap.add_argument("--preset", default="gpu-default")
    ap.add_argument("--out", default="outputs/bench_sweep")
    ap.add_argument("--trials", type=int, default=4, help="runs per sweep (seeds 0..N-1)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPUs Ray may use, one sweep each (0: sequential)")
    ap.add_argument("--gpus-per-trial", type=float, default=1.0)
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    a = ap.parse_args()
    base = config.parse_overrides(a.set)
    out = Path(a.out)
    if a.dataset == "demo":
        dataset = rk_sweep.demo_dataset(out / "data", config.resolve(a.preset, base).data.resolution)
    else:
        dataset = Path(a.dataset)
    params = [{"seed": s} for s in range(a.trials)]
    results = []
    for g in a.gpus:
        folder = out / f"gpus={g}"
        engine = "trainer" if g == 0 else "ray"
        sweep = rk_sweep.Sweep(folder, dataset, runs=params, preset=a.preset, base=base, engine=engine)
        opts = None
        if g:
            import ray

            ray.init(num_gpus=g, include_dashboard=False, configure_logging=False, log_to_driver=False)
            opts = {"gpus_per_trial": a.gpus_per_trial, "cpus_per_trial": a.cpus_per_trial}
        t0 = time.perf_counter()
        table = sweep.run(progress=False, rerun=True, ray=opts)
        wall = time.perf_counter() - t0
        if g:
            ray.shutdown()
        row = {"gpus": g, "engine": engine, "trials": a.trials, "wall_s": round(wall, 1),
               "finished": int((table.status == "finished").sum()),
               "mean_run_s": round(float(table["sweep_wall_s"].mean()), 1),
               "mean_train_psnr": round(float(table["train_psnr"].mean()), 2) if "train_psnr" in table else None}
        results.append(row)
        row["speedup"] = round(results[0]["wall_s"] / row["wall_s"], 2) if row["wall_s"] else None
        where = f"ray, {g} GPU(s)" if g else "the sequential engine"
        first = f"{results[0]['gpus']} GPU(s)" if results[0]["gpus"] else "sequential"
        print(f"{a.trials} runs on {where}: {wall:.1f} s (x{row['speedup']} vs {first}); {row['finished']} finished; "
              f"mean run {row['mean_run_s']} s", flush=True)
    report = {"preset": a.preset, "overrides": base, "dataset": str(dataset), "host": platform.node(),
              "results": results}
    try:
        import torch

        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - the device name is decoration
        pass
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

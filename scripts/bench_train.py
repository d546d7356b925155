"""Time a full two-pass reconstruction: wall time per pass, iterations/s, bake time, peak GPU memory, PSNR.

    python scripts/bench_train.py --dataset path/to/prepared/1024 --preset gpu-default --run-dir outputs/bench
    python scripts/bench_train.py --dataset ... --set pass1.iterations=500 --set pass2.iterations=500

Writes <run-dir>/bench.json and prints it; the run folder also holds the usual exports and metrics.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from recon_kit import config
from recon_kit.data import dataset as rk_dataset
from recon_kit.runs import run as rk_run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--preset", default="gpu-default")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--set", action="append", default=[], help="override, e.g. pass1.iterations=500")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.set)}
    cfg = config.resolve(a.preset, overrides)
    views = rk_dataset.load_viewset(a.dataset, resolution=cfg.data.resolution)
    t0 = time.perf_counter()
    tr = rk_run.new_trainer(cfg, views, a.run_dir, overwrite=a.overwrite)
    dev = tr.device
    _sync(dev)
    t_setup = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t1 = time.perf_counter()
    tr.run(cfg.pass1.iterations, progress=False)
    _sync(dev)
    t_p1 = time.perf_counter() - t1
    t2 = time.perf_counter()
    tr.step()                                # the switch: extract, clean, unwrap, bake, then one pass-2 step
    _sync(dev)
    t_bake = time.perf_counter() - t2
    t3 = time.perf_counter()
    tr.run(progress=False)
    _sync(dev)
    t_p2 = time.perf_counter() - t3
    t4 = time.perf_counter()
    result = rk_run.finish(tr, a.dataset)
    t_finish = time.perf_counter() - t4
    n1, n2 = cfg.pass1.iterations, max(1, cfg.pass2.iterations - 1)
    bench = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "backend": tr.rast.name,
        "encoder": type(tr.field.encoder).__name__ if tr.field is not None else None,
        "resolution": cfg.data.resolution, "batch": [cfg.pass1.batch, cfg.pass2.batch], "grid_res": cfg.geometry.grid_res,
        "iterations": [cfg.pass1.iterations, cfg.pass2.iterations],
        "setup_s": round(t_setup, 2), "pass1_s": round(t_p1, 2), "pass1_ms_per_it": round(1e3 * t_p1 / max(1, n1), 2),
        "bake_s": round(t_bake, 2), "pass2_s": round(t_p2, 2), "pass2_ms_per_it": round(1e3 * t_p2 / n2, 2),
        "export_eval_s": round(t_finish, 2), "total_s": round(time.perf_counter() - t0, 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2) if dev.type == "cuda" else None,
        "faces": result.get("faces"), "train_psnr": result.get("train_psnr"), "train_psnr_masked": result.get("train_psnr_masked"),
        "train_ssim": result.get("train_ssim"), "train_iou": result.get("train_iou"),
        "per_view_psnr": [round(r["psnr"], 2) for r in result.get("train_views", [])],
        "date": time.strftime("%Y-%m-%d"), "overrides": overrides, "preset": a.preset,
    }
    Path(a.run_dir, "bench.json").write_text(json.dumps(bench, indent=2))
    print(json.dumps(bench, indent=2))


if __name__ == "__main__":
    main()

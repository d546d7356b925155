"""Quality of a real capture (the user's shoe) under several settings, each a run, run side by side.

    python scripts/bench_shoe.py --dataset <prepared>/1024 --preset gpu-default --out OUT \\
        --variant base: --variant refine:cameras.refine=true,loss.edge_px=8 --jobs 4 [--set key=value ...]

Each variant trains in its own process (several share one GPU well: the step is launch-bound) and writes
``OUT/<name>/bench.json``: phase times, peak memory, the 6-view PSNR / SSIM / IoU under the learned cameras and
under the cameras as written, the depth residual, the fringe score of 8 views between the training views
(with the photos' own score for reference), the per-view camera corrections, and ``novel.png`` (those views).
``OUT/summary.json`` and ``OUT/summary.md`` collect them. ``--set`` applies to every variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: list[str]) -> dict:
    return {k: parse_value(v) for k, v in (s.split("=", 1) for s in items if s)}


def run_one(args) -> dict:
    import imageio.v3 as iio
    import torch

    from recon_kit import config
    from recon_kit.data.dataset import load_viewset
    from recon_kit.evaluate import fringe
    from recon_kit.runs.run import finish, new_trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config.resolve(args.preset, parse_sets(args.set))
    t0 = time.perf_counter()
    views = load_viewset(args.dataset, resolution=cfg.data.resolution)
    tr = new_trainer(cfg, views, out / "run", overwrite=True)
    cuda = tr.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t_setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    tr.run(cfg.pass1.iterations, progress=False)
    sync()
    t_p1 = time.perf_counter() - t1
    t2 = time.perf_counter()
    tr.run(progress=False)
    sync()
    t_rest = time.perf_counter() - t2
    t3 = time.perf_counter()
    result = finish(tr, args.dataset)
    t_finish = time.perf_counter() - t3
    fr = fringe(tr.render_views, tr.views)
    iio.imwrite(out / "novel.png", (np.concatenate(list(fr.pop("fringe_images")), 1) * 255 + 0.5).astype(np.uint8))
    bench = {"variant": out.name, "overrides": parse_sets(args.set), "preset": args.preset,
             "device": torch.cuda.get_device_name(0) if cuda else "cpu",
             "seconds": {"setup": t_setup, "pass1": t_p1, "bake_and_pass2": t_rest, "finish": t_finish,
                         "bake": tr.timings["bake"], "total": time.perf_counter() - t0},
             "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
             "faces": result["faces"], **{k: v for k, v in result.items() if k.startswith("train_")}, **fr}
    if tr.cam_refiner is not None:
        bench["camera_corrections"] = tr.cam_refiner.report(views.names, cfg.data.resolution)
        written = tr.evaluate(tr.views, split="written")
        bench.update({k: v for k, v in written.items() if not k.endswith("_views")})
    (out / "bench.json").write_text(json.dumps(bench, indent=2, default=float))
    return bench


def table(rows: list[dict]) -> str:
    cols = [("variant", "{}"), ("train_psnr", "{:.2f}"), ("written_psnr", "{:.2f}"), ("train_ssim", "{:.4f}"),
            ("train_iou", "{:.4f}"), ("train_depth_residual", "{:.4f}"), ("fringe", "{:.4f}"),
            ("fringe_photos", "{:.4f}"), ("faces", "{}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " | total s |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = [fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in cols]
        lines.append("| " + " | ".join(cells) + f" | {r['seconds']['total']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--preset", default="gpu-default")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], help="override for every variant, e.g. pass1.iterations=500")
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,key=value (NAME: = the preset)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending = []
    for spec in args.variant or ["base:"]:
        name, _, over = spec.partition(":")
        sets = args.set + [s for s in over.split(",") if s]
        cmd = [sys.executable, __file__, "--one", "--dataset", args.dataset, "--preset", args.preset,
               "--out", str(out / name)] + [a for s in sets for a in ("--set", s)]
        pending.append((name, cmd))
    root = str(Path(__file__).resolve().parents[1])           # the checkout's recon_kit, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    running, rows = [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, cmd = pending.pop(0)
            log = open(out / f"{name}.log", "w")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                path = out / name / "bench.json"
                if proc.returncode == 0 and path.exists():
                    rows.append(json.loads(path.read_text()))
                    print(f"{name}: done", flush=True)
                else:
                    print(f"{name}: FAILED ({proc.returncode}); see {out / (name + '.log')}", flush=True)
        time.sleep(1)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    (out / "summary.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()

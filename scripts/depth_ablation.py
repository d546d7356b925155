"""Does depth supervision improve geometry? Train the same synthetic object with and without the depth loss
and compare Chamfer-L1 / F-score against its ground-truth mesh and silhouette IoU on held-out views.

    python scripts/depth_ablation.py --out outputs/depth_ablation [--object demo|spot] [--preset cpu-small]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recon_kit.data import dataset as rk_dataset
from recon_kit import evaluate
from recon_kit.runs import run as rk_run
from recon_kit import synth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/depth_ablation")
    ap.add_argument("--object", default="demo", choices=["demo", "spot"])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    out = Path(a.out)
    cap = out / "capture"
    if not cap.exists():
        if a.object == "demo":
            synth.write_demo_capture(cap, resolution=2 * a.resolution, n_test=8)
        else:
            synth.spot_capture(cap, resolution=2 * a.resolution, n_test=8)
    ds = out / "data"
    if not ds.exists():
        rk_dataset.prepare_dataset(cap, ds, [a.resolution], progress=False)
    dataset = ds / str(a.resolution)
    rows = []
    for w in a.weights:
        overrides = {"loss.depth": w, "data.resolution": a.resolution, "snapshot_every": 0}
        overrides.update({k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)})
        run = out / f"depth_{w:g}"
        result = rk_run.train_from_config(a.preset, dataset, run, overrides, overwrite=True, progress=False)
        geo = evaluate.chamfer_fscore(run / "mesh" / "mesh.obj", dataset / "gt_mesh.obj", n_points=50_000)
        rows.append({"depth_weight": w, "chamfer_l1_pct": 100 * geo["chamfer_l1"], "fscore_1pct": geo["fscore"],
                     "normal_consistency": geo["normal_consistency"], "test_iou": result.get("test_iou"),
                     "test_psnr": result.get("test_psnr")})
        print(json.dumps(rows[-1]), flush=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    print("| depth weight | Chamfer-L1 (% diag) | F-score@1% | normal consistency | held-out IoU | held-out PSNR |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['depth_weight']:g} | {r['chamfer_l1_pct']:.3f} | {r['fscore_1pct']:.3f} | "
              f"{r['normal_consistency']:.3f} | {r['test_iou']:.3f} | {r['test_psnr']:.2f} |")


if __name__ == "__main__":
    main()

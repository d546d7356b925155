"""Where a run's training-view error sits: PSNR outside and inside a band around each mask edge, and the band's
share of the squared error split by what the photo shows there.

    python scripts/psnr_bands.py RUN_DIR DATASET_DIR [--band 8] [--tol 20] [--out bands.json]

Re-renders the run's exported mesh (textures and learned light, :func:`recon_kit.runs.run.load_run`) from its
corrected cameras (``RUN_DIR/cameras_corrected.json``, else the dataset's) over white, as ``Trainer.evaluate``
does, and splits the image into: outside the band; inside the mask's edge band where the photo is background-
coloured (within ``--tol`` of white on every channel: what edge-aware colour does not learn and the fringe score
counts); inside the band where the photo shows the object; and the band outside the mask. ``full`` should match
the run's logged PSNR to a few tenths of a dB (the light is rebuilt from its exported probe).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recon_kit, not another install

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.ndimage import binary_dilation, binary_erosion  # noqa: E402

from recon_kit.cameras import stack_matrices  # noqa: E402
from recon_kit.color import linear_to_srgb  # noqa: E402
from recon_kit.data.dataset import load_viewset  # noqa: E402
from recon_kit.evaluate import psnr  # noqa: E402
from recon_kit.render import get_rasterizer, render_mesh  # noqa: E402
from recon_kit.runs.run import corrected_cameras, load_run  # noqa: E402


def bands(run_dir: Path, dataset_dir: Path, band_px: int = 8, tol: float = 20.0, light_res: int = 256) -> list[dict]:
    run = load_run(run_dir, light_res=light_res)
    views = load_viewset(dataset_dir)
    h, w = views.rgb_linear.shape[1:3]
    cams = corrected_cameras(run_dir, views) or views.cameras
    rast = get_rasterizer("auto", run.mesh.v_pos.device)
    material = run.material(run.mesh.v_pos.device).material
    logged = {r["view"]: r["psnr"] for r in run.metrics.get("train_views", [])}
    rows = []
    for i, name in enumerate(views.names):
        with torch.no_grad():
            out = render_mesh(rast, run.mesh, stack_matrices([cams[i]], device=run.mesh.v_pos.device), (h, w),
                              material, run.light, torch.ones(1, h, w, 3, device=run.mesh.v_pos.device),
                              compile=False)
        pred = linear_to_srgb(out["rgb_linear"][0].clamp(0, 1)).cpu().numpy()
        m = views.mask[i].numpy() > 0.5
        ref = linear_to_srgb((views.rgb_linear[i] * views.mask[i, ..., None] + 1 - views.mask[i, ..., None])
                             .clamp(0, 1)).numpy()
        photo_bg = np.abs(linear_to_srgb(views.rgb_linear[i].clamp(0, 1)).numpy() - 1.0).max(-1) < tol / 255
        band = binary_dilation(m, iterations=band_px) & ~binary_erosion(m, iterations=band_px)
        err = ((pred - ref) ** 2).mean(-1)
        parts = {"band_in_mask_photo_background": band & m & photo_bg, "band_in_mask_photo_object": band & m & ~photo_bg,
                 "band_outside_mask": band & ~m}
        rows.append({"view": name, "psnr_logged": logged.get(name), "psnr_full": psnr(pred, ref),
                     "psnr_outside_band": psnr(pred, ref, ~band), "psnr_band": psnr(pred, ref, band),
                     "band_pixels": float(band.mean()), "band_error_share": float(err[band].sum() / err.sum()),
                     **{f"{k}_pixels": float(v.mean()) for k, v in parts.items()},
                     **{f"{k}_error_share": float(err[v].sum() / err.sum()) for k, v in parts.items()}})
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("--band", type=int, default=8, help="half-width of the edge band in pixels")
    ap.add_argument("--tol", type=float, default=20.0, help="background-colour tolerance (0-255, sRGB)")
    ap.add_argument("--light-res", type=int, default=256, help="cube face size of the rebuilt light")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = bands(a.run_dir, a.dataset_dir, a.band, a.tol, a.light_res)
    if a.out:
        a.out.write_text(json.dumps({"run_dir": str(a.run_dir), "dataset_dir": str(a.dataset_dir), "band_px": a.band,
                                     "tol": a.tol, "views": rows}, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""Three independent scores of a capture's field of view over camera_angle_x (docs/posecheck.md).

    python scripts/calibration_evidence.py ../shared/datasets/shoe --out outputs/calibration_evidence

Equal camera distances; for each angle the volume is the cube the image spans at the origin (as
``posecheck.calibrate`` does). Columns:

- ``coverage_depth``: silhouette coverage of the masks ``depth > 0`` (``posecheck.calibrate``'s score);
- ``coverage_photo``: the same with masks from the photos' background colour;
- ``depth_r2``: mean over views of the R^2 of an affine fit of the hull's depth (``hull.project_depth``) to the
  capture's depth map where both have depth (the fit absorbs 8-bit encodings of unknown range);
- ``depth_slope_cv``: spread (std / mean) of those fits' slopes over the views; one depth encoding shared by
  all views gives equal slopes at the right angle.

Writes ``evidence.csv`` and ``evidence.png`` into ``--out`` (refuses to replace them without ``--overwrite``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from recon_kit.data import capture as rk_capture
from recon_kit.data import masks as rk_masks
from recon_kit import posecheck
from recon_kit.model.hull import project_depth, spanned_bounds, view_votes  # noqa: F401


def depth_fits(cameras, masks: torch.Tensor, depths: torch.Tensor, angle: float, res: int) -> tuple[float, float]:
    """(mean R^2, slope spread) of per-view affine fits of the hull's depth to the depth maps at ``angle``."""
    cams = posecheck.rescaled_cameras(cameras, angle)
    hull = view_votes(cams, masks, spanned_bounds(cams), res).hull(None, min_seen=len(cams))
    r2, slopes = [], []
    for cam, ref in zip(cams, depths):
        pred = project_depth(hull, cam)
        sel = (pred > 0) & (ref > 0)
        x, y = pred[sel].double(), ref[sel].double()
        a = ((x - x.mean()) * (y - y.mean())).mean() / (x.var(unbiased=False) + 1e-12)
        resid = y - y.mean() - a * (x - x.mean())
        r2.append(float(1 - resid.var(unbiased=False) / (y.var(unbiased=False) + 1e-12)))
        slopes.append(float(a))
    return float(np.mean(r2)), float(np.std(slopes) / max(abs(np.mean(slopes)), 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", help="capture folder with multi_views/ and depth_renders/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--angles", type=float, nargs=3, default=(0.7, 1.2, 0.05), metavar=("FROM", "TO", "STEP"))
    ap.add_argument("--size", type=int, default=128, help="mask size in pixels (long side)")
    ap.add_argument("--res", type=int, default=96, help="hull grid nodes per axis")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    if not a.overwrite and any((out / f).exists() for f in ("evidence.csv", "evidence.png")):
        raise SystemExit(f"{out} already holds evidence.csv/png; pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    angles = np.arange(a.angles[0], a.angles[1] + 1e-9, a.angles[2])

    capture = rk_capture.load_capture(a.capture, max_size=a.size, require_depth=True)
    by_depth = rk_masks.compute_masks(capture, "depth")
    by_photo = rk_masks.compute_masks(capture, "background")
    cams = [v.camera for v in capture.views]
    m_depth = torch.tensor(np.stack([v.mask for v in by_depth.views]), dtype=torch.float32)
    m_photo = torch.tensor(np.stack([v.mask for v in by_photo.views]), dtype=torch.float32)
    depths = torch.tensor(np.stack([v.depth for v in by_depth.views]), dtype=torch.float32)
    depths = torch.where(depths >= depths.max(), torch.zeros_like(depths), depths)  # saturated 8-bit values

    table = pd.DataFrame({"camera_angle_x": angles})
    for name, masks in (("coverage_depth", m_depth), ("coverage_photo", m_photo)):
        calib = posecheck.calibrate(cams, masks, angles=angles, mask_size=None, res=a.res)
        table[name] = calib.table["coverage"].to_numpy()
    fits = [depth_fits(cams, m_depth, depths, float(x), a.res) for x in angles]
    table["depth_r2"], table["depth_slope_cv"] = zip(*fits)
    table.to_csv(out / "evidence.csv", index=False)
    print(table.round(4).to_string(index=False))
    best = {c: float(table.loc[table[c].idxmax() if c != "depth_slope_cv" else table[c].idxmin(), "camera_angle_x"])
            for c in table.columns[1:]}
    print("best angle per score:", {k: round(v, 3) for k, v in best.items()})

    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for ax, col in zip(axes, table.columns[1:]):
        ax.plot(table["camera_angle_x"], table[col], ".-")
        ax.axvline(best[col], color="g", ls="--", label=f"best {best[col]:.2f}")
        ax.axvline(float(np.mean([c.camera_angle_x for c in cams])), color="k", ls=":", label="given")
        ax.set_title(col)
        ax.set_xlabel("camera_angle_x (rad)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "evidence.png", dpi=80)


if __name__ == "__main__":
    main()

"""How well a capture's depth maps agree with a reconstructed mesh, view by view, and which encoding fits them.

    python scripts/depth_agreement.py RUN_DIR DATASET_DIR [--out agreement.json] [--erode 8]

Renders the run's exported mesh (the OBJ folder ``RUN_DIR/mesh``) from the run's corrected cameras
(``RUN_DIR/cameras_corrected.json``, else the dataset's) and fits each view's stored depth values against the
rendered depth two ways, ``a * z + b`` and ``a / z + b``, over pixels both cover (eroded by ``--erode`` px so that
silhouette misregistration does not dominate). Residuals are in the depth map's own units (8-bit levels for the
shoe): a view whose map disagrees with the photo-consistent surface stands out, and the two fits tell whether the
map stores depth or inverse depth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recon_kit, not another install

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.ndimage import binary_erosion  # noqa: E402

from recon_kit.cameras import stack_matrices  # noqa: E402
from recon_kit.data.dataset import load_viewset  # noqa: E402
from recon_kit.io.meshfile import load_obj_folder  # noqa: E402
from recon_kit.render import get_rasterizer, render_mesh  # noqa: E402
from recon_kit.render.renderer import constant_material  # noqa: E402
from recon_kit.runs.run import corrected_cameras  # noqa: E402


def fit(values: np.ndarray, x: np.ndarray) -> dict:
    """Least-squares ``values ~ a x + b``: RMS and median absolute residual."""
    a = np.stack([x, np.ones_like(x)], 1)
    coef, *_ = np.linalg.lstsq(a, values, rcond=None)
    r = values - a @ coef
    return {"rms": float(np.sqrt(np.mean(r ** 2))), "median_abs": float(np.median(np.abs(r)))}


def agreement(run_dir: Path, dataset_dir: Path, erode: int = 8) -> list[dict]:
    views = load_viewset(dataset_dir)
    if views.depth is None:
        raise SystemExit(f"{dataset_dir} has no depth maps; nothing to compare")
    h, w = views.rgb_linear.shape[1:3]
    cams = corrected_cameras(run_dir, views) or views.cameras
    mesh, _ = load_obj_folder(run_dir / "mesh")
    rast = get_rasterizer("auto", mesh.v_pos.device)
    rows = []
    for i, name in enumerate(views.names):
        with torch.no_grad():
            out = render_mesh(rast, mesh, stack_matrices([cams[i]], device=mesh.v_pos.device), (h, w),
                              constant_material(), None, torch.ones(1, h, w, 3, device=mesh.v_pos.device),
                              bsdf="kd", compile=False)
        z = out["depth"][0, ..., 0].cpu().numpy().astype(np.float64)
        d = views.depth[i].cpu().numpy().astype(np.float64)
        valid = (out["mask"][0, ..., 0].cpu().numpy() > 0.5) & (d > 0)
        valid &= binary_erosion(valid, iterations=erode)
        dv, zv = d[valid], z[valid]
        rows.append({"view": name, "pixels": int(valid.sum()), "levels": int(np.unique(dv).size),
                     "depth_range": [float(zv.min()), float(zv.max())],
                     "fit_depth": fit(dv, zv), "fit_inverse_depth": fit(dv, 1.0 / zv)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("--erode", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = agreement(a.run_dir, a.dataset_dir, a.erode)
    if a.out:
        a.out.write_text(json.dumps({"run_dir": str(a.run_dir), "dataset_dir": str(a.dataset_dir), "erode": a.erode,
                                     "views": rows}, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

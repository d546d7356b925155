"""``geometry.mesh_scale: auto``: the side of the origin-centred cube the DMTet grid spans, fitted to the visual hull.

The hull is carved in a generous cube (twice what the images span at the origin) from the nodes every view sees,
its occupied box is grown by ``margin`` and the cube side rounded up to 0.05. Too small a cube cuts the object
(toe and heel come out flat); too large a one wastes grid resolution. The fitted value is logged and written into
the run's config.json, so a run resumes and reports with the number it used.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from recon_kit.cameras import Camera
from recon_kit.model.hull import spanned_bounds, view_votes, working_set

log = logging.getLogger(__name__)

__all__ = ["ScaleFit", "fit_mesh_scale"]


@dataclass(frozen=True)
class ScaleFit:
    mesh_scale: float             # the fitted cube side
    hull_bounds: np.ndarray       # [2,3] occupied box of the hull (world units)
    margin: float
    searched: float               # side of the cube the hull was carved in

    def __str__(self) -> str:
        return (f"mesh_scale auto = {self.mesh_scale:.2f} (visual hull reaches "
                f"{np.round(self.hull_bounds, 2).tolist()}, +{self.margin:.0%} margin)")


def fit_mesh_scale(cameras: Sequence[Camera], masks: torch.Tensor, margin: float = 0.1, res: int = 64,
                   mask_size: int = 128) -> ScaleFit:
    """Fit ``mesh_scale`` to the visual hull of ``masks`` [N,H,W] seen by ``cameras``; raises when the masks carve
    nothing (empty masks, wrong poses: notebook 02 tells which)."""
    cams, m = working_set(list(cameras), masks.float(), mask_size)
    lo, hi = spanned_bounds(cams)
    side = 4.0 * hi
    for _ in range(3):
        box = (-0.5 * side, 0.5 * side)
        hull = view_votes(cams, m, box, res, m.device).hull(None, min_seen=len(cams))
        ext = hull.occupied_bounds(pad=1.0)
        if ext is None:
            raise ValueError("mesh_scale auto: the masks carve an empty visual hull; check the masks and poses "
                             "(notebook 02) or set geometry.mesh_scale to a number")
        if not any(hull.touches_bounds().values()):
            break
        side *= 2.0
    need = 2.0 * float(np.abs(ext).max()) * (1.0 + margin)
    return ScaleFit(math.ceil(need * 20.0) / 20.0, ext, margin, side)

"""Similarity fit of depth maps onto photos (scale + shift found by silhouette overlap)."""

from __future__ import annotations


import math
from dataclasses import replace

import numpy as np
from recon_kit.data.capture import Capture, map_views
from recon_kit.io.images import fit_size
from recon_kit.data.masks import foreground_masks
from recon_kit.data.masks import mask_iou
from recon_kit.io.images import resize_area
from recon_kit.data.capture import Similarity


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.maximum(a, b).sum()
    return 1.0 if union == 0 else float(np.minimum(a, b).sum() / union)


def estimate_similarity(src: np.ndarray, dst: np.ndarray, refine: bool = True, work_size: int = 256,
                        ) -> Similarity:
    """Similarity that moves boolean mask ``src`` onto mask ``dst`` (same size).

    The start is the moment match (centroids, scale ``sqrt(area_dst / area_src)``); a pattern search on
    ``log(scale), tx, ty`` then maximises the (soft) IoU of the masks box-filtered to ``work_size``. The
    identity is a candidate too, so the result never agrees worse than no alignment at ``work_size``.
    """
    src, dst = np.asarray(src, bool), np.asarray(dst, bool)
    if src.shape != dst.shape:
        raise ValueError(f"mask shapes differ: {src.shape} vs {dst.shape}")
    if not src.any() or not dst.any():
        return Similarity()
    H, W = src.shape
    w, h = fit_size(W, H, min(work_size, max(W, H)))
    a, b = resize_area(src.astype(np.float32), w, h), resize_area(dst.astype(np.float32), w, h)

    def moments(m):
        ys, xs = np.nonzero(m)
        return np.array([(xs.mean() + 0.5) / W, (ys.mean() + 0.5) / H]), xs.size / (W * H)

    (c_src, area_src), (c_dst, area_dst) = moments(src), moments(dst)
    s0 = math.sqrt(area_dst / area_src)
    t0 = c_dst - s0 * c_src

    def score(p):  # p = (log scale, tx, ty) with shifts in normalised units
        sim = Similarity(math.exp(p[0]), p[1], p[2])
        return _soft_iou(sim.warp(a, order=1), b)

    def search(p, max_evals: int = 400):
        p, best = np.array(p, dtype=np.float64), score(p)
        step = np.array([0.02, 2.0 / w, 2.0 / h])
        evals = 0
        while step[1] * w > 0.05 and evals < max_evals:
            improved = False
            for k in range(3):
                for sign in (1.0, -1.0):
                    q = p.copy()
                    q[k] += sign * step[k]
                    sq, evals = score(q), evals + 1
                    if sq > best + 1e-9:
                        p, best, improved = q, sq, True
                        break
            if not improved:
                step = step / 2
        return best, p

    starts = [np.zeros(3), np.array([math.log(s0), t0[0], t0[1]])]
    results = [search(p) if refine else (score(p), p) for p in starts]
    best, p = max(results, key=lambda r: r[0])
    if best <= score(starts[0]) + 1e-9:
        return Similarity()
    return Similarity(math.exp(p[0]), float(p[1]), float(p[2]))


def align_capture(capture: Capture, foreground: dict[str, np.ndarray] | None = None, *, work_size: int = 256,
                  progress: bool = True) -> Capture:
    """A copy of ``capture`` whose depth maps (and depth masks) are moved onto the photos' foregrounds.

    Per view, :func:`estimate_similarity` fits depth ``> 0`` to the foreground colour mask; the similarity is
    kept only if it raises the full-resolution IoU (``view.similarity`` holds what was applied).
    """
    foreground = foreground_masks(capture) if foreground is None else foreground

    def aligned(v):
        if v.depth is None:
            return v
        fg, dmask = foreground[v.name], v.depth > 0
        sim = estimate_similarity(dmask, fg, work_size=work_size)
        depth = sim.warp(v.depth)
        if sim.is_identity or mask_iou(depth > 0, fg) <= mask_iou(dmask, fg):
            return replace(v, similarity=Similarity())
        mask = depth > 0 if capture.mask_source == "depth" else v.mask
        return replace(v, depth=depth, mask=mask, similarity=sim)

    views = map_views(aligned, capture.views, "align depth", progress)
    return capture.with_views(views)

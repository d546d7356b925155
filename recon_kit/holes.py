"""Filling the speck holes of a mask while keeping the real ones (the view through a mug handle).

``scipy.ndimage.binary_fill_holes`` fills every enclosed hole, which turns a see-through opening into a
membrane in the visual hull and in the reconstruction. :func:`fill_small_holes` fills a hole only when it is a
speck: smaller than ``max_fraction`` of the mask's area, and not mostly marked as background by an optional
second opinion (e.g. the photo's background-coloured pixels, or the depth map's zeros when the mask comes from
elsewhere).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Holes above this fraction of the mask's area are kept (the demo object's handle hole is about 10 %).
MAX_SPECK_FRACTION: float = 0.02


def fill_small_holes(mask: np.ndarray, max_fraction: float | None = MAX_SPECK_FRACTION,
                     background: np.ndarray | None = None, min_background: float = 0.5,
                     min_pixels: int = 4) -> np.ndarray:
    """``mask`` (bool ``[H,W]``) with its enclosed holes filled, except real ones.

    A hole is kept when its area exceeds ``max_fraction`` of the mask's area (``None`` fills every hole, the
    old behaviour), or when it has at least ``min_pixels`` pixels of which at least ``min_background`` are
    ``True`` in ``background`` (pixels known to be background, same shape as the mask).
    """
    m = np.asarray(mask, dtype=bool)
    filled = ndi.binary_fill_holes(m)
    if max_fraction is None:
        return filled
    holes = filled & ~m
    labels, n = ndi.label(holes)
    if n == 0:
        return filled
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes > max_fraction * max(1, int(m.sum()))
    if background is not None:
        bg = np.bincount(labels.ravel(), weights=np.asarray(background, bool).ravel().astype(np.float64),
                         minlength=n + 1)
        keep |= (sizes >= min_pixels) & (bg >= min_background * np.maximum(sizes, 1))
    keep[0] = False
    return filled & ~keep[labels]

"""Foreground masks (from depth, alpha or a background colour) and depth clean-up.

Mask cleaning fills speck holes but keeps real ones (the view through a mug handle):
``scipy.ndimage.binary_fill_holes`` fills every enclosed hole, which turns a see-through opening into a membrane
in the visual hull and in the reconstruction, so :func:`fill_small_holes` fills only holes that are specks.
"""

from __future__ import annotations


from dataclasses import replace
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage as ndi
from recon_kit.data.capture import Capture, map_views
from recon_kit.io.images import DataError
from recon_kit.io.images import resize_nearest

MaskSource = Literal["depth", "alpha", "background"]


#: Holes above this fraction of the mask's area are kept (the demo object's handle hole is about 10 %).
MAX_SPECK_FRACTION: float = 0.02


def binary_erode(mask: np.ndarray, iterations: int = 1, square: bool = False) -> np.ndarray:
    """Binary erosion with a 3x3 cross (``square``: 3x3 box), outside the image counted as background: the result
    of ``scipy.ndimage.binary_erosion`` (its default structure), through OpenCV (tens of times faster).
    ``iterations`` must be >= 1 (scipy's 0, "until nothing changes", is not offered)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    m = np.asarray(mask) != 0
    if m.size == 0:
        return m
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT if square else cv2.MORPH_CROSS, (3, 3))
    return cv2.erode(m.astype(np.uint8), kernel, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                     borderValue=0).astype(bool)


def binary_open(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary opening with a 3x3 box, as ``scipy.ndimage.binary_opening(mask, np.ones((3, 3)), iterations)``."""
    m = binary_erode(mask, iterations, square=True)
    if m.size == 0:
        return m
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    return cv2.dilate(m.astype(np.uint8), kernel, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every enclosed hole filled: ``scipy.ndimage.binary_fill_holes``'s result (background
    4-connected to the image border stays), found by labelling the background once instead of dilating from
    the border step by step."""
    m = np.asarray(mask, dtype=bool)
    if m.size == 0:
        return m
    labels, _ = ndi.label(~m)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return m | (~m & ~np.isin(labels, border[border > 0]))


def fill_small_holes(mask: np.ndarray, max_fraction: float | None = MAX_SPECK_FRACTION,
                     background: np.ndarray | None = None, min_background: float = 0.5,
                     min_pixels: int = 4) -> np.ndarray:
    """``mask`` (bool ``[H,W]``) with its enclosed holes filled, except real ones.

    A hole is kept when its area exceeds ``max_fraction`` of the mask's area (``None`` fills every hole, the
    old behaviour), or when it has at least ``min_pixels`` pixels of which at least ``min_background`` are
    ``True`` in ``background`` (pixels known to be background, same shape as the mask).
    """
    m = np.asarray(mask, dtype=bool)
    filled = fill_holes(m)
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


def clean_mask(mask: np.ndarray, opening: int = 1, min_component: float = 0.01, fill_holes: bool = True,
               max_hole: float | None = MAX_SPECK_FRACTION) -> np.ndarray:
    """Remove specks and speck holes from a boolean mask.

    ``opening`` iterations of a 3x3 binary opening drop specks and 1-2 pixel threads; connected components
    smaller than ``min_component`` times the largest one are dropped; ``fill_holes`` fills enclosed holes up to
    ``max_hole`` of the mask's area (larger ones are real openings and kept; ``None`` fills all), see
    :func:`fill_small_holes`.
    """
    m = np.asarray(mask, dtype=bool)
    if opening > 0:
        m = binary_open(m, opening)
    if min_component > 0:
        labels, n = ndi.label(m)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            m = (sizes >= min_component * sizes.max())[labels]
    if fill_holes:
        m = fill_small_holes(m, max_hole)
    return m


def mask_from_depth(depth: np.ndarray, size: tuple[int, int] | None = None, **clean) -> np.ndarray:
    """``depth > 0`` (after a nearest resize to ``size = (w, h)``), cleaned with :func:`clean_mask`."""
    if size is not None:
        depth = resize_nearest(depth, *size)
    return clean_mask(depth > 0, **clean)


def mask_from_alpha(alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask of an 8-bit alpha channel."""
    return np.asarray(alpha) > threshold * 255.0


def estimate_background(rgb: np.ndarray, border: float = 0.02) -> np.ndarray:
    """Background colour ``[3]`` (0-255): the median of a frame ``border`` (fraction of the short side) wide."""
    H, W = rgb.shape[:2]
    b = max(1, round(border * min(H, W)))
    frame = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                            rgb[b:-b, :b].reshape(-1, 3), rgb[b:-b, -b:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def mask_from_background(rgb: np.ndarray, background=None, tol: float = 20.0, **clean) -> np.ndarray:
    """Foreground of a photo on a plain (e.g. near-white) background.

    A pixel is foreground when some channel differs from ``background`` (0-255; estimated from the image
    border when ``None``) by more than ``tol``; the result is cleaned with :func:`clean_mask`. White parts of
    the object touching the background and contact shadows are the typical errors.
    """
    return clean_mask(background_distance(rgb, background) > tol, **clean)


def background_distance(rgb: np.ndarray, background=None) -> np.ndarray:
    """Per pixel, the largest channel difference (0-255) from ``background`` (estimated from the image border
    when ``None``)."""
    bg = estimate_background(rgb) if background is None else np.asarray(background, dtype=np.float64)
    return np.abs(rgb[..., :3].astype(np.int16) - bg.astype(np.int16)).max(-1)


def trim_to_photo(mask: np.ndarray, rgb: np.ndarray, rim_px: int, background=None, tol: float = 20.0) -> np.ndarray:
    """``mask`` without the rim pixels where the photo shows its background.

    Removed: pixels at most ``rim_px`` inside the mask's edge whose colour is within ``tol`` (0-255, every
    channel) of ``background`` (estimated from the image border when ``None``) and that connect to the
    outside of the mask through such background-coloured pixels. Depth-derived masks of a hand-framed capture
    sit a few pixels off the photos even after alignment; the reconstruction then paints the object over
    pixels the photo shows as background (the shoe: 0.2-0.3 % of each image holding half of the training-view
    error, docs/benchmarks.md section 10). Background-coloured parts deeper inside, or not connected to the
    outside, are kept; an object part of the background's colour touching the edge loses at most ``rim_px``.
    """
    m = np.asarray(mask, dtype=bool)
    if rim_px <= 0 or not m.any():
        return m
    bg_like = background_distance(rgb, background) <= tol
    rim = m & ~binary_erode(m, max(1, int(rim_px)))
    labels, _ = ndi.label(bg_like & (rim | ~m))
    outside = np.unique(labels[~m & bg_like])
    reach = np.isin(labels, outside[outside > 0])
    return m & ~(reach & rim)


def trim_masks(capture: Capture, rim_px: float, background=None, tol: float = 20.0) -> Capture:
    """A copy of ``capture`` whose masks lost their photo-background rim (:func:`trim_to_photo`); ``rim_px`` is
    in pixels of a 1024-pixel-wide image, scaled to each photo. Depth maps are kept as they are (the depth loss
    only reads the mask's interior). The capture's notes say how many pixels each view lost."""
    if rim_px <= 0:
        return capture

    def trim(v):
        r = max(1, round(rim_px * v.rgb.shape[1] / 1024))
        mask = trim_to_photo(v.mask, v.rgb, r, background, tol)
        note = (f"{v.name}: {int(v.mask.sum() - mask.sum())} mask pixels trimmed where the photo shows "
                f"background (rim {r} px)")
        return replace(v, mask=mask), note

    trimmed = map_views(trim, capture.views, "trim masks", progress=False)
    views, notes = [v for v, _ in trimmed], [n for _, n in trimmed]
    return capture.with_views(views, notes=list(capture.notes) + notes)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def clean_depth(depth: np.ndarray, **clean) -> np.ndarray:
    """Depth with specks removed (set to 0) and mask holes filled with the nearest valid depth value."""
    mask = clean_mask(depth > 0, **clean)
    out = np.where(mask, depth, 0).astype(np.float32)
    holes = mask & (out <= 0)
    if holes.any():
        idx = ndi.distance_transform_edt(out <= 0, return_distances=False, return_indices=True)
        out[holes] = out[idx[0][holes], idx[1][holes]]
    return out


def compute_masks(capture: Capture, source: MaskSource = "depth", *, background=None, tol: float = 20.0,
                  opening: int = 1, min_component: float = 0.01) -> Capture:
    """A copy of ``capture`` whose views carry ``mask`` (bool) from ``source``, and cleaned depth.

    ``"depth"``: ``depth > 0``; ``"alpha"``: the photo's alpha channel; ``"background"``: pixels away from the
    (estimated or given) background colour, see :func:`mask_from_background`. Depth maps, when present, always
    lose specks and get speck holes filled (:func:`clean_depth`), so ``depth > 0`` stays a clean mask.
    """
    clean = dict(opening=opening, min_component=min_component)

    def masked(v):
        depth = None if v.depth is None else clean_depth(v.depth, **clean)
        if source == "depth":
            if depth is None:
                raise DataError(f"view {v.name!r} ({v.rgb_path}) has no depth map in "
                                f"{capture.root / 'depth_renders'}; add {v.name}.png there, or use "
                                "mask_source='alpha' or 'background'")
            mask, origin = depth > 0, v.depth_path
        elif source == "alpha":
            if v.alpha is None:
                raise DataError(f"{v.rgb_path} has no alpha channel; save it as RGBA, or use mask_source='depth' "
                                "or 'background'")
            mask, origin = clean_mask(mask_from_alpha(v.alpha), **clean), v.rgb_path
        elif source == "background":
            mask, origin = mask_from_background(v.rgb, background, tol, **clean), v.rgb_path
        else:
            raise ValueError(f"mask source must be 'depth', 'alpha' or 'background', got {source!r}")
        if not mask.any():
            raise DataError(f"view {v.name!r}: the {source} mask from {origin} is empty (no foreground pixels); "
                            "check that file or choose another mask_source")
        return replace(v, depth=depth, mask=mask)

    views = map_views(masked, capture.views, "masks", progress=False)
    return capture.with_views(views, mask_source=source)


def foreground_masks(capture: Capture, background=None, tol: float = 20.0) -> dict[str, np.ndarray]:
    """Per view, the photo's foreground against its background colour (:func:`mask_from_background`)."""
    masks = map_views(lambda v: mask_from_background(v.rgb, background, tol), capture.views, "photo masks", False)
    return {v.name: m for v, m in zip(capture.views, masks)}


def mask_agreement(capture: Capture, foreground: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Per view with depth, the IoU between ``depth > 0`` and the photo's foreground colour mask."""
    foreground = foreground_masks(capture) if foreground is None else foreground
    return {v.name: mask_iou(v.depth > 0, foreground[v.name]) for v in capture.views if v.depth is not None}

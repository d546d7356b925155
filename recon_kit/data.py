"""Captures, masks, transforms.json and the :class:`ViewSet` that training consumes.

A *capture* is the user's folder::

    <capture>/multi_views/<view>.png     RGB or RGBA photos (any names; front/back/left/right/top/bottom are canonical)
    <capture>/depth_renders/<view>.png   optional depth maps, 8- or 16-bit, any size of the same aspect, 0 = background
    <capture>/transforms.json            optional poses (NeRF / instant-ngp / nerfstudio style); without it the
                                         6-view axis rig of :mod:`recon_kit.cameras` is used

:func:`load_capture` reads it (depth resized to the photo size with nearest), :func:`compute_masks` picks the
masks (from depth, alpha or a near-white background colour), :func:`align_capture` optionally fits a 2-D
similarity that moves each depth map onto its photo, and :func:`write_dataset` writes a prepared dataset per
resolution::

    <out>/<res>/transforms.json          NeRF style, frames with "file_path" and "depth_file_path"
    <out>/<res>/train/<view>.png         RGBA, alpha = mask (area-filtered, so edges are soft)
    <out>/<res>/depth/<view>.png         16-bit, the capture's raw depth values (nearest), 0 = background

:func:`load_viewset` reads such a folder back as tensors (sRGB converted to linear). Every problem with the
user's files raises :class:`DataError`, whose message names the file and the fix.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from scipy import ndimage as ndi
from tqdm import tqdm

from . import __version__
from .cameras import AXIS_VIEWS, Camera, axis_rig_c2w, focal_from_fov
from .holes import MAX_SPECK_FRACTION, fill_small_holes

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
MaskSource = Literal["depth", "alpha", "background"]
Missing = Literal["warn", "error"]


class DataError(ValueError):
    """Bad input data; the message names the offending file and how to fix it."""


# --------------------------------------------------------------------------------------------------- colour


def srgb_to_linear(x):
    """sRGB-encoded values in [0, 1] to linear RGB (IEC 61966-2-1). Accepts numpy arrays or torch tensors."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4).astype(x.dtype)


def linear_to_srgb(x):
    """Linear RGB to sRGB encoding (inverse of :func:`srgb_to_linear`). Accepts numpy arrays or torch tensors."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055).astype(x.dtype)


# ----------------------------------------------------------------------------------------------- image I/O


def _open_image(path: Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path (relative paths start at {Path.cwd()})")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); re-export it as PNG or move it out of the "
                        "folder") from exc
    return image


def read_rgb(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file as sRGB ``uint8 [H,W,3]`` and its alpha ``uint8 [H,W]`` (``None`` without alpha)."""
    image = _open_image(Path(path))
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # single-channel high bit depth: show as grey
        a = np.asarray(image, dtype=np.float64)
        a = np.clip(a / (65535.0 if a.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, -1), None
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    a = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    return (np.ascontiguousarray(a[..., :3]), np.ascontiguousarray(a[..., 3])) if has_alpha else (a, None)


def read_depth(path: str | Path) -> np.ndarray:
    """A depth map as ``float32 [H,W]`` holding the stored values unchanged (0 = background)."""
    image = _open_image(Path(path))
    if image.mode in ("RGB", "RGBA", "P", "LA", "PA", "CMYK", "YCbCr"):
        image = image.convert("L")
    depth = np.asarray(image).astype(np.float32)
    if depth.ndim != 2:
        raise DataError(f"{path}: a depth map must have one channel, got shape {depth.shape}; save it as greyscale")
    return np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header only."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); re-export it as PNG") from exc


def write_png16(path: str | Path, values: np.ndarray) -> None:
    """Write non-negative integers < 65536 as a 16-bit greyscale PNG."""
    Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)).save(path)


# ------------------------------------------------------------------------------------------------ resizing


def fit_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """``(w, h)`` with the longer side equal to ``resolution`` and the aspect ratio kept (at least 1 pixel)."""
    s = resolution / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def resize_nearest(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``[H,W,...]`` array (pixel centres aligned), any dtype, no interpolation."""
    H, W = a.shape[:2]
    if (W, H) == (width, height):
        return a
    rows = np.minimum(((np.arange(height) + 0.5) * (H / height)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (W / width)).astype(np.int64), W - 1)
    return a[rows[:, None], cols[None, :]]


def resize_area(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Box-filter resize: ``uint8 [H,W,C]`` images stay uint8, anything else becomes ``float32``."""
    H, W = a.shape[:2]
    if (W, H) == (width, height):
        return a
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] in (3, 4):
        return np.asarray(Image.fromarray(a).resize((width, height), Image.BOX))
    f = a.astype(np.float32)
    if f.ndim == 2:
        return np.asarray(Image.fromarray(f, mode="F").resize((width, height), Image.BOX))
    return np.stack([resize_area(f[..., c], width, height) for c in range(f.shape[2])], -1)


# --------------------------------------------------------------------------------------------------- masks


def clean_mask(mask: np.ndarray, opening: int = 1, min_component: float = 0.01, fill_holes: bool = True,
               max_hole: float | None = MAX_SPECK_FRACTION) -> np.ndarray:
    """Remove specks and speck holes from a boolean mask.

    ``opening`` iterations of a 3x3 binary opening drop specks and 1-2 pixel threads; connected components
    smaller than ``min_component`` times the largest one are dropped; ``fill_holes`` fills enclosed holes up to
    ``max_hole`` of the mask's area (larger ones are real openings and kept; ``None`` fills all), see
    :func:`recon_kit.holes.fill_small_holes`.
    """
    m = np.asarray(mask, dtype=bool)
    if opening > 0:
        m = ndi.binary_opening(m, structure=np.ones((3, 3), bool), iterations=opening)
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
    bg = estimate_background(rgb) if background is None else np.asarray(background, dtype=np.float64)
    diff = np.abs(rgb.astype(np.int16) - bg.astype(np.int16)).max(-1)
    return clean_mask(diff > tol, **clean)


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


# ------------------------------------------------------------------------------------------------ alignment


@dataclass(frozen=True)
class Similarity:
    """A 2-D similarity ``q = scale * p + (tx, ty)`` in normalised image coordinates.

    A pixel centre (row i, col j) of a W x H image sits at ``p = ((j + 0.5) / W, (i + 0.5) / H)``, so the same
    similarity applies at every resolution; ``scale`` is uniform in pixels too.
    """

    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.tx == 0.0 and self.ty == 0.0

    def warp(self, a: np.ndarray, order: int = 0) -> np.ndarray:
        """Resample an ``[H,W]`` array so that its content moves by this similarity (outside = 0)."""
        if self.is_identity:
            return a
        H, W = a.shape
        s = self.scale
        # output index (i, j) <- input index ((i + 0.5 - ty H) / s - 0.5, (j + 0.5 - tx W) / s - 0.5)
        offset = [(0.5 - self.ty * H) / s - 0.5, (0.5 - self.tx * W) / s - 0.5]
        src = a.astype(np.uint8) if a.dtype == bool else a
        out = ndi.affine_transform(src, [1.0 / s, 1.0 / s], offset=offset, order=order, mode="constant",
                                   cval=0, prefilter=False)
        return out.astype(bool) if a.dtype == bool else out

    def to_dict(self) -> dict:
        return {"scale": self.scale, "tx": self.tx, "ty": self.ty}


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


# -------------------------------------------------------------------------------------------------- capture


@dataclass
class CaptureView:
    """One view of a capture, everything at the photo's (possibly downscaled) size ``W x H``."""

    name: str
    rgb: np.ndarray                     # uint8 [H,W,3], sRGB
    camera: Camera                      # intrinsics for W x H
    rgb_path: Path
    alpha: np.ndarray | None = None     # uint8 [H,W] when the photo has an alpha channel
    depth: np.ndarray | None = None     # float32 [H,W] raw capture values (nearest-resized), 0 = background
    depth_path: Path | None = None
    mask: np.ndarray | None = None      # bool [H,W], set by compute_masks (and moved by align_capture)
    similarity: Similarity | None = None  # set by align_capture: applied to depth (and a depth mask)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


@dataclass
class Capture:
    """A loaded capture folder: views in order, plus where their poses came from."""

    root: Path
    views: list[CaptureView]
    pose_source: str                    # "transforms.json" or "axis rig"
    mask_source: str | None = None      # set by compute_masks

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.views]

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key: int | str) -> CaptureView:
        if isinstance(key, str):
            for v in self.views:
                if v.name == key:
                    return v
            raise KeyError(f"no view {key!r}; views are {self.names}")
        return self.views[key]

    def with_views(self, views: list[CaptureView], **changes) -> "Capture":
        return replace(self, views=views, **changes)


def _find_images(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            if p.stem in found:
                raise DataError(f"{folder} holds two images for view {p.stem!r} ({found[p.stem].name}, {p.name}); "
                                "keep one of them")
            found[p.stem] = p
    return found


def _order_views(names: Iterable[str]) -> list[str]:
    names = list(names)
    canonical = [v for v in AXIS_VIEWS if v in names]
    return canonical + sorted(n for n in names if n not in AXIS_VIEWS)


def _missing(option: Missing, message: str) -> None:
    if option == "error":
        raise DataError(message)
    if option != "warn":
        raise ValueError(f"missing must be 'warn' or 'error', got {option!r}")
    warnings.warn(message, stacklevel=3)


def _capture_images(folder: Path) -> dict[str, Path]:
    images = _find_images(folder / "multi_views")
    if not images:
        raise DataError(f"no views found: {folder / 'multi_views'} holds no images; put the photos in "
                        f"{folder}/multi_views/<view>.png (e.g. front.png, back.png, ...)")
    return images


def find_views(folder: str | Path) -> list[str]:
    """View names of a capture folder (``multi_views/*.png``), canonical axis views first."""
    return _order_views(_capture_images(Path(folder)))


def load_capture(folder: str | Path, views: Sequence[str] | None = None, *, max_size: int | None = None,
                 require_depth: bool = False, camera_angle_x: float = 0.85, distance: float = 3.0,
                 missing: Missing = "warn", progress: bool = True) -> Capture:
    """Read a capture folder (see the module docstring).

    Poses come from ``<folder>/transforms.json`` when present (frames are matched to photos by file stem),
    otherwise from the axis rig with ``camera_angle_x`` / ``distance`` (all views must then be canonical axis
    names). Photos or frames without a counterpart are skipped with a warning (``missing="warn"``) or raise
    (``"error"``). With ``max_size`` the photos are box-filtered so their longer side is at most that.
    Depth maps are resized to the photo size with nearest; ``require_depth`` makes a missing one an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"capture folder {folder} does not exist (relative paths start at {Path.cwd()}); "
                        "pass the folder that holds multi_views/")
    images = _capture_images(folder)
    depths = _find_images(folder / "depth_renders")
    names = _order_views(images) if views is None else list(views)
    for n in names:
        if n not in images:
            raise DataError(f"view {n!r} has no photo {folder / 'multi_views' / (n + '.png')}; add it or drop "
                            f"it from views= (found {sorted(images)})")
    if require_depth:
        for n in names:
            if n not in depths:
                raise DataError(f"view {n!r} ({images[n]}) has no depth map {folder / 'depth_renders' / (n + '.png')};"
                                " add it, or use mask_source='alpha' or 'background'")

    transforms = folder / "transforms.json"
    if transforms.is_file():
        cams = {c.name: c for c in read_transforms(transforms, missing=missing, search_dirs=[folder / "multi_views"])}
        for n in [n for n in names if n not in cams]:
            _missing(missing, f"{images[n]} has no frame in {transforms}; add a frame with file_path "
                              f"'multi_views/{n}.png' or remove the photo")
        order = [c for c in cams if c in names] if views is None else [n for n in names if n in cams]
        names, pose_source = order, "transforms.json"
    else:
        odd = [n for n in names if n not in AXIS_VIEWS]
        if odd:
            raise DataError(f"{folder} has no transforms.json and views {odd} are not axis-rig names "
                            f"{list(AXIS_VIEWS)}; add a transforms.json (recon_kit.data.axis_rig_transforms() "
                            "writes one for the axis rig) or rename the photos")
        cams, pose_source = None, "axis rig"
    if not names:
        raise DataError(f"no views found in {folder} that have both a photo and a pose; check transforms.json")

    out = []
    for n in tqdm(names, desc="load views", disable=not progress):
        rgb, alpha = read_rgb(images[n])
        H, W = rgb.shape[:2]
        w, h = fit_size(W, H, max_size) if max_size is not None and max(W, H) > max_size else (W, H)
        cam = cams[n] if cams is not None else Camera.from_fov(axis_rig_c2w(n, distance), camera_angle_x, W, H)
        cam = cam.resized(w, h) if (cam.width, cam.height) != (w, h) else cam
        depth, depth_path = None, depths.get(n)
        if depth_path is not None:
            depth = read_depth(depth_path)
            dh, dw = depth.shape
            if abs(dw / dh - W / H) > 0.01 * (W / H):
                raise DataError(f"aspect ratios differ: {images[n]} is {W}x{H} but {depth_path} is {dw}x{dh}; "
                                "re-render the depth map with the photo's aspect ratio (or crop one to match)")
            depth = resize_nearest(depth, w, h)
        if (w, h) != (W, H):
            rgb = resize_area(rgb, w, h)
            alpha = None if alpha is None else np.asarray(Image.fromarray(alpha).resize((w, h), Image.BOX))
        cam.name = n
        out.append(CaptureView(n, rgb, cam, images[n], alpha, depth, depth_path))
    return Capture(folder, out, pose_source)


def resolve_capture(input_dir: str | Path, work_dir: str | Path, demo_resolution: int = 256) -> Path:
    """The capture folder for ``input_dir``; ``"demo"`` writes (once) a synthetic capture to
    ``work_dir/demo_capture`` with :func:`recon_kit.synth.write_demo_capture`."""
    if str(input_dir) == "demo":
        from . import synth  # imported lazily: only the demo needs the renderer

        folder = Path(work_dir) / "demo_capture"
        if not (folder / "multi_views").is_dir():
            synth.write_demo_capture(folder, resolution=demo_resolution)
        return folder
    folder = Path(input_dir)
    if not folder.is_dir():
        raise DataError(f"capture folder {folder} does not exist (relative paths start at {Path.cwd()}); "
                        "set input_dir to the folder holding multi_views/, or to 'demo'")
    return folder


def compute_masks(capture: Capture, source: MaskSource = "depth", *, background=None, tol: float = 20.0,
                  opening: int = 1, min_component: float = 0.01) -> Capture:
    """A copy of ``capture`` whose views carry ``mask`` (bool) from ``source``, and cleaned depth.

    ``"depth"``: ``depth > 0``; ``"alpha"``: the photo's alpha channel; ``"background"``: pixels away from the
    (estimated or given) background colour, see :func:`mask_from_background`. Depth maps, when present, always
    lose specks and get speck holes filled (:func:`clean_depth`), so ``depth > 0`` stays a clean mask.
    """
    clean = dict(opening=opening, min_component=min_component)
    views = []
    for v in capture.views:
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
        views.append(replace(v, depth=depth, mask=mask))
    return capture.with_views(views, mask_source=source)


def foreground_masks(capture: Capture, background=None, tol: float = 20.0) -> dict[str, np.ndarray]:
    """Per view, the photo's foreground against its background colour (:func:`mask_from_background`)."""
    return {v.name: mask_from_background(v.rgb, background, tol) for v in capture.views}


def mask_agreement(capture: Capture, foreground: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Per view with depth, the IoU between ``depth > 0`` and the photo's foreground colour mask."""
    foreground = foreground_masks(capture) if foreground is None else foreground
    return {v.name: mask_iou(v.depth > 0, foreground[v.name]) for v in capture.views if v.depth is not None}


def align_capture(capture: Capture, foreground: dict[str, np.ndarray] | None = None, *, work_size: int = 256,
                  progress: bool = True) -> Capture:
    """A copy of ``capture`` whose depth maps (and depth masks) are moved onto the photos' foregrounds.

    Per view, :func:`estimate_similarity` fits depth ``> 0`` to the foreground colour mask; the similarity is
    kept only if it raises the full-resolution IoU (``view.similarity`` holds what was applied).
    """
    foreground = foreground_masks(capture) if foreground is None else foreground
    views = []
    for v in tqdm(capture.views, desc="align depth", disable=not progress):
        if v.depth is None:
            views.append(v)
            continue
        fg, dmask = foreground[v.name], v.depth > 0
        sim = estimate_similarity(dmask, fg, work_size=work_size)
        depth = sim.warp(v.depth)
        if sim.is_identity or mask_iou(depth > 0, fg) <= mask_iou(dmask, fg):
            views.append(replace(v, similarity=Similarity()))
            continue
        mask = depth > 0 if capture.mask_source == "depth" else v.mask
        views.append(replace(v, depth=depth, mask=mask, similarity=sim))
    return capture.with_views(views)


# ---------------------------------------------------------------------------------------- transforms.json


def _clean_matrix(m: np.ndarray) -> list[list[float]]:
    m = np.where(np.abs(m) < 1e-12, 0.0, np.round(m, 12)) + 0.0
    return m.tolist()


def axis_rig_transforms(camera_angle_x: float = 0.85, distance: float = 3.0, views: Sequence[str] = AXIS_VIEWS,
                        file_path: str = "train/{view}.png") -> dict:
    """The 6-view axis rig as a NeRF-style transforms.json dict (``file_path`` is formatted with ``view``)."""
    return {"camera_angle_x": camera_angle_x,
            "frames": [{"file_path": file_path.format(view=v),
                        "transform_matrix": _clean_matrix(axis_rig_c2w(v, distance))} for v in views]}


def dump_json(meta: dict) -> str:
    """JSON text with 2-space indents but each innermost list of numbers on one line (matrix rows)."""
    text = json.dumps(meta, indent=2)
    return re.sub(r"\[\s*([-+0-9.eE]+(?:,\s*[-+0-9.eE]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path (relative paths start at {Path.cwd()})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); fix the syntax (trailing commas and comments are not "
                        "allowed) or regenerate it with recon_kit.data.axis_rig_transforms()") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise DataError(f"{path} has no 'frames' list; a transforms.json needs "
                        "{'camera_angle_x': ..., 'frames': [{'file_path': ..., 'transform_matrix': ...}]}")
    return meta


def _resolve_file(base: Path, file_path: str, search_dirs: Sequence[Path] = ()) -> Path | None:
    rel = Path(file_path)
    candidates = [base / rel]
    if rel.suffix.lower() not in IMAGE_EXTENSIONS:
        candidates += [base / (str(rel) + ext) for ext in IMAGE_EXTENSIONS]
    for d in search_dirs:
        candidates += [Path(d) / rel.name] + [Path(d) / (rel.stem + ext) for ext in IMAGE_EXTENSIONS]
    return next((c for c in candidates if c.is_file()), None)


_INTRINSIC_KEYS = ("camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w", "h")


def read_transforms(path: str | Path, missing: Missing = "warn", search_dirs: Sequence[str | Path] = ()
                    ) -> list[Camera]:
    """Cameras of a NeRF-synthetic, instant-ngp or nerfstudio style transforms.json.

    Intrinsics may be global or per frame (frame keys win): ``fl_x``/``fl_y``/``cx``/``cy`` in pixels of
    ``w x h``, or ``camera_angle_x`` (and optionally ``camera_angle_y``) in radians; they are rescaled to the
    actual image size. ``file_path`` is relative to the file's folder, with or without extension; ``search_dirs``
    are also searched for ``<stem>.<ext>``. Frames whose image is missing are skipped with a warning
    (``missing="warn"``) or raise (``"error"``). Each camera has ``name`` = the file stem and
    ``meta["file_path"]`` / ``meta["depth_file_path"]`` = resolved paths (depth ``None`` when absent).
    """
    path = Path(path)
    meta = _load_json(path)
    base = path.parent
    global_intr = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    cameras = []
    for i, frame in enumerate(meta["frames"]):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise DataError(f"{path}: frame {i} needs 'file_path' and 'transform_matrix'; fix that frame")
        image = _resolve_file(base, frame["file_path"], [Path(d) for d in search_dirs])
        if image is None:
            _missing(missing, f"{path}: frame {i} image {frame['file_path']!r} not found under {base}; add the image "
                              "or remove the frame")
            continue
        try:
            c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
            if c2w.shape == (3, 4):
                c2w = np.vstack([c2w, [0, 0, 0, 1]])
            if c2w.shape != (4, 4):
                raise ValueError(f"shape {c2w.shape}")
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: frame {i} transform_matrix is not a 4x4 matrix ({exc}); fix that frame") from exc
        intr = {**global_intr, **{k: frame[k] for k in _INTRINSIC_KEYS if k in frame}}
        W_img, H_img = image_size(image)
        w, h = int(intr.get("w", W_img)), int(intr.get("h", H_img))
        if "fl_x" in intr or "fl_y" in intr:
            fx = float(intr.get("fl_x", intr.get("fl_y")))
            fy = float(intr.get("fl_y", fx))
        elif "camera_angle_x" in intr:
            fx = focal_from_fov(float(intr["camera_angle_x"]), w)
            fy = focal_from_fov(float(intr["camera_angle_y"]), h) if "camera_angle_y" in intr else fx
        else:
            raise DataError(f"{path} lacks intrinsics for frame {i}; add 'camera_angle_x' (horizontal field of view "
                            "in radians) or 'fl_x', 'fl_y', 'cx', 'cy', 'w', 'h' (pixels), globally or per frame")
        cx, cy = float(intr.get("cx", w / 2.0)), float(intr.get("cy", h / 2.0))
        depth_path = None
        if frame.get("depth_file_path"):
            depth_path = _resolve_file(base, frame["depth_file_path"])
            if depth_path is None:
                _missing(missing, f"{path}: frame {i} depth {frame['depth_file_path']!r} not found under {base}; "
                                  "add it or remove the key")
        try:
            cam = Camera(c2w, fx, fy, cx, cy, w, h, name=Path(frame["file_path"]).stem)
        except ValueError as exc:
            raise DataError(f"{path}: frame {i}: {exc}; fix that frame") from exc
        if (w, h) != (W_img, H_img):
            cam = cam.resized(W_img, H_img)
        cam.meta.update(file_path=image, depth_file_path=depth_path)
        cameras.append(cam)
    if not cameras:
        raise DataError(f"{path}: no frame has an existing image; check the file_path entries against {base}")
    return cameras


def transforms_dict(cameras: Sequence[Camera], file_paths: Sequence[str], depth_paths: Sequence[str | None] = (),
                    extra: dict | None = None) -> dict:
    """A transforms.json dict: global ``camera_angle_x`` (+ ``w``, ``h``) when all cameras share square-pixel,
    centred intrinsics, global ``fl_x/fl_y/cx/cy/w/h`` when they share others, per-frame intrinsics otherwise."""
    intr = [(c.fx, c.fy, c.cx, c.cy, c.width, c.height) for c in cameras]
    shared = all(np.allclose(i, intr[0], rtol=1e-9, atol=1e-9) for i in intr)
    c0 = cameras[0]
    simple = shared and math.isclose(c0.fx, c0.fy, rel_tol=1e-9) and math.isclose(c0.cx, c0.width / 2) \
        and math.isclose(c0.cy, c0.height / 2)

    def pixel_intr(c):
        return {"fl_x": c.fx, "fl_y": c.fy, "cx": c.cx, "cy": c.cy, "w": c.width, "h": c.height}

    out: dict = {}
    if simple:
        out.update(camera_angle_x=round(c0.camera_angle_x, 12), w=c0.width, h=c0.height)
    elif shared:
        out.update(pixel_intr(c0))
    frames = []
    for k, (c, fp) in enumerate(zip(cameras, file_paths)):
        frame = {"file_path": fp}
        if k < len(depth_paths) and depth_paths[k]:
            frame["depth_file_path"] = depth_paths[k]
        frame["transform_matrix"] = _clean_matrix(c.c2w)
        if not shared:
            frame.update(pixel_intr(c))
        frames.append(frame)
    out["frames"] = frames
    if extra:
        out.update(extra)
    return out


# -------------------------------------------------------------------------------------------- write dataset


def _depth_to_uint16(depths: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Store depth values as uint16: unchanged when they are integers < 65536, else scaled (returns the scale)."""
    vmax = max((float(d.max()) for d in depths), default=0.0)
    integral = all(np.array_equal(d, np.round(d)) for d in depths)
    scale = 1.0 if integral and vmax <= 65535 else (65535.0 / vmax if vmax > 0 else 1.0)
    out = []
    for d in depths:
        q = np.round(d * scale)
        q[(d > 0) & (q < 1)] = 1  # keep foreground non-zero
        out.append(np.clip(q, 0, 65535).astype(np.uint16))
    return out, scale


def _check_outputs(output_dir: Path, resolutions: Sequence[int], overwrite: bool) -> dict[int, Path]:
    targets = {int(r): Path(output_dir) / str(int(r)) for r in resolutions}
    if not targets or min(targets) < 1:
        raise ValueError(f"resolutions must be positive integers, got {list(resolutions)}")
    for d in targets.values():
        if d.exists() and not overwrite:
            raise DataError(f"output folder {d} already exists; pass overwrite=True to replace it, or choose "
                            "another output_dir")
    return targets


def write_dataset(capture: Capture, output_dir: str | Path, resolutions: Iterable[int] = (512,), *,
                  overwrite: bool = False, progress: bool = True) -> dict[int, Path]:
    """Write ``<output_dir>/<res>/`` (transforms.json, train/, depth/) per resolution; returns ``{res: folder}``.

    The capture must carry masks (:func:`compute_masks`). RGB and alpha are box-filtered, depth is resized with
    nearest and keeps the capture's raw values (``recon_kit.depth_scale`` in transforms.json says how they were
    scaled if they did not fit 16 bits). Existing ``<res>`` folders raise unless ``overwrite=True``.
    """
    if any(v.mask is None for v in capture.views):
        raise ValueError("the capture has no masks yet; call recon_kit.data.compute_masks(capture, source) first")
    output_dir = Path(output_dir)
    targets = _check_outputs(output_dir, list(resolutions), overwrite)
    has_depth = all(v.depth is not None for v in capture.views)
    if not has_depth and any(v.depth is not None for v in capture.views):
        warnings.warn("only some views have depth maps; the dataset is written without depth", stacklevel=2)
    written = {}
    for r, folder in targets.items():
        tmp = output_dir / f".{r}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "train").mkdir(parents=True)
        cams, files, dfiles, depths = [], [], [], []
        for v in tqdm(capture.views, desc=f"write {r}px", disable=not progress):
            W, H = v.size
            w, h = fit_size(W, H, r)
            rgb = resize_area(v.rgb, w, h)
            alpha = np.clip(resize_area(v.mask.astype(np.float32), w, h) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            Image.fromarray(np.dstack([rgb, alpha])).save(tmp / "train" / f"{v.name}.png")
            cams.append(v.camera.resized(w, h))
            files.append(f"train/{v.name}.png")
            if has_depth:
                depths.append(resize_nearest(v.depth, w, h))
                dfiles.append(f"depth/{v.name}.png")
        scale = 1.0
        if has_depth:
            (tmp / "depth").mkdir()
            stored, scale = _depth_to_uint16(depths)
            for v, d in zip(capture.views, stored):
                write_png16(tmp / "depth" / f"{v.name}.png", d)
        extra = {"recon_kit": {
            "source": str(capture.root), "pose_source": capture.pose_source, "mask_source": capture.mask_source,
            "resolution": r, "depth_scale": scale,
            "alignment": {v.name: v.similarity.to_dict() for v in capture.views if v.similarity is not None},
        }}
        meta = transforms_dict(cams, files, dfiles, extra)
        (tmp / "transforms.json").write_text(dump_json(meta))
        _write_test_split(capture.root, tmp, r)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        written[r] = folder
    return written


def _write_test_split(capture_root: Path, folder: Path, resolution: int) -> None:
    """Carry held-out views (``transforms_test.json`` + RGBA images, as synthetic captures have) and a
    ground-truth mesh (``gt_mesh.*``, ``gt_texture.png``) from the capture into a dataset folder."""
    src = capture_root / "transforms_test.json"
    if src.exists():
        cams, files = [], []
        (folder / "test").mkdir()
        for cam in read_transforms(src, missing="error"):
            rgb, alpha = read_rgb(cam.meta["file_path"])
            w, h = fit_size(rgb.shape[1], rgb.shape[0], resolution)
            a = np.full(rgb.shape[:2], 255, np.uint8) if alpha is None else alpha
            rgba = np.dstack([resize_area(rgb, w, h), np.clip(resize_area(a.astype(np.float32), w, h) + 0.5, 0, 255).astype(np.uint8)])
            name = f"test/{Path(cam.meta['file_path']).stem}.png"
            Image.fromarray(rgba).save(folder / name)
            cams.append(cam.resized(w, h))
            files.append(name)
        (folder / "transforms_test.json").write_text(dump_json(transforms_dict(cams, files, [], {})))
    for extra in ("gt_mesh.obj", "gt_mesh.mtl", "gt_texture.png"):
        if (capture_root / extra).exists():
            shutil.copy2(capture_root / extra, folder / extra)


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` wrote, and the depth/photo mask agreement (IoU per view)."""

    folders: dict[int, Path]
    iou_before: dict[str, float]
    iou_after: dict[str, float]

    def __str__(self) -> str:
        text = ", ".join(str(p) for p in self.folders.values())
        if self.iou_before:
            text += (f" (mask IoU depth vs photo: mean {np.mean(list(self.iou_before.values())):.3f} before, "
                     f"{np.mean(list(self.iou_after.values())):.3f} after alignment)")
        return text


def prepare_dataset(input_dir: str | Path, output_dir: str | Path, resolutions: Iterable[int] = (512,), *,
                    mask_source: MaskSource = "depth", align: bool = False, camera_angle_x: float = 0.85,
                    distance: float = 3.0, overwrite: bool = False, missing: Missing = "warn",
                    max_size: int | None = None, progress: bool = True) -> PrepareResult:
    """Capture folder to prepared dataset in one call (what notebook 01 does step by step)."""
    resolutions = list(resolutions)
    _check_outputs(Path(output_dir), resolutions, overwrite)  # fail before the slow part
    capture = load_capture(input_dir, max_size=max_size, require_depth=mask_source == "depth",
                           camera_angle_x=camera_angle_x, distance=distance, missing=missing, progress=progress)
    capture = compute_masks(capture, mask_source)
    fg = foreground_masks(capture) if any(v.depth is not None for v in capture.views) else {}
    before = mask_agreement(capture, fg) if fg else {}
    if align and fg:
        capture = align_capture(capture, fg, progress=progress)
    after = mask_agreement(capture, fg) if fg else {}
    folders = write_dataset(capture, output_dir, resolutions, overwrite=overwrite, progress=progress)
    return PrepareResult(folders, before, after)


# ----------------------------------------------------------------------------------------------- ViewSet


@dataclass
class ViewSet:
    """Views as tensors: what training, posecheck and metrics consume."""

    names: list[str]
    cameras: list[Camera]           # intrinsics match the image size
    rgb_linear: torch.Tensor        # [N,H,W,3] float32, linear RGB
    mask: torch.Tensor              # [N,H,W] float32 in [0,1]
    depth: torch.Tensor | None = None  # [N,H,W] float32 raw capture depth values, 0 = background

    def __len__(self) -> int:
        return len(self.names)

    @property
    def height(self) -> int:
        return int(self.rgb_linear.shape[1])

    @property
    def width(self) -> int:
        return int(self.rgb_linear.shape[2])

    @property
    def device(self) -> torch.device:
        return self.rgb_linear.device

    def to(self, device) -> "ViewSet":
        return ViewSet(list(self.names), list(self.cameras), self.rgb_linear.to(device), self.mask.to(device),
                       None if self.depth is None else self.depth.to(device))

    def subset(self, idx) -> "ViewSet":
        """Views at ``idx`` (int, slice, list of ints or names, bool/int tensor)."""
        if isinstance(idx, slice):
            idx = list(range(len(self)))[idx]
        elif isinstance(idx, torch.Tensor):
            idx = (idx.nonzero().flatten() if idx.dtype == torch.bool else idx.flatten()).tolist()
        elif isinstance(idx, (int, np.integer, str)):
            idx = [idx]
        idx = [self.names.index(i) if isinstance(i, str) else int(i) for i in idx]
        t = torch.tensor(idx, dtype=torch.long, device=self.rgb_linear.device)
        return ViewSet([self.names[i] for i in idx], [self.cameras[i] for i in idx], self.rgb_linear[t],
                       self.mask[t], None if self.depth is None else self.depth[t])

    def resized(self, width: int, height: int) -> "ViewSet":
        """Area filter for rgb, nearest for mask and depth; cameras rescaled."""
        if (width, height) == (self.width, self.height):
            return self
        rgb = F.interpolate(self.rgb_linear.permute(0, 3, 1, 2), size=(height, width), mode="area")
        mask = F.interpolate(self.mask[:, None], size=(height, width), mode="nearest-exact")[:, 0]
        depth = None if self.depth is None else \
            F.interpolate(self.depth[:, None], size=(height, width), mode="nearest-exact")[:, 0]
        return ViewSet(list(self.names), [c.resized(width, height) for c in self.cameras],
                       rgb.permute(0, 2, 3, 1).contiguous(), mask, depth)


def _transforms_file(folder: Path, split: str) -> Path | None:
    names = ["transforms.json", "transforms_train.json"] if split == "train" else [f"transforms_{split}.json"]
    return next((folder / n for n in names if (folder / n).is_file()), None)


def load_viewset(dataset_dir: str | Path, resolution: int | None = None, device="cpu", split: str = "train"
                 ) -> ViewSet:
    """Read a prepared dataset (see the module docstring) as a :class:`ViewSet`.

    ``dataset_dir`` is a folder with ``transforms.json`` (or ``transforms_<split>.json``), or the parent of
    ``<res>/`` folders written by :func:`write_dataset`: then ``resolution`` picks one (default: the largest).
    When no ``<resolution>`` folder exists the views are resampled so their longer side is ``resolution``.
    """
    dataset_dir = Path(dataset_dir)
    folder = dataset_dir
    if resolution is not None and _transforms_file(dataset_dir / str(resolution), split):
        folder = dataset_dir / str(resolution)
    elif _transforms_file(dataset_dir, split) is None:
        subs = sorted((int(p.name) for p in dataset_dir.glob("*") if p.name.isdigit() and _transforms_file(p, split)),
                      reverse=True)
        if not subs:
            raise DataError(f"{dataset_dir} holds no transforms.json for split {split!r} (nor <res>/ folders with "
                            "one); write a dataset with recon_kit.data.write_dataset or notebook 01 first")
        folder = dataset_dir / str(subs[0])
    path = _transforms_file(folder, split)
    meta = _load_json(path)
    depth_scale = float(meta.get("recon_kit", {}).get("depth_scale", 1.0)) or 1.0
    cameras = read_transforms(path, missing="error")
    rgbs, masks, depths = [], [], []
    for cam in cameras:
        rgb, alpha = read_rgb(cam.meta["file_path"])
        rgbs.append(rgb)
        masks.append(np.ones(rgb.shape[:2], np.float32) if alpha is None else alpha.astype(np.float32) / 255.0)
        dpath = cam.meta.get("depth_file_path")
        depths.append(None if dpath is None else resize_nearest(read_depth(dpath), rgb.shape[1], rgb.shape[0]))
    sizes = {(r.shape[1], r.shape[0]) for r in rgbs}
    if len(sizes) > 1:
        if resolution is None or len({round(w / h, 3) for w, h in sizes}) > 1:
            raise DataError(f"{path}: the images have different sizes {sorted(sizes)}; re-export them at one size "
                            "(or, for one aspect ratio, pass resolution= to resample them)")
        W, H = fit_size(*next(iter(sizes)), resolution)
        rgbs = [resize_area(r, W, H) for r in rgbs]
        masks = [resize_area(m, W, H) for m in masks]
        depths = [None if d is None else resize_nearest(d, W, H) for d in depths]
        cameras = [c.resized(W, H) for c in cameras]
    if any(d is None for d in depths) and any(d is not None for d in depths):
        warnings.warn(f"{path}: only some frames have depth_file_path; the ViewSet has no depth", stacklevel=2)
    rgb_linear = srgb_to_linear(torch.from_numpy(np.stack(rgbs)).float() / 255.0)
    depth = None if any(d is None for d in depths) else torch.from_numpy(np.stack(depths)).float() / depth_scale
    views = ViewSet([c.name for c in cameras], cameras, rgb_linear, torch.from_numpy(np.stack(masks)).float(), depth)
    if resolution is not None and max(views.width, views.height) != resolution:
        views = views.resized(*fit_size(views.width, views.height, resolution))
    return views.to(device)


# ----------------------------------------------------------------------------------------------- Radiance HDR
# imageio's .hdr support needs the FreeImage binary (a download), so the kit reads and writes RGBE itself.


def write_hdr(path: str | Path, image: np.ndarray) -> Path:
    """Write a linear float ``[H,W,3]`` image as Radiance RGBE with run-length scanlines (negatives -> 0)."""
    img = np.maximum(np.asarray(image, dtype=np.float64)[..., :3], 0.0)
    h, w, _ = img.shape
    peak = img.max(-1)
    mant, exp = np.frexp(peak)
    scale = np.where(peak > 1e-32, mant * 256.0 / np.maximum(peak, 1e-300), 0.0)
    rgbe = np.zeros((h, w, 4), dtype=np.uint8)
    rgbe[..., :3] = np.clip(np.floor(img * scale[..., None]), 0, 255).astype(np.uint8)
    rgbe[..., 3] = np.where(peak > 1e-32, np.clip(exp + 128, 0, 255), 0).astype(np.uint8)
    header = f"#?RADIANCE\nSOFTWARE=recon-kit {__version__}\nFORMAT=32-bit_rle_rgbe\n\n-Y {h} +X {w}\n"
    chunks = [header.encode("ascii")]
    if 8 <= w < 32768:
        # new-style RLE with literal runs only: each channel of a scanline in blocks of <= 128 bytes
        starts = np.arange(0, w, 128)
        lengths = np.minimum(128, w - starts).astype(np.uint8)
        line_head = bytes([2, 2, w >> 8, w & 255])
        for row in rgbe:
            chunks.append(line_head)
            for c in range(4):
                plane = row[:, c].tobytes()
                chunks.extend(bytes([n]) + plane[s:s + n] for s, n in zip(starts, lengths.tolist()))
    else:
        flat = rgbe.copy()
        run_marker = (flat[..., 0] == 1) & (flat[..., 1] == 1) & (flat[..., 2] == 1)
        flat[run_marker, 2] = 2  # (1,1,1,x) would read as an old-style run; perturb by one mantissa step
        chunks.append(flat.tobytes())
    path = Path(path)
    path.write_bytes(b"".join(chunks))
    return path


def read_hdr(path: str | Path) -> np.ndarray:
    """Read a Radiance RGBE file (flat or new-style RLE, ``-Y h +X w`` orientation) as linear float32 [H,W,3]."""
    data = Path(path).read_bytes()
    if not data.startswith(b"#?"):
        raise ValueError(f"{path} is not a Radiance HDR file")
    end = data.index(b"\n\n") + 2
    header = data[:end].decode("ascii", "replace")
    if "FORMAT=" in header and "32-bit_rle_rgbe" not in header:
        raise ValueError(f"{path}: only the 32-bit_rle_rgbe format is supported")
    nl = data.index(b"\n", end)
    m = re.fullmatch(r"-Y (\d+) \+X (\d+)", data[end:nl].decode("ascii").strip())
    if m is None:
        raise ValueError(f"{path}: unsupported resolution line {data[end:nl]!r}")
    h, w = int(m.group(1)), int(m.group(2))
    buf, pos = memoryview(data), nl + 1
    out = np.zeros((h, w, 4), dtype=np.uint8)
    for y in range(h):
        if 8 <= w < 32768 and bytes(buf[pos:pos + 2]) == b"\x02\x02" and (buf[pos + 2] << 8 | buf[pos + 3]) == w:
            pos += 4
            for c in range(4):
                x = 0
                while x < w:
                    n = buf[pos]
                    if n > 128:
                        out[y, x:x + n - 128, c] = buf[pos + 1]
                        x, pos = x + n - 128, pos + 2
                    else:
                        out[y, x:x + n, c] = np.frombuffer(buf[pos + 1:pos + 1 + n], np.uint8)
                        x, pos = x + n, pos + 1 + n
        else:
            out[y] = np.frombuffer(buf[pos:pos + 4 * w], np.uint8).reshape(w, 4)
            pos += 4 * w
    e = out[..., 3].astype(np.int32)
    f = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0)
    return ((out[..., :3].astype(np.float64) + 0.5) * f[..., None]).astype(np.float32)

"""A capture folder (multi_views/, depth_renders/, transforms.json?) loaded as photos, depth and cameras."""

from __future__ import annotations


import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.concurrent import thread_map

from recon_kit.cameras import AXIS_VIEWS, Camera, axis_rig_c2w
from recon_kit.io.images import DataError
from recon_kit.io.images import IMAGE_EXTENSIONS
from recon_kit.io.images import fit_size
from recon_kit.io.images import read_depth
from recon_kit.io.images import read_rgb
from recon_kit.io.transforms import read_transforms
from recon_kit.io.images import resize_area
from recon_kit.io.images import resize_nearest
from recon_kit.io.transforms import Missing, _missing
from recon_kit.io.validate import case_clashes, is_greyscale
from scipy import ndimage as ndi


T = TypeVar("T")

#: At most this many views are worked on at once (each holds full-resolution images and float intermediates).
MAX_VIEW_THREADS: int = 8


def map_views(fn: Callable[..., T], items: Iterable, desc: str, progress: bool = True) -> list[T]:
    """``[fn(x) for x in items]``, one thread per item (up to the usable cores and :data:`MAX_VIEW_THREADS`),
    results in order.

    Per-view image work (decoding, numpy, scipy.ndimage, OpenCV, PNG encoding) releases the GIL, so a capture's
    views are prepared side by side; an exception from any view is raised here.
    """
    items = list(items)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(len(items), cores, MAX_VIEW_THREADS))
    return thread_map(fn, items, max_workers=workers, desc=desc, disable=not progress, tqdm_class=tqdm)


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
    notes: list = field(default_factory=list)  # what loading changed (greyscale photos converted, ...)

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
                 missing: Missing = "error", progress: bool = True) -> Capture:
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
    for sub in ("multi_views", "depth_renders"):
        for a, b in case_clashes(folder / sub):
            raise DataError(f"{folder / sub} holds {a} and {b}, names that differ only in letter case; rename or "
                            "remove one so each view has one file")
    depths = _find_images(folder / "depth_renders")
    lower = {d.lower(): d for d in depths}
    for n, p in images.items():  # Front.PNG beside depth_renders/front.png: one view, misspelt
        if n not in depths and n.lower() in lower:
            raise DataError(f"{p} and {depths[lower[n.lower()]]} differ only in letter case; rename {p.name} to "
                            f"{lower[n.lower()]}{p.suffix.lower()} (or the depth map to match)")
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
                            f"{list(AXIS_VIEWS)}; add a transforms.json (recon_kit.io.transforms.axis_rig_transforms() "
                            "writes one for the axis rig) or rename the photos")
        cams, pose_source = None, "axis rig"
    if not names:
        raise DataError(f"no views found in {folder} that have both a photo and a pose; check transforms.json")

    def load(n: str) -> tuple[CaptureView, str | None]:
        rgb, alpha = read_rgb(images[n])
        note = (f"note: {images[n]} is a greyscale photo; converted to RGB (grey colours will be learned)"
                if is_greyscale(images[n]) else None)
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
        return CaptureView(n, rgb, cam, images[n], alpha, depth, depth_path), note

    loaded = map_views(load, names, "load views", progress)
    out, notes = [v for v, _ in loaded], [note for _, note in loaded if note is not None]
    return Capture(folder, out, pose_source, notes=notes)


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

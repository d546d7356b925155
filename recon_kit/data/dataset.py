"""Prepared datasets: one folder per resolution written from a capture, read back as the :class:`ViewSet` training
consumes (captures: :mod:`recon_kit.data.capture`; masks and alignment: ``data.masks``, ``data.align``).

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


import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from recon_kit.cameras import Camera
from recon_kit.data.capture import Capture, map_views
from recon_kit.io.images import DataError
from recon_kit.data.masks import MaskSource
from recon_kit.io.transforms import Missing
from recon_kit.io.images import _depth_to_uint16
from recon_kit.io.transforms import _load_json
from recon_kit.io.transforms import _transforms_file
from recon_kit.data.align import align_capture
from recon_kit.data.masks import compute_masks
from recon_kit.io.transforms import dump_json
from recon_kit.io.images import fit_size
from recon_kit.data.masks import foreground_masks
from recon_kit.data.capture import load_capture
from recon_kit.data.masks import mask_agreement
from recon_kit.data.masks import trim_masks
from recon_kit.io.images import read_depth
from recon_kit.io.images import read_rgb
from recon_kit.io.transforms import read_transforms
from recon_kit.io.images import resize_area
from recon_kit.io.images import resize_nearest
from recon_kit.io.transforms import transforms_dict
from recon_kit.io.images import write_png16
from recon_kit.color import srgb_to_linear
from recon_kit.io.fsio import check_writable, naming
from recon_kit.io.overwrite import check_clearable, clear, mark


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
        raise ValueError("the capture has no masks yet; call recon_kit.data.masks.compute_masks(capture, source) first")
    output_dir = Path(output_dir)
    targets = _check_outputs(output_dir, list(resolutions), overwrite)
    has_depth = any(v.depth is not None for v in capture.views)  # views without depth get none; the others keep it
    written = {}
    for r, folder in targets.items():
        tmp = output_dir / f".{r}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            with naming(folder):
                written[r] = _write_resolution(capture, r, folder, tmp, has_depth, progress)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-written dataset is left behind
            raise
    return written


def _write_resolution(capture: Capture, r: int, folder: Path, tmp: Path, has_depth: bool, progress: bool) -> Path:
    """One ``<res>/`` folder, written into ``tmp`` and renamed to ``folder`` when complete."""
    (tmp / "train").mkdir(parents=True)

    def write(v):
        W, H = v.size
        w, h = fit_size(W, H, r)
        rgb = resize_area(v.rgb, w, h)
        alpha = np.clip(resize_area(v.mask.astype(np.float32), w, h) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, alpha])).save(tmp / "train" / f"{v.name}.png")
        return v.camera.resized(w, h), None if v.depth is None else resize_nearest(v.depth, w, h)

    written = map_views(write, capture.views, f"write {r}px", progress)
    cams = [cam for cam, _ in written]
    files = [f"train/{v.name}.png" for v in capture.views]
    depths = [d for _, d in written if d is not None]
    dfiles = [f"depth/{v.name}.png" if v.depth is not None else None for v in capture.views]
    scale = 1.0
    if has_depth:
        (tmp / "depth").mkdir()
        stored, scale = _depth_to_uint16(depths)
        for v, d in zip([v for v in capture.views if v.depth is not None], stored):
            write_png16(tmp / "depth" / f"{v.name}.png", d)
    extra = {"recon_kit": {
        "source": str(capture.root), "pose_source": capture.pose_source, "mask_source": capture.mask_source,
        "resolution": r, "depth_scale": scale,
        "alignment": {v.name: v.similarity.to_dict() for v in capture.views if v.similarity is not None},
    }}
    meta = transforms_dict(cams, files, dfiles, extra)
    (tmp / "transforms.json").write_text(dump_json(meta))
    _write_test_split(capture.root, tmp, r)
    mark(tmp, "dataset")
    if folder.exists():
        clear(folder, {"capture": capture.root})
        folder.rmdir()
    tmp.rename(folder)
    return folder


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
    notes: list = field(default_factory=list)

    def __str__(self) -> str:
        text = "".join(n + "\n" for n in self.notes) + ", ".join(str(p) for p in self.folders.values())
        if self.iou_before:
            text += (f" (mask IoU depth vs photo: mean {np.mean(list(self.iou_before.values())):.3f} before, "
                     f"{np.mean(list(self.iou_after.values())):.3f} after alignment)")
        return text


def prepare_dataset(input_dir: str | Path, output_dir: str | Path, resolutions: Iterable[int] = (512,), *,
                    mask_source: MaskSource = "depth", align: bool = False, camera_angle_x: float = 0.85,
                    distance: float = 3.0, overwrite: bool = False, missing: Missing = "error",
                    max_size: int | None = None, progress: bool = True, allow_missing: bool = False,
                    trim_px: float = 0.0) -> PrepareResult:
    """Capture folder to prepared dataset in one call (what notebook 01 does step by step).

    Every frame is checked first (:mod:`recon_kit.io.validate`); a photo or frame without its counterpart is an
    error unless ``allow_missing`` (then it is skipped with a warning). ``trim_px`` > 0 trims, after the
    alignment, each mask's rim where the photo shows its background (:func:`recon_kit.data.masks.trim_masks`;
    pixels at 1024 px image width).
    """
    resolutions = list(resolutions)
    missing = "warn" if allow_missing else missing
    targets = _check_outputs(Path(output_dir), resolutions, overwrite)  # fail before the slow part
    for d in targets.values():
        if d.exists():
            check_clearable(d, {"capture": input_dir})
    check_writable(output_dir)
    capture = load_capture(input_dir, max_size=max_size, require_depth=mask_source == "depth",
                           camera_angle_x=camera_angle_x, distance=distance, missing=missing, progress=progress)
    capture = compute_masks(capture, mask_source)
    fg = foreground_masks(capture) if any(v.depth is not None for v in capture.views) else {}
    before = mask_agreement(capture, fg) if fg else {}
    if align and fg:
        capture = align_capture(capture, fg, progress=progress)
    capture = trim_masks(capture, trim_px)
    after = mask_agreement(capture, fg) if fg else {}
    folders = write_dataset(capture, output_dir, resolutions, overwrite=overwrite, progress=progress)
    return PrepareResult(folders, before, after, capture.notes)


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
            raise DataError(f"{dataset_dir} (that is {dataset_dir.resolve()}) holds no transforms.json for split "
                            f"{split!r} (nor <res>/ folders with "
                            "one); write a dataset with recon_kit.data.dataset.write_dataset or notebook 01 first")
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
    if any(d is not None for d in depths):  # frames without depth get zeros (= no depth) so the others keep theirs
        depths = [np.zeros(r.shape[:2], np.float32) if d is None else d for d, r in zip(depths, rgbs)]
    rgb_linear = srgb_to_linear(torch.from_numpy(np.stack(rgbs)).float() / 255.0)
    depth = None if any(d is None for d in depths) else torch.from_numpy(np.stack(depths)).float() / depth_scale
    views = ViewSet([c.name for c in cameras], cameras, rgb_linear, torch.from_numpy(np.stack(masks)).float(), depth)
    if resolution is not None and max(views.width, views.height) != resolution:
        views = views.resized(*fit_size(views.width, views.height, resolution))
    return views.to(device)

"""transforms.json (NeRF/OpenGL camera-to-world) in and out, and the axis rig for captures without one."""

from __future__ import annotations


import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from recon_kit.cameras import AXIS_VIEWS, Camera, axis_rig_c2w, focal_from_fov, fov_from_focal

from recon_kit.io.images import DataError
from recon_kit.io.images import IMAGE_EXTENSIONS
from recon_kit.io.images import image_size
from recon_kit.io.validate import InvalidFrame, case_variant, check_fov, check_intrinsics, check_pose
import warnings
from typing import Literal


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
                        "allowed) or regenerate it with recon_kit.io.transforms.axis_rig_transforms()") from exc
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
            alt = case_variant(base / frame["file_path"]) or next(
                (a for d in search_dirs if (a := case_variant(Path(d) / Path(frame["file_path"]).name))), None)
            fix = f"rename {alt} to {Path(frame['file_path']).name}" if alt else "add the image or remove the frame"
            _missing(missing, f"{path}: frame {i} image {frame['file_path']!r} not found under {base}; {fix} "
                              "(or pass --allow-missing to skip it)")
            continue
        cam = _frame_camera(path, i, frame, global_intr, image_size(image))
        depth_path = None
        if frame.get("depth_file_path"):
            depth_path = _resolve_file(base, frame["depth_file_path"])
            if depth_path is None:
                _missing(missing, f"{path}: frame {i} depth {frame['depth_file_path']!r} not found under {base}; "
                                  "add it or remove the key")
        cam.meta.update(file_path=image, depth_file_path=depth_path)
        cameras.append(cam)
    if not cameras:
        raise DataError(f"{path}: no frame has an existing image; check the file_path entries against {base}")
    return cameras


def _frame_camera(path: Path, i: int, frame: dict, global_intr: dict, size: tuple[int, int]) -> Camera:
    """The validated camera of frame ``i`` of ``path`` for an image of ``size`` = (width, height): pose and
    intrinsics checked, intrinsics given for another ``w x h`` rescaled, named after the frame's file stem."""
    try:
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0, 0, 0, 1]])
        if c2w.shape != (4, 4):
            raise ValueError(f"shape {c2w.shape}")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: frame {i} transform_matrix is not a 4x4 matrix ({exc}); fix that frame") from exc
    try:  # finite, orthonormal rotation, camera away from the origin
        check_pose(c2w, f"{path}: frame {i} ({frame['file_path']})")
    except InvalidFrame as exc:
        raise DataError(str(exc)) from None
    intr = {**global_intr, **{k: frame[k] for k in _INTRINSIC_KEYS if k in frame}}
    W_img, H_img = size
    w, h = int(intr.get("w", W_img)), int(intr.get("h", H_img))
    if "fl_x" in intr or "fl_y" in intr:
        fx = float(intr.get("fl_x", intr.get("fl_y")))
        fy = float(intr.get("fl_y", fx))
    elif "camera_angle_x" in intr:
        try:
            angles = [check_fov(f"{path}: frame {i}", k, intr[k]) for k in ("camera_angle_x", "camera_angle_y")
                      if k in intr]
        except InvalidFrame as exc:
            raise DataError(str(exc)) from None
        fx = focal_from_fov(angles[0], w)
        fy = focal_from_fov(angles[1], h) if len(angles) > 1 else fx
    else:
        raise DataError(f"{path} lacks intrinsics for frame {i}; add 'camera_angle_x' (horizontal field of view "
                        "in radians) or 'fl_x', 'fl_y', 'cx', 'cy', 'w', 'h' (pixels), globally or per frame")
    cx, cy = float(intr.get("cx", w / 2.0)), float(intr.get("cy", h / 2.0))
    try:
        check_intrinsics(f"{path}: frame {i} ({frame['file_path']})", fx, fy, cx, cy, w, h)
    except InvalidFrame as exc:
        raise DataError(str(exc)) from None
    try:
        cam = Camera(c2w, fx, fy, cx, cy, w, h, name=Path(frame["file_path"]).stem)
    except ValueError as exc:
        raise DataError(f"{path}: frame {i}: {exc}; fix that frame") from exc
    if (w, h) != (W_img, H_img):
        cam = cam.resized(W_img, H_img)
    return cam


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


def _transforms_file(folder: Path, split: str) -> Path | None:
    names = ["transforms.json", "transforms_train.json"] if split == "train" else [f"transforms_{split}.json"]
    return next((folder / n for n in names if (folder / n).is_file()), None)


def transforms_path(dataset_dir: str | Path) -> Path:
    """The transforms.json of a prepared dataset folder, or of its largest ``<res>/`` sub-folder."""
    d = Path(dataset_dir)
    if (d / "transforms.json").is_file():
        return d / "transforms.json"
    subs = sorted((p for p in d.glob("*") if p.name.isdigit() and (p / "transforms.json").is_file()),
                  key=lambda p: int(p.name))
    if not subs:
        raise FileNotFoundError(f"no transforms.json in {d} (that is {d.resolve()}) or its <res>/ folders")
    return subs[-1] / "transforms.json"


Missing = Literal["warn", "error"]


def _missing(option: Missing, message: str) -> None:
    if option == "error":
        raise DataError(message)
    if option != "warn":
        raise ValueError(f"missing must be 'warn' or 'error', got {option!r}")
    warnings.warn(message, stacklevel=3)


def load_cameras(path: str | Path, names: Sequence[str], width: int, height: int) -> list[Camera]:
    """Cameras for ``names`` from a transforms file (frames matched by file stem), sized ``width x height``.

    For checking a hand-edited transforms file against an already prepared dataset's images: the same frame
    parsing and checks as :func:`read_transforms`, with the images' size given instead of read from the files.
    """
    path = Path(path)
    meta = _load_json(path)
    frames = {_frame_name(f): (i, f) for i, f in enumerate(meta["frames"]) if isinstance(f, dict)}
    missing = [n for n in names if n not in frames]
    if missing:
        raise KeyError(f"{path} has no frames for views {missing}")
    global_intr = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    return [_frame_camera(path, *frames[n], global_intr, (width, height)) for n in names]


def _frame_name(frame: dict) -> str:
    return Path(str(frame.get("file_path", ""))).stem


def write_corrected_transforms(src_path: str | Path, fixes: Sequence, out_path: str | Path | None = None,
                               overwrite: bool = False, allow_mirrored: bool = False,
                               camera_angle_x: float | None = None) -> Path:
    """Write a copy of a transforms.json with ``transform_matrix @ T`` for each fix; never touches the source.

    The default output is ``<stem>_corrected.json`` beside the source; an existing output is an error unless
    ``overwrite``. Frames are matched by file name stem (``train/front.png`` -> ``front``), else by index.
    Image-mirror fixes (kind ``"image"``, left-handed result) are skipped with a warning unless
    ``allow_mirrored``: flip those images instead.

    ``camera_angle_x`` (e.g. :attr:`Calibration.best_angle`) replaces the file's angle (and ``fl_x``/``fl_y``
    when present); every camera position is scaled by ``tan(old / 2) / tan(new / 2)`` so that the object keeps
    its size in world units and the volume (``mesh_scale``) that fitted it still does.
    """
    src = Path(src_path)
    out = Path(out_path) if out_path is not None else src.with_name(f"{src.stem}_corrected.json")
    if out.resolve() == src.resolve():
        raise ValueError(f"refusing to write over the original {src}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    meta = json.loads(src.read_text())
    frames = meta.get("frames", [])
    stems = [_frame_name(f) for f in frames]
    for fix in fixes:
        if fix.kind == "image" and not allow_mirrored:
            warnings.warn(f"{fix.view}: not writing a left-handed matrix; {fix.correction.image_op} instead",
                          stacklevel=2)
            continue
        if fix.view in stems:
            k = stems.index(fix.view)
        elif 0 <= fix.index < len(frames):
            k = fix.index
        else:
            raise KeyError(f"no frame for view {fix.view!r} in {src}")
        mat = np.asarray(frames[k]["transform_matrix"], dtype=np.float64)
        t4 = np.eye(4)
        t4[:3, :3] = fix.correction.matrix
        frames[k]["transform_matrix"] = _clean(mat @ t4).tolist()
        frames[k]["recon_kit_fix"] = fix.correction.name
    if camera_angle_x is not None:
        _set_angle(meta, float(camera_angle_x), src)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(meta, indent=4))
    return out


def _set_angle(meta: dict, angle: float, src: Path) -> None:
    """Give ``meta`` (a transforms dict) a new horizontal field of view, keeping the object's world size."""
    if not 0.0 < angle < math.pi:
        raise ValueError(f"camera_angle_x must be in (0, pi) radians, got {angle}")
    if "camera_angle_x" in meta:
        old = float(meta["camera_angle_x"])
    elif "fl_x" in meta and "w" in meta:
        old = fov_from_focal(float(meta["fl_x"]), int(meta["w"]))
    else:
        raise KeyError(f"{src} has neither camera_angle_x nor fl_x and w; cannot change its field of view")
    scale = math.tan(old / 2.0) / math.tan(angle / 2.0)
    for fr in meta.get("frames", []):
        mat = np.asarray(fr["transform_matrix"], dtype=np.float64)
        mat[:3, 3] *= scale
        fr["transform_matrix"] = _clean(mat).tolist()
    if "fl_x" in meta and "w" in meta:
        f_new = focal_from_fov(angle, int(meta["w"]))
        if "fl_y" in meta:
            meta["fl_y"] = float(meta["fl_y"]) * f_new / float(meta["fl_x"])
        meta["fl_x"] = f_new
    meta["camera_angle_x"] = angle
    meta["recon_kit_calibration"] = {"camera_angle_x_was": old, "positions_scaled_by": scale}


def _clean(a: np.ndarray) -> np.ndarray:
    """Round away float noise (-0.0, 1e-17) so corrected matrices stay readable."""
    r = np.round(a, 12)
    return np.where(r == 0, 0.0, r)

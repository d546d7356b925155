"""Checks at the door: every frame of a capture is validated before anything is written.

Poses must be finite rigid camera-to-world matrices (orthonormal rotation within ``tol``, last row
``[0, 0, 0, 1]``, camera away from the origin, where the object sits); intrinsics must be finite and
positive; a file that is missing only because of letter case gets a rename suggestion. Each check raises
:class:`InvalidFrame` with one line naming the file, the frame and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["InvalidFrame", "case_clashes", "case_variant", "check_fov", "check_intrinsics", "check_pose", "is_greyscale"]


class InvalidFrame(ValueError):
    """A frame of transforms.json (or a capture file) is unusable; the message says which and how to fix it."""


def check_pose(c2w, where: str, tol: float = 1e-3, min_distance: float = 1e-6) -> np.ndarray:
    """``c2w`` as a float64 4x4 array, or :class:`InvalidFrame` naming ``where`` (e.g. "transforms.json frame 3")."""
    fix = "fix that frame's transform_matrix (a camera-to-world matrix, NeRF/OpenGL convention)"
    m = np.asarray(c2w, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise InvalidFrame(f"{where}: transform_matrix has shape {m.shape}, expected 4x4; {fix}")
    if not np.isfinite(m).all():
        raise InvalidFrame(f"{where}: transform_matrix holds NaN or Inf; {fix}")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=tol):
        raise InvalidFrame(f"{where}: transform_matrix last row is {m[3].tolist()}, expected [0, 0, 0, 1]; {fix}")
    r = m[:3, :3]
    err = float(np.abs(r.T @ r - np.eye(3)).max())
    if err > tol:
        det = float(np.linalg.det(r))
        what = "is singular" if abs(det) < 1e-6 else f"is not a rotation (|R^T R - I| = {err:.3g}, det {det:.3g})"
        raise InvalidFrame(f"{where}: transform_matrix rotation {what}; {fix}")
    if float(np.linalg.norm(m[:3, 3])) < min_distance:
        raise InvalidFrame(f"{where}: the camera sits at the origin (where the object is); {fix}")
    return m


def check_intrinsics(where: str, fx: float, fy: float, cx: float, cy: float, w: int, h: int) -> None:
    values = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": w, "h": h}
    bad = [k for k, v in values.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
    bad += [k for k in ("fl_x", "fl_y", "w", "h") if k not in bad and values[k] <= 0]
    if bad:
        raise InvalidFrame(f"{where}: intrinsics {', '.join(f'{k}={values[k]}' for k in bad)} must be finite and "
                           "positive; fix camera_angle_x (radians, 0..pi) or fl_x/fl_y/cx/cy/w/h (pixels)")


def check_fov(where: str, key: str, value) -> float:
    """A field-of-view angle in radians, strictly between 0 and pi."""
    try:
        angle = float(value)
    except (TypeError, ValueError):
        angle = math.nan
    if not (0.0 < angle < math.pi):
        raise InvalidFrame(f"{where}: {key}={value!r} must be a field of view in radians between 0 and pi "
                           "(e.g. 0.85); fix it, or give fl_x/fl_y/cx/cy/w/h in pixels")
    return angle


def case_variant(path: str | Path) -> Path | None:
    """An existing file whose name equals ``path``'s except for letter case (or extension case), else None."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        return None
    want_name, want_stem = path.name.lower(), path.stem.lower()
    for p in sorted(folder.iterdir()):
        if p.name != path.name and (p.name.lower() == want_name or (path.suffix == "" and p.stem.lower() == want_stem)):
            return p
    return None


def case_clashes(folder: str | Path) -> list[tuple[str, str]]:
    """Pairs of file names in ``folder`` whose stems differ only in letter case (``Front.PNG``, ``front.png``)."""
    folder = Path(folder)
    seen: dict[str, str] = {}
    out = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.is_file() and not p.name.startswith("."):
            key = p.stem.lower()
            if key in seen:
                out.append((seen[key], p.name))
            else:
                seen[key] = p.name
    return out


def is_greyscale(path: str | Path) -> bool:
    """Whether an image file has no colour channels (read from its header)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")

"""Pinhole cameras in the NeRF/OpenGL convention, and the matrices the rasterisers need.

Convention (the only one used in the kit):
  * ``c2w`` is a 4x4 camera-to-world matrix; camera axes are x right, y up, and the camera looks down -z.
  * Intrinsics are in pixels: ``fx, fy`` focal lengths, ``cx, cy`` principal point, image ``width x height``.
    Pixel (row i, col j) has its centre at ``(x, y) = (j + 0.5, i + 0.5)``; row 0 is the top of the image.
  * A camera-space point ``(xc, yc, zc)`` (``zc < 0`` in front) lands at
    ``x = cx + fx * xc / -zc`` and ``y = cy - fy * yc / -zc`` (y grows downwards in the image).
  * :func:`projection` returns an OpenGL-style clip matrix whose NDC y grows with the image row, so the
    rasterisers' output row 0 is the image top (the same trick nvdiffrec plays with a negative ``[1, 1]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

#: Camera rotations (columns = camera x, y, z axes in world) of the 6-view axis rig, keyed by view name.
#: "front" looks from +z, "left" from +x, "top" from +y: the layout of the user's hand-written transforms.json.
AXIS_RIG_ROTATIONS: dict[str, np.ndarray] = {
    "front": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64),
    "back": np.array([[-1, 0, 0], [0, 1, 0], [0, 0, -1]], dtype=np.float64),
    "left": np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=np.float64),
    "right": np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=np.float64),
    "top": np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float64),
    "bottom": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64),
}
AXIS_VIEWS: tuple[str, ...] = tuple(AXIS_RIG_ROTATIONS)


def focal_from_fov(fov: float, size: int) -> float:
    """Focal length in pixels for a full field of view ``fov`` (radians) across ``size`` pixels."""
    return 0.5 * size / math.tan(0.5 * fov)


def fov_from_focal(focal: float, size: int) -> float:
    """Inverse of :func:`focal_from_fov`."""
    return 2.0 * math.atan(0.5 * size / focal)


@dataclass
class Camera:
    """One pinhole camera: ``c2w`` (4x4, OpenGL axes) and pixel intrinsics."""

    c2w: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    name: str = ""
    near: float = 0.1
    far: float = 1000.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(4, 4)
        if not np.allclose(self.c2w[3], [0, 0, 0, 1]):
            raise ValueError(f"camera {self.name!r}: last row of c2w must be [0, 0, 0, 1], got {self.c2w[3]}")

    @classmethod
    def from_fov(cls, c2w, camera_angle_x: float, width: int, height: int, name: str = "", **kw) -> "Camera":
        """NeRF-synthetic style: one horizontal field of view, square pixels, centred principal point."""
        f = focal_from_fov(camera_angle_x, width)
        return cls(c2w, f, f, width / 2.0, height / 2.0, width, height, name=name, **kw)

    @property
    def position(self) -> np.ndarray:
        return self.c2w[:3, 3].copy()

    @property
    def camera_angle_x(self) -> float:
        return fov_from_focal(self.fx, self.width)

    def w2c(self) -> np.ndarray:
        """World-to-camera (view) matrix."""
        return np.linalg.inv(self.c2w)

    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix in the image-row-down convention (y axis of K flipped from camera y)."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def projection(self) -> np.ndarray:
        return projection(self.fx, self.fy, self.cx, self.cy, self.width, self.height, self.near, self.far)

    def mvp(self) -> np.ndarray:
        """Clip-from-world matrix: ``projection() @ w2c()``."""
        return self.projection() @ self.w2c()

    def resized(self, width: int, height: int) -> "Camera":
        """The same camera for an image resampled to ``width x height`` (intrinsics scaled)."""
        sx, sy = width / self.width, height / self.height
        return Camera(self.c2w.copy(), self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height,
                      name=self.name, near=self.near, far=self.far, meta=dict(self.meta))

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``(x, y)`` [N, 2] and camera depth ``-zc`` [N] of world points."""
        p = np.asarray(points_world, dtype=np.float64)
        pc = p @ self.w2c()[:3, :3].T + self.w2c()[:3, 3]
        depth = -pc[:, 2]
        safe = np.where(np.abs(depth) < 1e-12, 1e-12, depth)
        x = self.cx + self.fx * pc[:, 0] / safe
        y = self.cy - self.fy * pc[:, 1] / safe
        return np.stack([x, y], -1), depth

    def to_dict(self) -> dict:
        return {"name": self.name, "c2w": self.c2w.tolist(), "fx": self.fx, "fy": self.fy, "cx": self.cx,
                "cy": self.cy, "width": self.width, "height": self.height, "near": self.near, "far": self.far}


def projection(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
               near: float = 0.1, far: float = 1000.0) -> np.ndarray:
    """OpenGL-style clip matrix for pixel intrinsics, NDC y pointing down the image (row 0 = NDC y -1).

    NDC x = 2 x / W - 1 and NDC y = 2 y / H - 1 for the pixel coordinates of the module convention;
    z maps [near, far] to [-1, 1] as in OpenGL.
    """
    return np.array([
        [2 * fx / width, 0, 1 - 2 * cx / width, 0],
        [0, -2 * fy / height, 1 - 2 * cy / height, 0],
        [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
        [0, 0, -1, 0],
    ], dtype=np.float64)


def axis_rig_c2w(view: str, distance: float = 3.0) -> np.ndarray:
    """Camera-to-world matrix of one view of the 6-view axis rig (camera at ``distance`` looking at the origin)."""
    if view not in AXIS_RIG_ROTATIONS:
        raise ValueError(f"unknown axis view {view!r}; expected one of {list(AXIS_VIEWS)}")
    R = AXIS_RIG_ROTATIONS[view]
    c2w = np.eye(4)
    c2w[:3, :3] = R
    c2w[:3, 3] = R[:, 2] * distance
    return c2w


def axis_rig(width: int, height: int, camera_angle_x: float = 0.85, distance: float = 3.0,
             views: tuple[str, ...] = AXIS_VIEWS) -> list[Camera]:
    """The 6-view (front, back, left, right, top, bottom) rig the user wrote by hand, as cameras."""
    return [Camera.from_fov(axis_rig_c2w(v, distance), camera_angle_x, width, height, name=v) for v in views]


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world matrix of a camera at ``eye`` looking at ``target`` (OpenGL axes)."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = eye - target
    z /= np.linalg.norm(z)
    if abs(np.dot(z, up / np.linalg.norm(up))) > 0.999:
        up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def sphere_views(n: int, distance: float, seed: int = 0, min_elevation: float = -1.0) -> list[np.ndarray]:
    """``n`` camera-to-world matrices looking at the origin from random directions on a sphere."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        if d[1] < min_elevation:
            continue
        out.append(look_at(d * distance))
    return out


def orbit_views(n: int, distance: float, elevation: float = 0.4) -> list[np.ndarray]:
    """``n`` cameras on a horizontal orbit (y up) at ``elevation`` radians, for turntables."""
    return [look_at(distance * np.array([math.cos(elevation) * math.sin(a), math.sin(elevation),
                                         math.cos(elevation) * math.cos(a)]))
            for a in np.linspace(0.0, 2 * math.pi, n, endpoint=False)]


def stack_matrices(cameras: list[Camera], device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Batched tensors for rendering: ``mvp`` [B,4,4], ``w2c`` [B,4,4], ``campos`` [B,3]."""
    mvp = torch.tensor(np.stack([c.mvp() for c in cameras]), dtype=dtype, device=device)
    w2c = torch.tensor(np.stack([c.w2c() for c in cameras]), dtype=dtype, device=device)
    campos = torch.tensor(np.stack([c.position for c in cameras]), dtype=dtype, device=device)
    return {"mvp": mvp, "w2c": w2c, "campos": campos}


_FLIP_Y = np.diag([1.0, -1.0])


@dataclass(frozen=True)
class Correction:
    """A symmetry of the image square as a pose correction ``c2w @ matrix`` (``matrix`` acts on camera x, y)."""

    name: str
    matrix: np.ndarray
    image_op: str

    @property
    def is_mirror(self) -> bool:
        return bool(np.linalg.det(self.matrix) < 0)

    @property
    def pixel_map(self) -> np.ndarray:
        """2x2 map of centred pixel coordinates (x right, y down) taking the image to the one ``c2w`` expects."""
        a = self.matrix[:2, :2]
        return _FLIP_Y @ a @ _FLIP_Y


def _correction(name: str, a: list[list[int]], image_op: str) -> Correction:
    m = np.eye(3)
    m[:2, :2] = np.array(a, dtype=np.float64)
    return Correction(name, m, image_op)


def corrections() -> list[Correction]:
    """The 8 candidate corrections, identity first; "roll +90" turns the camera +90 deg about its z axis."""
    return [
        _correction("identity", [[1, 0], [0, 1]], "nothing"),
        _correction("roll +90", [[0, -1], [1, 0]], "rotate the image 90 deg counter-clockwise (np.rot90(img, 1))"),
        _correction("roll 180", [[-1, 0], [0, -1]], "rotate the image 180 deg (np.rot90(img, 2))"),
        _correction("roll -90", [[0, 1], [-1, 0]], "rotate the image 90 deg clockwise (np.rot90(img, -1))"),
        _correction("mirror x", [[-1, 0], [0, 1]], "flip the image left-right (img[:, ::-1])"),
        _correction("mirror y", [[1, 0], [0, -1]], "flip the image top-bottom (img[::-1])"),
        _correction("swap x y", [[0, 1], [1, 0]], "transpose the image about its anti-diagonal "
                                                    "(np.rot90(img, 2).swapaxes(0, 1))"),
        _correction("swap x -y", [[0, -1], [-1, 0]], "transpose the image (img.swapaxes(0, 1))"),
    ]


def apply_pixel_map(image: torch.Tensor, pixel_map: np.ndarray) -> torch.Tensor:
    """Resample a square image ``[..., S, S]`` so that ``out(P p) = image(p)`` for centred pixel coordinates ``p``.

    With ``P = Correction.pixel_map`` this turns an image into the one the uncorrected pose expects; with its
    transpose it turns the silhouette seen by ``c2w`` into the one seen by ``c2w @ T``.
    """
    h, w = image.shape[-2:]
    if h != w:
        raise ValueError(f"pixel maps need square images, got {w}x{h}")
    p_inv = np.round(pixel_map.T).astype(np.int64)
    c2 = torch.arange(w, device=image.device) * 2 - (w - 1)
    vv, uu = torch.meshgrid(c2, c2, indexing="ij")
    su = p_inv[0, 0] * uu + p_inv[0, 1] * vv
    sv = p_inv[1, 0] * uu + p_inv[1, 1] * vv
    return image[..., (sv + (w - 1)) // 2, (su + (w - 1)) // 2]


def can_use_pixel_map(camera: Camera) -> bool:
    """True when rolls/mirrors of the camera map its pixel grid onto itself (square, centred, square pixels)."""
    return (camera.width == camera.height and abs(camera.cx - camera.width / 2) < 1e-6
            and abs(camera.cy - camera.height / 2) < 1e-6 and abs(camera.fx - camera.fy) < 1e-6 * camera.fx)


def corrected_camera(camera: Camera, correction: Correction) -> Camera:
    """The camera with ``c2w @ T`` (intrinsics unchanged)."""
    c2w = camera.c2w.copy()
    c2w[:3, :3] = c2w[:3, :3] @ correction.matrix
    return replace(camera, c2w=c2w, meta=dict(camera.meta))

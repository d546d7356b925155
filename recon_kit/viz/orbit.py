"""The y-up orbit camera every 3-D view of the kit starts from: the live view (dragged and zoomed by the user) and
the k3d scenes with their standalone HTML (:mod:`recon_kit.viz.k3d_view`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recon_kit.cameras import Camera, look_at

__all__ = ["OrbitCamera"]


@dataclass
class OrbitCamera:
    """A y-up orbit camera around ``target``: azimuth from +z towards +x, elevation above the xz plane (radians),
    ``distance`` from the target; ``fov`` horizontal, in radians."""

    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    azimuth: float = math.radians(35.0)
    elevation: float = math.radians(20.0)
    distance: float = 3.0
    fov: float = 0.6
    snapped: Camera | None = None

    def frame(self, points: np.ndarray, margin: float = 1.08) -> "OrbitCamera":
        """Aim at the points' bounding-box centre from far enough that their bounding sphere fills the view."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if len(p):
            centre = 0.5 * (p.min(0) + p.max(0))
            radius = max(float(np.linalg.norm(p - centre, axis=1).max()), 1e-6)
            self.target = tuple(float(c) for c in centre)
            self.distance = margin * radius / math.sin(0.5 * self.fov)
        self.snapped = None
        return self

    def orbit(self, dx_frac: float, dy_frac: float) -> None:
        """Drag by a fraction of the image width: a full width turns by 180 degrees (up/down clamped)."""
        self._unsnap()
        self.azimuth -= math.pi * dx_frac
        self.elevation = float(np.clip(self.elevation + math.pi * dy_frac, -1.5, 1.5))

    def zoom(self, steps: float) -> None:
        """Wheel steps: each moves 10 % closer (negative) or farther (positive)."""
        self._unsnap()
        self.distance *= 1.1 ** steps

    def snap(self, camera: Camera) -> None:
        """Look through ``camera`` exactly (until the next drag, which orbits from there)."""
        self.snapped = camera
        offset = camera.position - np.asarray(self.target)
        self.distance = float(max(np.linalg.norm(offset), 1e-6))
        self.azimuth = math.atan2(offset[0], offset[2])
        self.elevation = math.asin(float(np.clip(offset[1] / self.distance, -1, 1)))

    def _unsnap(self) -> None:
        if self.snapped is not None:
            self.fov = self.snapped.camera_angle_x
            self.snapped = None

    def camera(self, width: int, height: int | None = None) -> Camera:
        height = height or width
        if self.snapped is not None:
            return self.snapped.resized(width, height)
        ce, se = math.cos(self.elevation), math.sin(self.elevation)
        eye = np.asarray(self.target) + self.distance * np.array([ce * math.sin(self.azimuth), se,
                                                                  ce * math.cos(self.azimuth)])
        return Camera.from_fov(look_at(eye, self.target), self.fov, width, height, name="live_view",
                               near=max(1e-3, 0.02 * self.distance), far=20.0 * self.distance)

"""How every k3d scene of the kit opens: y up (the kit's world; k3d's default is z up), from a three-quarter front
view, the given points (mesh, or mesh + camera rig) filling most of the frame.

The camera is the one :class:`recon_kit.viz.orbit.OrbitCamera` opens with, so the live view, the k3d viewers
and their standalone HTML snapshots all start from the same place.
"""

from __future__ import annotations

import math

import numpy as np

from recon_kit.viz.orbit import OrbitCamera

__all__ = ["upright_camera", "open_upright"]

#: k3d's vertical field of view (degrees) for the kit's scenes; a canvas wider than tall makes it the limiting one.
FOV_DEG = 40.0


def upright_camera(points: np.ndarray, fov_deg: float = FOV_DEG, margin: float = 1.02) -> list[float]:
    """k3d's ``[eye xyz, target xyz, up xyz]`` looking at ``points`` y-up from the three-quarter front."""
    orbit = OrbitCamera(fov=math.radians(fov_deg)).frame(points, margin)
    eye = orbit.camera(8).position
    return [*map(float, eye), *map(float, orbit.target), 0.0, 1.0, 0.0]


def open_upright(plot, points: np.ndarray, fov_deg: float = FOV_DEG):
    """Make ``plot`` (and its HTML snapshot) open at :func:`upright_camera` with y up; returns the plot."""
    plot.camera_auto_fit = False
    plot.camera_up_axis = "y"
    plot.camera_fov = fov_deg
    plot.camera = upright_camera(points, fov_deg)
    return plot

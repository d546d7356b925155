"""Per-view camera corrections learned with the scene (hand-framed photos, slightly wrong poses).

Each training view gets a small rigid correction in its own camera frame (axis-angle rotation, translation)
and an image-plane zoom and shift (a log focal scale and a principal-point offset in NDC), all starting at
zero, i.e. at the cameras as written. The corrected matrices are::

    w2c' = D(rot, trans) @ w2c          mvp' = S(zoom, shift) @ P @ w2c'

where ``P`` is the view's projection and ``S`` scales NDC x/y by ``exp(zoom)`` and adds ``shift``. A quadratic
penalty keeps the corrections small (it also pins the gauge: moving every camera together is the same as
moving the object). :meth:`CameraRefiner.cameras` turns the corrections back into :class:`Camera` objects
(new camera-to-world and pinhole intrinsics), so they can be reported and written as corrected transforms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from recon_kit.cameras import Camera


def axis_angle_to_matrix(rot: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N,3,3] from axis-angle vectors [N,3] (Rodrigues; exact at zero)."""
    theta2 = (rot * rot).sum(-1, keepdim=True)[..., None]
    k = torch.zeros(rot.shape[0], 3, 3, dtype=rot.dtype, device=rot.device)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -rot[:, 2], rot[:, 1], -rot[:, 0]
    k = k - k.transpose(1, 2)
    theta = theta2.clamp_min(1e-12).sqrt()
    # sin(t)/t and (1-cos(t))/t^2 with their Taylor series near zero, so gradients are finite at rot = 0
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device).expand_as(k)
    return eye + a * k + b * (k @ k)


class CameraRefiner(nn.Module):
    """Learnable corrections for ``n_views`` cameras whose base matrices are ``mats`` (see
    :func:`recon_kit.cameras.stack_matrices`); ``distance`` scales the translation (world units per unit)."""

    def __init__(self, mats: dict[str, torch.Tensor], distance: float = 1.0) -> None:
        super().__init__()
        n = mats["mvp"].shape[0]
        self.register_buffer("w2c", mats["w2c"].clone())
        self.register_buffer("proj", mats["mvp"] @ torch.linalg.inv(mats["w2c"]))
        self.distance = float(distance)
        self.rot = nn.Parameter(torch.zeros(n, 3, device=self.w2c.device))
        self.trans = nn.Parameter(torch.zeros(n, 3, device=self.w2c.device))
        self.zoom = nn.Parameter(torch.zeros(n, 1, device=self.w2c.device))
        self.shift = nn.Parameter(torch.zeros(n, 2, device=self.w2c.device))

    def forward(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Corrected ``mvp``, ``w2c`` [B,4,4] and ``campos`` [B,3] of views ``idx`` (a device index tensor)."""
        rot, trans = self.rot.index_select(0, idx), self.trans.index_select(0, idx) * self.distance
        zoom, shift = self.zoom.index_select(0, idx), self.shift.index_select(0, idx)
        B = idx.shape[0]
        d = torch.eye(4, dtype=self.w2c.dtype, device=self.w2c.device).repeat(B, 1, 1)
        d[:, :3, :3] = axis_angle_to_matrix(rot)
        d[:, :3, 3] = trans
        w2c = d @ self.w2c.index_select(0, idx)
        s = torch.eye(4, dtype=self.w2c.dtype, device=self.w2c.device).repeat(B, 1, 1)
        s[:, 0, 0] = s[:, 1, 1] = torch.exp(zoom[:, 0])
        s[:, 0, 3], s[:, 1, 3] = shift[:, 0], shift[:, 1]
        mvp = s @ self.proj.index_select(0, idx) @ w2c
        r, t = w2c[:, :3, :3], w2c[:, :3, 3:]
        campos = -(r.transpose(1, 2) @ t)[..., 0]
        return {"mvp": mvp, "w2c": w2c, "campos": campos}

    def regularizer(self) -> torch.Tensor:
        """Sum of squared corrections (radians, translation / distance, log zoom, NDC shift)."""
        return sum((p * p).sum() for p in (self.rot, self.trans, self.zoom, self.shift))

    @torch.no_grad()
    def cameras(self, base: list[Camera]) -> list[Camera]:
        """The corrected cameras as pinhole :class:`Camera` objects (same image sizes)."""
        idx = torch.arange(len(base), device=self.w2c.device)
        w2c = self.forward(idx)["w2c"].double().cpu().numpy()
        zoom = self.zoom[:, 0].double().cpu().numpy()
        shift = self.shift.double().cpu().numpy()
        out = []
        for i, cam in enumerate(base):
            s = math.exp(zoom[i])
            W, H = cam.width, cam.height
            # NDC x' = s * x + shift  <=>  fx' = s fx, cx' = s cx + W/2 (1 - s + shift_x); likewise for y
            out.append(Camera(np.linalg.inv(w2c[i]), cam.fx * s, cam.fy * s,
                              cam.cx * s + W / 2 * (1 - s + shift[i, 0]), cam.cy * s + H / 2 * (1 - s + shift[i, 1]),
                              W, H, name=cam.name, near=cam.near, far=cam.far, meta=dict(cam.meta)))
        return out

    @torch.no_grad()
    def report(self, names: list[str], width: int) -> list[dict]:
        """Per-view corrections in readable units: rotation (deg), translation (world), zoom (%), shift (px)."""
        rows = []
        for i, name in enumerate(names):
            rows.append({"view": name,
                         "rotation_deg": float(self.rot[i].norm()) * 180 / math.pi,
                         "translation": float(self.trans[i].norm()) * self.distance,
                         "zoom_pct": (math.exp(float(self.zoom[i, 0])) - 1) * 100,
                         "shift_px": float(self.shift[i].norm()) * width / 2})
        return rows

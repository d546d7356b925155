"""Materials: a multiresolution hash-grid field over space (pass 1) and UV textures (pass 2).

Material channels follow nvdiffrec: ``kd`` diffuse albedo (3), ``ks`` = (occlusion, roughness, metallic),
``normal`` a tangent-space normal (unit length, z >= 0). Both :class:`MaterialField` and
:class:`TexturedMaterial` return ``dict(kd, ks, normal)`` with those shapes and ranges.

The hash-grid encoder is pure PyTorch: one custom autograd function computes all levels' corner indices and
trilinear weights in batched ops, gathers the features with a single ``index_select`` and scatters the
gradient with a single ``index_add_`` (autograd through ``table[idx]`` is several times slower).
tiny-cuda-nn is used only when a crash-safe probe in a subprocess says it works.
"""

from __future__ import annotations


import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from recon_kit.model.hashgrid import _default_device
from recon_kit.model.hashgrid import make_encoder


log = logging.getLogger(__name__)


KD_MIN, KD_MAX = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


KS_MIN, KS_MAX = (0.0, 0.08, 0.0), (1.0, 1.0, 1.0)


NRM_MIN, NRM_MAX = (-1.0, -1.0, 0.0), (1.0, 1.0, 1.0)


def _ranges(mins: Sequence[float], maxs: Sequence[float], device) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.tensor(mins, dtype=torch.float32, device=device)
    hi = torch.tensor(maxs, dtype=torch.float32, device=device)
    return lo, hi


def _unit_normal(n: torch.Tensor) -> torch.Tensor:
    """Renormalise a tangent-space normal with z >= 0 (a degenerate vector becomes +z)."""
    return F.normalize(torch.cat([n[..., :2], n[..., 2:].clamp_min(1e-6)], -1), dim=-1)


def _masked_indices(mask: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
    """Flat indices of ``mask > 0``: ``pixels`` when the caller already has them, else found here (a host sync)."""
    return pixels if pixels is not None else torch.nonzero(mask.reshape(-1) > 0).squeeze(1)


class MaterialField(nn.Module):
    """Hash-grid + MLP material over world space: pos [...,3] -> dict(kd, ks, normal) [...,3] each.

    Positions are normalised to the ``aabb`` (lo, hi) given at construction and clamped to [0,1]. ``device``
    defaults to CUDA when available (like :func:`make_encoder`). The MLP is
    nvdiffrec's (32 -> 32 -> 32 -> 9, ReLU, no biases, Kaiming-uniform init); outputs go through a sigmoid into
    per-channel [min, max] ranges. ``normal`` is renormalised (z >= 0) like :class:`TexturedMaterial`'s.
    """

    def __init__(self, aabb: torch.Tensor | Sequence[Sequence[float]], encoder: str | nn.Module = "auto",
                 hidden: int = 32, n_hidden_layers: int = 2,
                 kd_min: Sequence[float] = KD_MIN, kd_max: Sequence[float] = KD_MAX,
                 ks_min: Sequence[float] = KS_MIN, ks_max: Sequence[float] = KS_MAX,
                 nrm_min: Sequence[float] = NRM_MIN, nrm_max: Sequence[float] = NRM_MAX,
                 device: torch.device | str | None = None, **encoder_kwargs):
        super().__init__()
        device = _default_device(device)
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        if not isinstance(encoder, nn.Module):
            encoder = make_encoder(encoder, device=device, **encoder_kwargs)
        self.encoder = encoder
        dims = [self.encoder.n_output_dims] + [hidden] * n_hidden_layers + [9]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            lin = nn.Linear(dims[i], dims[i + 1], bias=False)
            nn.init.kaiming_uniform_(lin.weight, nonlinearity="relu")
            layers += [lin, nn.ReLU()] if i < len(dims) - 2 else [lin]
        self.mlp = nn.Sequential(*layers)
        lo, hi = _ranges((*kd_min, *ks_min, *nrm_min), (*kd_max, *ks_max, *nrm_max), None)
        self.register_buffer("out_min", lo)
        self.register_buffer("out_max", hi)
        self.register_buffer("aabb", aabb)
        self.to(device)

    def normalized(self, pos: torch.Tensor) -> torch.Tensor:
        """World positions -> [0,1]^3 in the field's AABB (clamped)."""
        lo, hi = self.aabb[0], self.aabb[1]
        return ((pos - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)

    def material(self, gb, rasterizer) -> dict[str, torch.Tensor]:
        """The field as a renderer material (``material(gbuffer, rasterizer)``): looked up at the covered pixels."""
        return self(gb.pos, gb.mask[..., 0], pixels=gb.pixels())

    def forward(self, pos: torch.Tensor, mask: torch.Tensor | None = None, pixels: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """Material at ``pos`` [...,3]. With ``mask`` [...] only points where mask > 0 are evaluated (zeros
        elsewhere): less hash-grid work for sparse G-buffers, at the cost of one host sync (boolean indexing),
        saved when their flat indices ``pixels`` are passed too (:meth:`GBuffer.pixels`)."""
        if mask is not None:
            idx = _masked_indices(mask, pixels)
            inner = self(pos.reshape(-1, 3).index_select(0, idx))
            n = mask.numel()
            return {k: torch.zeros(n, v.shape[-1], device=v.device, dtype=v.dtype).index_copy(0, idx, v)
                    .view(*pos.shape[:-1], v.shape[-1]) for k, v in inner.items()}
        lead = pos.shape[:-1]
        feat = self.encoder(self.normalized(pos.reshape(-1, 3)))
        out = torch.sigmoid(self.mlp(feat)) * (self.out_max - self.out_min) + self.out_min
        out = out.view(*lead, 9)
        return {"kd": out[..., 0:3], "ks": out[..., 3:6], "normal": _unit_normal(out[..., 6:9])}

    def kd_smoothness(self, pos: torch.Tensor, mask: torch.Tensor | None = None, sigma: float = 0.01,
                      kd: torch.Tensor | None = None, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """nvdiffrec's albedo regulariser ``mean(mean_c |kd(x + e) - kd(x)| * mask)``, e ~ N(0, sigma) in world
        units, the mean taken over all of ``pos``'s points. Only points with mask > 0 are evaluated (one host
        sync unless their flat indices ``pixels`` are given); pass ``kd`` = kd(pos) when already computed to
        halve the work."""
        if mask is not None:
            idx = _masked_indices(mask, pixels)   # index_select below: its backward is a fast index_add_
            pos, weight = pos.reshape(-1, 3).index_select(0, idx), mask.reshape(-1).index_select(0, idx)
            kd = kd.reshape(-1, kd.shape[-1]).index_select(0, idx) if kd is not None else None
            count = mask.numel()
        else:
            pos, weight, count = pos.reshape(-1, 3), None, pos[..., 0].numel()
            kd = kd.reshape(-1, kd.shape[-1]) if kd is not None else None
        jit = pos + torch.randn_like(pos) * sigma
        if kd is None:
            both = self(torch.cat([pos, jit], 0))["kd"]
            kd, kd_jit = both[: pos.shape[0]], both[pos.shape[0]:]
        else:
            kd_jit = self(jit)["kd"]
        grad = (kd_jit - kd).abs().mean(-1)
        if weight is not None:
            grad = grad * weight
        return grad.sum() / max(count, 1)


class Texture2D(nn.Module):
    """A trainable texture ``data`` [1,H,W,C] with per-channel [vmin, vmax] bounds (call :meth:`clamp_` after
    optimiser steps). Sampling goes through the rasteriser, which builds the mip pyramid."""

    def __init__(self, data: torch.Tensor, vmin: Sequence[float] | None = None, vmax: Sequence[float] | None = None):
        super().__init__()
        data = torch.as_tensor(data, dtype=torch.float32)
        if data.ndim == 2:
            data = data[..., None]
        if data.ndim == 3:
            data = data[None]
        if data.ndim != 4 or data.shape[0] != 1:
            raise ValueError(f"texture data must be [H,W,C] or [1,H,W,C], got {tuple(data.shape)}")
        c = data.shape[-1]
        vmin = [-math.inf] * c if vmin is None else list(vmin)
        vmax = [math.inf] * c if vmax is None else list(vmax)
        if len(vmin) != c or len(vmax) != c:
            raise ValueError(f"vmin/vmax need {c} entries")
        self.data = nn.Parameter(data.contiguous())
        lo, hi = _ranges(vmin, vmax, data.device)
        self.register_buffer("vmin", lo)
        self.register_buffer("vmax", hi)

    @classmethod
    def from_array(cls, array: np.ndarray | torch.Tensor, vmin: Sequence[float] | None = None,
                   vmax: Sequence[float] | None = None, device: torch.device | str | None = None) -> "Texture2D":
        """From an [H,W,C] / [H,W] array (float; uint8 is scaled to [0,1])."""
        if isinstance(array, np.ndarray):
            scale = 1.0 / 255.0 if array.dtype == np.uint8 else 1.0
            data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) * scale)
        else:
            data = array.detach().float().clone()
        tex = cls(data, vmin, vmax)
        return tex.to(device) if device is not None else tex

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def channels(self) -> int:
        return int(self.data.shape[3])

    @torch.no_grad()
    def clamp_(self) -> "Texture2D":
        self.data.clamp_(self.vmin, self.vmax)
        return self

    def sample(self, rasterizer, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
               filter_mode: str = "auto") -> torch.Tensor:
        """Texture lookup at uv [B,H,W,2] (mip-mapped when ``uv_da`` is given) -> [B,H,W,C]."""
        return rasterizer.texture(self.data, uv, uv_da, filter_mode=filter_mode)

    def to_numpy(self) -> np.ndarray:
        """The texture as float32 [H,W,C]."""
        return self.data.detach()[0].float().cpu().numpy()


class TexturedMaterial(nn.Module):
    """kd / ks / normal :class:`Texture2D` maps sampled at rasterised UVs -> dict(kd, ks, normal)."""

    def __init__(self, kd: Texture2D, ks: Texture2D, normal: Texture2D):
        super().__init__()
        for name, tex in (("kd", kd), ("ks", ks), ("normal", normal)):
            if tex.channels != 3:
                raise ValueError(f"{name} texture needs 3 channels, got {tex.channels}")
        self.kd, self.ks, self.normal = kd, ks, normal

    @classmethod
    def from_arrays(cls, kd, ks, normal, kd_min: Sequence[float] = KD_MIN, kd_max: Sequence[float] = KD_MAX,
                    ks_min: Sequence[float] = KS_MIN, ks_max: Sequence[float] = KS_MAX,
                    nrm_min: Sequence[float] = NRM_MIN, nrm_max: Sequence[float] = NRM_MAX,
                    device: torch.device | str | None = None) -> "TexturedMaterial":
        """From [H,W,3] arrays (e.g. :func:`recon_kit.bake.bake_field` output), clamped to the ranges."""
        mat = cls(Texture2D.from_array(kd, kd_min, kd_max, device), Texture2D.from_array(ks, ks_min, ks_max, device),
                  Texture2D.from_array(normal, nrm_min, nrm_max, device))
        return mat.clamp_()

    @torch.no_grad()
    def clamp_(self) -> "TexturedMaterial":
        """Clamp every map to its range and renormalise the normal map in place (nvdiffrec's version of this
        was a no-op)."""
        self.kd.clamp_()
        self.ks.clamp_()
        self.normal.clamp_()
        self.normal.data.copy_(_unit_normal(self.normal.data))
        return self

    def material(self, gb, rasterizer) -> dict[str, torch.Tensor]:
        """The textures as a renderer material (``material(gbuffer, rasterizer)``): mip-mapped UV lookups."""
        return self(rasterizer, gb.uv, gb.uv_da)

    def forward(self, rasterizer, uv: torch.Tensor, uv_da: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"kd": self.kd.sample(rasterizer, uv, uv_da), "ks": self.ks.sample(rasterizer, uv, uv_da),
                "normal": _unit_normal(self.normal.sample(rasterizer, uv, uv_da))}

    def kd_smoothness(self, rasterizer, uv: torch.Tensor, mask: torch.Tensor | None = None, sigma: float = 0.005,
                      uv_da: torch.Tensor | None = None, kd: torch.Tensor | None = None) -> torch.Tensor:
        """Albedo regulariser in UV space: mean_c |kd(uv + e) - kd(uv)| (x ``mask`` [B,H,W]), e ~ N(0, sigma)."""
        if kd is None:
            kd = self.kd.sample(rasterizer, uv, uv_da)
        kd_jit = self.kd.sample(rasterizer, uv + torch.randn_like(uv) * sigma, uv_da)
        grad = (kd_jit - kd).abs().mean(-1)
        return (grad * mask).mean() if mask is not None else grad.mean()

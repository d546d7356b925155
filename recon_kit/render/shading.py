"""Split-sum shading: the FG lookup table, prefiltered-light lookups (``ShadingMaps``), normal perturbation."""

from __future__ import annotations


import functools
from dataclasses import dataclass

import numpy as np
import torch

from recon_kit.render.cubemap import _bilinear_taps
from recon_kit.render.cubemap import _dot
from recon_kit.render.cubemap import _gather_weighted
from recon_kit.render.cubemap import _safe_normalize
from recon_kit.render.cubemap import dir_to_face_uv


MIN_ROUGHNESS = 0.08


MAX_ROUGHNESS = 0.5


def _radical_inverse(n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.uint32)
    i = ((i << 16) | (i >> 16)).astype(np.uint32)
    i = (((i & 0x55555555) << 1) | ((i & 0xAAAAAAAA) >> 1)).astype(np.uint32)
    i = (((i & 0x33333333) << 2) | ((i & 0xCCCCCCCC) >> 2)).astype(np.uint32)
    i = (((i & 0x0F0F0F0F) << 4) | ((i & 0xF0F0F0F0) >> 4)).astype(np.uint32)
    i = (((i & 0x00FF00FF) << 8) | ((i & 0xFF00FF00) >> 8)).astype(np.uint32)
    return i.astype(np.float64) / 2.0 ** 32


def _fg_lut_numpy(res: int, samples: int) -> np.ndarray:
    """One roughness row at a time: per-sample half vectors ``[S]`` against all ``n . v`` ``[V, S]``.

    numpy (single-threaded, float32) because these many small ops are slower in multi-threaded torch on a
    busy CPU; about 0.2 s at the default size. Values below 1e-20 are flushed to zero: denormal floats
    would slow every shading op that touches them by orders of magnitude.
    """
    xi1 = ((np.arange(samples) + 0.5) / samples).astype(np.float32)
    cos_phi = np.cos(2 * np.pi * _radical_inverse(samples)).astype(np.float32)
    c = ((np.arange(res) + 0.5) / res).astype(np.float32)
    nh2 = (1.0 - xi1) / ((1.0 - xi1) + (c ** 4)[:, None] * xi1)
    nh_all = np.sqrt(nh2)
    shc_all = np.sqrt(np.clip(1.0 - nh2, 0.0, None)) * cos_phi
    nv = c[:, None]
    sv = np.sqrt(1.0 - nv * nv)
    out = np.empty((res, res, 2), dtype=np.float32)
    for i in range(res):
        a2 = np.float32(c[i]) ** 4
        nh, shc = nh_all[i], shc_all[i]
        vh = nv * nh + sv * shc
        nl = 2.0 * vh * nh - nv
        valid = (nl > 0) & (vh > 0)
        nl = np.maximum(nl, np.float32(1e-8))
        den = nv * np.sqrt(nl * nl * (1.0 - a2) + a2) + nl * np.sqrt(nv * nv * (1.0 - a2) + a2)
        g = np.where(valid, (2.0 / nh) * nl * vh / den, np.float32(0.0))
        fc = np.clip(1.0 - vh, 0.0, 1.0)
        fc = np.where(fc < 1e-6, np.float32(0.0), (fc * fc) ** 2 * fc)
        gf = (g * fc).sum(-1)
        out[i, :, 0] = (g.sum(-1) - gf) / samples
        out[i, :, 1] = gf / samples
    return np.where(out < 1e-20, np.float32(0.0), out)


@functools.lru_cache(maxsize=8)
def _fg_lut_cached(res: int, samples: int, device: str) -> torch.Tensor:
    return torch.from_numpy(_fg_lut_numpy(res, samples)).to(device)


def fg_lut(res: int = 256, samples: int = 512, device=None) -> torch.Tensor:
    """Split-sum DFG table ``[res (roughness), res (n . v), 2]`` of (scale, bias) to the Fresnel F0.

    ``lut[i, j]`` holds ``roughness = (i + 0.5) / res``, ``n . v = (j + 0.5) / res`` (alpha = roughness^2);
    GGX importance sampling with a Hammersley set, Smith height-correlated visibility and Schlick Fresnel.
    ``scale + bias <= 1`` up to the quasi-Monte-Carlo error at grazing ``n . v`` (at most ~1.02 for
    ``n . v < 0.02`` with 512 samples). Computed once per (res, samples, device) and cached; read-only.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _fg_lut_cached(res, samples, str(dev))


def lut_lookup(lut: torch.Tensor, nv: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Bilinear, edge-clamped lookup of :func:`fg_lut` at ``nv``, ``roughness`` ``[...]`` -> ``[..., 2]``."""
    res_r, res_v = lut.shape[0], lut.shape[1]
    x = (nv * res_v - 0.5).clamp(0.0, res_v - 1.0)
    y = (roughness * res_r - 0.5).clamp(0.0, res_r - 1.0)
    x0 = x.detach().floor().clamp(max=res_v - 2)
    y0 = y.detach().floor().clamp(max=res_r - 2)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    i = y0.long() * res_v + x0.long()
    flat = lut.reshape(-1, 2)
    return ((flat[i] * (1 - fx) + flat[i + 1] * fx) * (1 - fy)
            + (flat[i + res_v] * (1 - fx) + flat[i + res_v + 1] * fx) * fy)


def roughness_to_level(roughness: torch.Tensor, num_levels: int) -> torch.Tensor:
    """nvdiffrec's mip level ``g(r)`` for a chain of ``num_levels`` levels (fractional, in [0, M-1])."""
    M = num_levels
    lo = (roughness.clamp(MIN_ROUGHNESS, MAX_ROUGHNESS) - MIN_ROUGHNESS) / (MAX_ROUGHNESS - MIN_ROUGHNESS) * (M - 2)
    hi = (roughness.clamp(MAX_ROUGHNESS, 1.0) - MAX_ROUGHNESS) / (1.0 - MAX_ROUGHNESS) + (M - 2)
    return torch.where(roughness < MAX_ROUGHNESS, lo, hi)


@dataclass(frozen=True)
class ShadingMaps:
    """The pre-integrated light as plain tensors: all that shading reads (and what a compiled shader takes).

    ``spec_flat``: the padded specular chain, flat ``[sum 6 (R_i+2)^2, 3]``; ``sizes``/``offsets`` ``[M]``: each
    level's face size and start row; ``diff_flat``: the padded irradiance cube of face size ``diffuse_res``.
    """

    spec_flat: torch.Tensor
    diff_flat: torch.Tensor
    sizes: torch.Tensor
    offsets: torch.Tensor
    num_levels: int
    diffuse_res: int


def irradiance_at(maps: ShadingMaps, normal: torch.Tensor) -> torch.Tensor:
    """Cosine-weighted (normalised) irradiance along ``normal [..., 3]`` -> ``[..., 3]``."""
    face, uv = dir_to_face_uv(normal)
    idx, w = _bilinear_taps(face, uv, maps.diffuse_res)
    return _gather_weighted(maps.diff_flat, idx, w)


def prefiltered_at(maps: ShadingMaps, dirs: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """GGX-prefiltered radiance along ``dirs [..., 3]`` for ``roughness [..., 1] or [...]``: bilinear in the
    two chain levels around nvdiffrec's ``g(r)``, linearly blended."""
    if roughness.dim() == dirs.dim():
        roughness = roughness.squeeze(-1)
    M = maps.num_levels
    level = roughness_to_level(roughness.to(dirs.dtype), M)
    lo = level.detach().floor().clamp(0, M - 1)
    t = (level - lo).unsqueeze(-1)
    lo = lo.long()
    hi = (lo + 1).clamp(max=M - 1)
    face, uv = dir_to_face_uv(dirs)
    i_lo, w_lo = _bilinear_taps(face, uv, maps.sizes[lo], maps.offsets[lo])
    i_hi, w_hi = _bilinear_taps(face, uv, maps.sizes[hi], maps.offsets[hi])
    return _gather_weighted(maps.spec_flat, torch.cat((i_lo, i_hi), -1), torch.cat((w_lo * (1 - t), w_hi * t), -1))


def split_sum(maps: ShadingMaps, lut: torch.Tensor, gb_pos: torch.Tensor, gb_normal: torch.Tensor,
              kd: torch.Tensor, ks: torch.Tensor, campos: torch.Tensor, bsdf: str = "pbr") -> torch.Tensor:
    """nvdiffrec split-sum shading with pre-integrated ``maps`` -> linear RGB ``[..., 3]``.

    ``gb_pos``, ``gb_normal`` (world), ``kd`` (first 3 channels used) and ``ks = (occlusion, roughness,
    metallic)`` are ``[..., 3]``; ``campos`` broadcasts against them (``[B, 3]`` with ``[B, ..., 3]`` inputs is
    expanded). ``bsdf='pbr'``: diffuse ``kd (1 - m)`` times irradiance plus GGX specular
    ``prefiltered(R, r) * (F0 * FG.x + FG.y)`` with ``F0 = 0.04 (1 - m) + kd m``; ``bsdf='diffuse'``:
    ``kd`` times irradiance. Both are multiplied by ``1 - occlusion`` (nvdiffrec's inverted ORM occlusion).
    """
    if bsdf not in ("pbr", "diffuse"):
        raise ValueError(f"unknown bsdf {bsdf!r}; expected 'pbr' or 'diffuse'")
    kd = kd[..., 0:3]
    n = _safe_normalize(gb_normal)
    occlusion = ks[..., 0:1]
    if bsdf == "diffuse":
        return irradiance_at(maps, n) * kd * (1.0 - occlusion)
    rough, metal = ks[..., 1:2], ks[..., 2:3]
    diff_col = kd * (1.0 - metal)
    spec_col = 0.04 * (1.0 - metal) + kd * metal
    wo = _safe_normalize(_broadcast_campos(campos, gb_pos) - gb_pos)
    nwo = _dot(n, wo)
    refl = 2.0 * nwo * n - wo
    fg = lut_lookup(lut.to(gb_pos.dtype), nwo.clamp_min(1e-4).squeeze(-1), rough.squeeze(-1))
    spec = prefiltered_at(maps, refl, rough)
    diffuse = irradiance_at(maps, n)
    return (diffuse * diff_col + spec * (spec_col * fg[..., 0:1] + fg[..., 1:2])) * (1.0 - occlusion)


def perturb_normal(n_geom: torch.Tensor, n_smooth: torch.Tensor, tangent: torch.Tensor,
                   normal_map_tangent_space: torch.Tensor | None, view_dir: torch.Tensor,
                   two_sided: bool = True, opengl: bool = True, threshold: float = 0.1) -> torch.Tensor:
    """Shading normal from a tangent-space normal map (nvdiffrec ``prepare_shading_normal``).

    ``view_dir`` points from the surface to the camera. Two-sided: where ``n_geom . v < 0`` the geometric and
    smooth normals are flipped first. ``n = normalize(t p.x -/+ b p.y + n max(p.z, 0))`` with
    ``b = normalize(cross(t, n))`` (minus for OpenGL maps), then the bent-normal blend
    ``lerp(n_geom, n, clamp(v . n / threshold, 0, 1))`` avoids black back-facing shading normals.
    """
    v = _safe_normalize(view_dir)
    n_geom = _safe_normalize(n_geom)
    n_smooth = _safe_normalize(n_smooth)
    if two_sided:
        flip = _dot(n_geom, v) < 0
        n_geom = torch.where(flip, -n_geom, n_geom)
        n_smooth = torch.where(flip, -n_smooth, n_smooth)
    if normal_map_tangent_space is None:
        n_shade = n_smooth
    else:
        p = normal_map_tangent_space
        t = _safe_normalize(tangent)
        b = _safe_normalize(torch.cross(t, n_smooth, dim=-1))
        sign = -1.0 if opengl else 1.0
        n_shade = _safe_normalize(t * p[..., 0:1] + sign * b * p[..., 1:2] + n_smooth * p[..., 2:3].clamp_min(0.0))
    blend = (_dot(v, n_shade) / threshold).clamp(0.0, 1.0)
    return _safe_normalize(n_geom + (n_shade - n_geom) * blend)


def _broadcast_campos(campos: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    campos = torch.as_tensor(campos, dtype=pos.dtype, device=pos.device)
    if campos.dim() == 2 and pos.dim() > 2 and campos.shape[0] == pos.shape[0]:
        campos = campos.view(campos.shape[0], *([1] * (pos.dim() - 2)), 3)
    return campos

"""Learnable HDR environment light and split-sum image-based shading (nvdiffrec 'pbr'), in pure PyTorch.

Cubemap convention (OpenGL, the only one used in the kit; world is y-up):
  * a cube is a tensor ``[6, R, R, C]`` of linear HDR values, faces ordered ``+x, -x, +y, -y, +z, -z``;
  * texel ``[f, i, j]`` (row ``i``, column ``j``) has face coordinates ``u = 2 (j + 0.5) / R - 1`` and
    ``v = 2 (i + 0.5) / R - 1`` and looks along ``U_f * u + V_f * v + N_f`` (then normalised) with

    ====  =============  =============  ==========
    face  U_f (column)   V_f (row)      N_f
    ====  =============  =============  ==========
    +x    (0, 0, -1)     (0, -1, 0)     (1, 0, 0)
    -x    (0, 0, 1)      (0, -1, 0)     (-1, 0, 0)
    +y    (1, 0, 0)      (0, 0, 1)      (0, 1, 0)
    -y    (1, 0, 0)      (0, 0, -1)     (0, -1, 0)
    +z    (1, 0, 0)      (0, -1, 0)     (0, 0, 1)
    -z    (-1, 0, 0)     (0, -1, 0)     (0, 0, -1)
    ====  =============  =============  ==========

Lookups are bilinear on faces padded with a one-texel border copied from the neighbouring faces, so filtering
is continuous across cube edges (corner pads average the three texels meeting at the cube corner).

Split sum (as nvdiffrec, ``render/light.py``): the base cube is average-pooled into a chain
``R, R/2, ..., 16``; level ``i < M-1`` is GGX-prefiltered for roughness ``0.08 + i/(M-2) * 0.42`` and the last
for roughness 1 (alpha = roughness^2, N = V = R, lobe cut to nvdiffrec's 99 % cone); the diffuse irradiance
is the cosine convolution of the 16^2 level. The prefilters are precomputed sparse matrices (cached on the
module) applied every :meth:`EnvLight.build_mips`, so gradients reach every texel of ``EnvLight.base``.
Unlike nvdiffrec, wide lobes are filtered at a coarser resolution and upsampled (``EnvLight(lobe_texels=...)``)
to keep the matrices small.
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import read_hdr, write_hdr  # noqa: F401  (probe files; re-exported)

FACE_NAMES: tuple[str, ...] = ("+x", "-x", "+y", "-y", "+z", "-z")
#: Per face: (U_f, V_f, N_f) of the module docstring.
FACE_FRAMES: tuple[tuple[tuple[float, float, float], ...], ...] = (
    ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0), (1.0, 0.0, 0.0)),
    ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0), (-1.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
    ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
)
MIN_ROUGHNESS = 0.08
MAX_ROUGHNESS = 0.5


def _safe_normalize(v: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    return v * torch.rsqrt(torch.clamp((v * v).sum(-1, keepdim=True), min=eps))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------
# Cube geometry
# ----------------------------------------------------------------------------------------------------------

def face_uv_to_dir(face: torch.Tensor, uv: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Direction ``[..., 3]`` of face coordinates ``uv [..., 2]`` (in [-1, 1]) on faces ``face [...]`` (int)."""
    frames = torch.tensor(FACE_FRAMES, dtype=uv.dtype, device=uv.device)[face.long()]
    d = frames[..., 0, :] * uv[..., 0:1] + frames[..., 1, :] * uv[..., 1:2] + frames[..., 2, :]
    return _safe_normalize(d) if normalize else d


def dir_to_face_uv(dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Face index ``[...]`` (int64) and face coordinates ``uv [..., 2]`` in [-1, 1] of directions ``[..., 3]``.

    Differentiable in ``dirs`` (through ``uv``); the face is the major axis (ties go to x, then y).
    """
    x, y, z = dirs.unbind(-1)
    a = dirs.abs()
    ma, axis = a.max(-1)
    major = torch.where(axis == 0, x, torch.where(axis == 1, y, z))
    neg = major < 0
    sgn = torch.where(neg, -1.0, 1.0).to(dirs.dtype)
    ma = ma.clamp_min(1e-30)
    u = torch.where(axis == 0, -sgn * z, torch.where(axis == 1, x, sgn * x)) / ma
    v = torch.where(axis == 1, sgn * z, -y) / ma
    face = axis * 2 + neg.long()
    return face, torch.stack((u, v), -1).clamp(-1.0, 1.0)


def _texel_centres(res: int, device, dtype) -> torch.Tensor:
    return (torch.arange(res, device=device, dtype=dtype) + 0.5) * (2.0 / res) - 1.0


def texel_dirs(res: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit directions ``[6, R, R, 3]`` of all texel centres of a cube of resolution ``res``."""
    c = _texel_centres(res, device, dtype)
    v, u = torch.meshgrid(c, c, indexing="ij")
    uv = torch.stack((u, v), -1).expand(6, res, res, 2)
    face = torch.arange(6, device=device).view(6, 1, 1).expand(6, res, res)
    return face_uv_to_dir(face, uv)


def texel_solid_angles(res: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exact solid angle ``[6, R, R]`` of every texel (sums to 4 pi)."""
    e = torch.linspace(-1.0, 1.0, res + 1, dtype=torch.float64)
    y, x = torch.meshgrid(e, e, indexing="ij")
    area = torch.atan2(x * y, torch.sqrt(x * x + y * y + 1.0))
    sa = area[1:, 1:] - area[:-1, 1:] - area[1:, :-1] + area[:-1, :-1]
    return sa.abs().to(device=device, dtype=dtype).expand(6, res, res).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Seam-free bilinear cube lookup
# ----------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _pad_tables(res: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather tables turning a flat cube ``[6 R R, C]`` into a flat padded cube ``[6 (R+2)^2, C]``.

    Returns ``(src [6 (R+2)^2], corner_pos [24], corner_src [24, 3])``: every padded texel copies ``src``
    (border texels: the adjacent texel of the neighbouring face), then the 24 corner pads are overwritten with
    the mean of the three texels meeting at that cube corner.
    """
    P = res + 2
    eps = 1e-6
    p = torch.arange(P, dtype=torch.float64)
    c = (p - 0.5) * (2.0 / res) - 1.0
    c[0], c[-1] = -1.0 - eps, 1.0 + eps
    v, u = torch.meshgrid(c, c, indexing="ij")
    face = torch.arange(6).view(6, 1, 1).expand(6, P, P)
    d = face_uv_to_dir(face, torch.stack((u, v), -1).expand(6, P, P, 2), normalize=False)
    f2, uv2 = dir_to_face_uv(d)
    ij = ((uv2 + 1.0) * (0.5 * res)).floor().long().clamp(0, res - 1)
    src = (f2 * res + ij[..., 1]) * res + ij[..., 0]
    corners = [(0, 0, 0, 1, 1, 0), (0, P - 1, 0, P - 2, 1, P - 1), (P - 1, 0, P - 2, 0, P - 1, 1),
               (P - 1, P - 1, P - 2, P - 1, P - 1, P - 2)]
    pos, csrc = [], []
    for f in range(6):
        for (ci, cj, ai, aj, bi, bj) in corners:
            own_i, own_j = min(max(ci, 1), P - 2), min(max(cj, 1), P - 2)
            pos.append((f * P + ci) * P + cj)
            csrc.append([src[f, own_i, own_j], src[f, ai, aj], src[f, bi, bj]])
    dev = torch.device(device)
    return (src.reshape(-1).to(dev), torch.tensor(pos, device=dev),
            torch.tensor(csrc, device=dev, dtype=torch.long))


def pad_cube(cube: torch.Tensor) -> torch.Tensor:
    """Padded cube ``[6, R+2, R+2, C]`` with one-texel borders from the neighbouring faces (differentiable)."""
    R, C = cube.shape[1], cube.shape[-1]
    src, corner_pos, corner_src = _pad_tables(R, str(cube.device))
    flat = cube.reshape(-1, C)
    padded = flat.index_select(0, src)
    corner = flat.index_select(0, corner_src.reshape(-1)).view(-1, 3, C).mean(1)
    return padded.index_copy(0, corner_pos, corner).view(6, R + 2, R + 2, C)


def _bilinear_taps(face: torch.Tensor, uv: torch.Tensor, res, offset=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``[..., 4]`` and weights ``[..., 4]`` of a bilinear lookup in padded faces of size ``res``.

    ``res`` and ``offset`` (start of the padded cube in a flat atlas) may be ints or per-lookup int tensors.
    """
    P = res + 2
    x = (uv[..., 0] + 1.0) * (0.5 * res) + 0.5
    y = (uv[..., 1] + 1.0) * (0.5 * res) + 0.5
    x0 = torch.minimum(x.detach().floor(), torch.as_tensor(res, device=x.device, dtype=x.dtype))
    y0 = torch.minimum(y.detach().floor(), torch.as_tensor(res, device=y.device, dtype=y.dtype))
    fx, fy = x - x0, y - y0
    i00 = offset + (face * P + y0.long()) * P + x0.long()
    if isinstance(P, torch.Tensor):
        idx = torch.stack((i00, i00 + 1, i00 + P, i00 + P + 1), -1)
    else:
        idx = i00.unsqueeze(-1) + torch.tensor([0, 1, P, P + 1], device=i00.device)
    w = torch.stack(((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy), -1)
    return idx, w


def _gather_weighted(flat: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_k w[..., k] * flat[idx[..., k]]`` -> ``[..., C]``."""
    k, C = idx.shape[-1], flat.shape[-1]
    vals = flat.index_select(0, idx.reshape(-1)).view(-1, k, C)
    return (vals * w.reshape(-1, k, 1)).sum(1).view(*idx.shape[:-1], C)


def cube_lookup(cube: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Bilinear, seam-free lookup of ``cube [6, R, R, C]`` along ``dirs [..., 3]`` (need not be unit) -> ``[..., C]``.

    Differentiable w.r.t. the cube and the directions.
    """
    R, C = cube.shape[1], cube.shape[-1]
    face, uv = dir_to_face_uv(dirs.to(cube.dtype))
    idx, w = _bilinear_taps(face, uv, R)
    return _gather_weighted(pad_cube(cube).reshape(-1, C), idx, w)


# ----------------------------------------------------------------------------------------------------------
# Prefilter matrices
# ----------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def ggx_cutoff_cos(roughness: float, cutoff: float = 0.99, samples: int = 1_000_000) -> float:
    """Cosine of nvdiffrec's lobe cone: the angle where the NDF, accumulated over uniformly spaced
    ``theta in [0, pi/2]``, reaches ``cutoff``; the cone is then applied to ``n . l`` (as nvdiffrec does)."""
    theta = np.linspace(0.0, math.pi / 2, samples)
    c = np.cos(theta)
    a2 = roughness ** 4
    d = (c * a2 - c) * c + 1.0
    cdf = np.cumsum(a2 / (d * d * math.pi))
    return float(c[int(np.argmax(cdf >= cdf[-1] * cutoff))])


def _tiles(res: int, tile: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Texel directions ``[T, t*t, 3]`` and flat texel indices ``[T, t*t]`` grouped in ``t x t`` tiles."""
    t = min(tile, res)
    n = res // t
    d = texel_dirs(res, device).view(6, n, t, n, t, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, t * t, 3)
    i = torch.arange(6 * res * res, device=device).view(6, n, t, n, t).permute(0, 1, 3, 2, 4).reshape(-1, t * t)
    return d, i


def _bounding_cones(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = _safe_normalize(d.mean(1))
    r = torch.acos(torch.einsum("tkc,tc->tk", d, c).clamp(-1.0, 1.0)).amax(1)
    return c, r


def _cone_pairs_face0(res: int, cos_cut: float, device, chunk: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """All (target texel on face +x, source texel) with ``n . l >= cos_cut``, via tile-pair culling."""
    theta = math.acos(max(-1.0, min(1.0, cos_cut)))
    tile = 4 if theta * res < 12 else 8
    ds, is_ = _tiles(res, tile, device)
    cs, rs = _bounding_cones(ds)
    n0 = ds.shape[0] // 6
    dt, it, ct, rt = ds[:n0], is_[:n0], cs[:n0], rs[:n0]
    rows_per = max(1, chunk // ds.shape[0])
    pairs = []
    for s in range(0, n0, rows_per):
        ang = torch.acos((ct[s:s + rows_per] @ cs.T).clamp(-1.0, 1.0))
        p = (ang <= theta + rt[s:s + rows_per, None] + rs[None, :] + 1e-6).nonzero()
        p[:, 0] += s
        pairs.append(p)
    pairs = torch.cat(pairs)
    k = dt.shape[1]
    per = max(1, chunk // (k * k))
    tgt, src = [], []
    for s in range(0, pairs.shape[0], per):
        pt, ps = pairs[s:s + per, 0], pairs[s:s + per, 1]
        hit = (torch.bmm(dt[pt], ds[ps].transpose(1, 2)).view(-1) >= cos_cut).nonzero().squeeze(-1)
        p, ab = hit // (k * k), hit % (k * k)
        tgt.append(it[pt[p], ab // k])
        src.append(is_[ps[p], ab % k])
    return torch.cat(tgt), torch.cat(src)


def _face_permutations(res: int, device) -> torch.Tensor:
    """``[6, 6 R^2]`` texel permutations: the cube symmetry taking face +x's frame to face ``f``'s frame.

    Each symmetry is a signed axis permutation, so it maps every face grid onto another with at most a
    transpose and flips; computed per (symmetry, face) on integer index grids.
    """
    frames = torch.tensor(FACE_FRAMES, dtype=torch.float64)
    i, j = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    out = torch.empty(6, 6, res, res, dtype=torch.long)
    for f in range(6):
        q = frames[f].T @ frames[0]
        for g in range(6):
            ug, vg, ng = (q @ frames[g].T).T
            face_t, _ = dir_to_face_uv(ng)
            h = int(face_t)
            coeff = frames[h] @ torch.stack((ug, vg)).T
            a, b, c, d = coeff[0, 0], coeff[1, 0], coeff[0, 1], coeff[1, 1]
            src_u = j if a != 0 else i
            src_v = i if d != 0 else j
            jj = src_u if (a + c) > 0 else res - 1 - src_u
            ii = src_v if (b + d) > 0 else res - 1 - src_v
            out[f, g] = (h * res + ii) * res + jj
    return out.reshape(6, -1).to(device)


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """CSR (int32 indices) from unsorted COO triplets; two stable int32 sorts order them by (row, col)."""
    order = torch.sort(cols.int(), stable=True).indices
    order = order[torch.sort(rows.int()[order], stable=True).indices]
    rows, cols, vals = rows[order], cols[order], vals[order]
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow.to(torch.int32), cols.to(torch.int32), vals, shape,
                                       check_invariants=False)


@dataclass
class SymmetricFilter:
    """A prefilter ``out = diag(1 / z) K diag(omega) src`` on one cube resolution, ``K`` symmetric (CSR).

    ``K`` holds the lobe kernel between texel directions, ``omega`` the source solid angles and ``z = K omega``
    the per-texel normalisation. Symmetry makes the backward ``omega * K (g / z)`` use the same matrix, so no
    transpose is stored.
    """

    K: torch.Tensor
    omega: torch.Tensor
    inv_z: torch.Tensor

    @property
    def nnz(self) -> int:
        return int(self.K.values().numel())

    @property
    def nbytes(self) -> int:
        K = self.K
        return sum(t.numel() * t.element_size() for t in (K.crow_indices(), K.col_indices(), K.values()))


def ggx_filter(res: int, roughness: float, cutoff: float = 0.99, device=None) -> SymmetricFilter:
    """Sparse GGX prefilter of a ``res`` cube (N = V = R, alpha = roughness^2).

    Weight of source texel ``l`` for output direction ``n``: ``D(h) (n . l) solid_angle(l)``, ``h`` the half
    vector, inside nvdiffrec's cone ``n . l >= cos_cut`` (:func:`ggx_cutoff_cos`), normalised per output texel.
    Pairs are found for face +x only and mapped to the other faces by the cube's symmetries.
    """
    cos_cut = ggx_cutoff_cos(roughness, cutoff)
    tgt0, src0 = _cone_pairs_face0(res, cos_cut - 1e-5, device)
    dirs = texel_dirs(res, device, torch.float64).reshape(-1, 3)
    nl = (dirs[tgt0] * dirs[src0]).sum(-1)
    keep = nl >= cos_cut
    tgt0, src0, nl = tgt0[keep], src0[keep], nl[keep]
    a2 = roughness ** 4
    d = (a2 - 1.0) * (1.0 + nl) * 0.5 + 1.0
    k0 = (a2 / (math.pi * d * d) * nl).float()
    perm = _face_permutations(res, device)
    tgt, src, k = perm[:, tgt0].reshape(-1), perm[:, src0].reshape(-1), k0.repeat(6)
    omega = texel_solid_angles(res, device).reshape(-1)
    z = torch.zeros_like(omega).index_add_(0, tgt, k * omega[src])
    n = 6 * res * res
    return SymmetricFilter(_csr(tgt, src, k, (n, n)), omega.unsqueeze(-1), (1.0 / z.clamp_min(1e-30)).unsqueeze(-1))


def diffuse_filter(res_out: int, res_src: int, device=None) -> torch.Tensor:
    """Dense cosine-convolution matrix ``[6 res_out^2, 6 res_src^2]``: ``max(n . l, 0) solid_angle(l)``,
    normalised per row so that a constant environment maps to itself."""
    n = texel_dirs(res_out, device).reshape(-1, 3)
    l = texel_dirs(res_src, device).reshape(-1, 3)
    w = (n @ l.T).clamp_min(0.0) * texel_solid_angles(res_src, device).reshape(1, -1)
    return w / w.sum(1, keepdim=True)


class _SymmetricFilterFn(torch.autograd.Function):
    """``diag(inv_z) K diag(omega) x`` for a constant symmetric CSR ``K`` (autograd's sparse backward is slow)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, K: torch.Tensor, omega: torch.Tensor, inv_z: torch.Tensor) -> torch.Tensor:
        ctx.K, ctx.omega, ctx.inv_z = K, omega, inv_z
        return (K @ (x * omega)) * inv_z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (ctx.K @ (grad * ctx.inv_z)) * ctx.omega, None, None, None


def apply_filter(filt: SymmetricFilter, cube: torch.Tensor) -> torch.Tensor:
    """Apply a :class:`SymmetricFilter` to ``cube [6, R, R, C]`` (same resolution out)."""
    C = cube.shape[-1]
    out = _SymmetricFilterFn.apply(cube.reshape(-1, C).contiguous(), filt.K, filt.omega, filt.inv_z)
    return out.view(cube.shape)


def downsample_cube(cube: torch.Tensor, res: int) -> torch.Tensor:
    """Box-filter (average-pool) ``cube [6, R, R, C]`` to ``res`` (``R`` a multiple of ``res``)."""
    R = cube.shape[1]
    if R == res:
        return cube
    if R % res:
        raise ValueError(f"cannot average-pool a {R}^2 cube to {res}^2")
    k = R // res
    return cube.reshape(6, res, k, res, k, cube.shape[-1]).mean((2, 4))


# ----------------------------------------------------------------------------------------------------------
# Split-sum DFG LUT
# ----------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------
# The learnable light
# ----------------------------------------------------------------------------------------------------------

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


@dataclass
class MipLevel:
    """One specular level: its resolution, the resolution its GGX filter runs at, and its roughness."""

    res: int
    filter_res: int
    roughness: float


class EnvLight(nn.Module):
    """Learnable HDR environment cubemap ``base [6, R, R, 3]`` with differentiable split-sum pre-integration.

    Shading (re)builds the pre-integrated maps on demand: when ``base`` changed in place (e.g.
    ``optimizer.step()``, :meth:`clamp_`) and after a backward pass consumed the previous build's graph, so
    one build serves every shade call of an iteration and gradient accumulation works.

    ``lobe_texels`` bounds the prefilter cost. A level whose lobe cone (radius ``theta``) spans more than
    ``lobe_texels`` texels is filtered at the coarsest power-of-two resolution (>= 8) where it still spans that
    many, from the base average-pooled to that resolution, and the result is bilinearly upsampled (seam-free)
    to the level's resolution; the prefiltered radiance is smooth at that scale, so the loss is small (about
    1e-3 mean, 3e-2 max relative error against full-resolution filtering at ``lobe_texels=3``).
    ``lobe_texels=None`` filters every level at its own resolution, as nvdiffrec (4x more non-zeros).
    ``max_filter_res`` caps every filter resolution (the r = 0.08 level of a 512^2 base has ~16x the 26 M
    non-zeros of a 256^2 one); levels above it are upsampled the same way.
    """

    def __init__(self, res: int = 256, init: float | torch.Tensor = 0.5, min_res: int = 16,
                 diffuse_res: int = 16, cutoff: float = 0.99, lobe_texels: float | None = 3.0,
                 max_filter_res: int = 256, device=None) -> None:
        super().__init__()
        if res < 2 * min_res or res & (res - 1) or min_res & (min_res - 1) or diffuse_res > res:
            raise ValueError(f"EnvLight needs power-of-two res >= 2 * min_res (and >= diffuse_res), "
                             f"got res={res}, min_res={min_res}, diffuse_res={diffuse_res}")
        if isinstance(init, torch.Tensor):
            if init.shape != (6, res, res, 3):
                raise ValueError(f"init cube must be [6, {res}, {res}, 3], got {tuple(init.shape)}")
            base = init.detach().clone().float()
        else:
            base = torch.full((6, res, res, 3), float(init))
        self.base = nn.Parameter(base.to(device) if device is not None else base)
        self.min_res, self.diffuse_res, self.cutoff, self.lobe_texels = min_res, diffuse_res, cutoff, lobe_texels
        self.max_filter_res = max_filter_res
        self.levels = self._plan_levels(res)
        self._filters: dict[tuple, object] = {}
        self._built_key: tuple | None = None
        self.diffuse: torch.Tensor | None = None
        self.specular: list[torch.Tensor] = []
        self._spec_flat: torch.Tensor | None = None
        self._diff_flat: torch.Tensor | None = None

    @classmethod
    def from_latlong(cls, img, res: int = 256, **kw) -> "EnvLight":
        """Light initialised from a lat-long HDR image ``[H, W, 3]`` (numpy or torch, linear)."""
        return cls(res, init=latlong_to_cube(img, res), **kw)

    @property
    def res(self) -> int:
        return int(self.base.shape[1])

    def _plan_levels(self, res: int) -> list[MipLevel]:
        sizes = [res]
        while sizes[-1] > self.min_res:
            sizes.append(sizes[-1] // 2)
        M = len(sizes)
        levels = []
        for i, r_i in enumerate(sizes):
            rough = 1.0 if i == M - 1 else MIN_ROUGHNESS + (i / max(M - 2, 1)) * (MAX_ROUGHNESS - MIN_ROUGHNESS)
            fres = min(r_i, self.max_filter_res)
            if self.lobe_texels is not None:
                theta = math.acos(ggx_cutoff_cos(rough, self.cutoff))
                need = 2.0 * self.lobe_texels / max(theta, 1e-6)
                fres = min(fres, max(8, 2 ** math.ceil(math.log2(need))))
            levels.append(MipLevel(r_i, fres, rough))
        return levels

    def _cached(self, key: tuple, build):
        if key not in self._filters:
            self._filters[key] = build()
        return self._filters[key]

    def _spec_filter(self, lv: MipLevel, dev) -> SymmetricFilter:
        key = ("ggx", lv.filter_res, round(lv.roughness, 6), self.cutoff, str(dev))
        return self._cached(key, lambda: ggx_filter(lv.filter_res, lv.roughness, self.cutoff, dev))

    def _upsample_taps(self, src: int, dst: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
        def build():
            face, uv = dir_to_face_uv(texel_dirs(dst, dev))
            return _bilinear_taps(face, uv, src)
        return self._cached(("up", src, dst, str(dev)), build)

    def _level_tables(self, dev) -> tuple[torch.Tensor, torch.Tensor]:
        def build():
            sizes = torch.tensor([lv.res for lv in self.levels], device=dev)
            offsets = torch.tensor([0] + [6 * (lv.res + 2) ** 2 for lv in self.levels[:-1]], device=dev).cumsum(0)
            return sizes, offsets
        return self._cached(("levels", str(dev)), build)

    def filter_stats(self) -> dict[int, tuple[int, int]]:
        """``{level res: (nnz, bytes)}`` of the specular prefilter matrices (built if needed)."""
        dev = self.base.device
        return {lv.res: (f.nnz, f.nbytes) for lv in self.levels for f in [self._spec_filter(lv, dev)]}

    def _pooled(self, cache: dict[int, torch.Tensor], res: int) -> torch.Tensor:
        if res not in cache:
            cache[res] = downsample_cube(self._pooled(cache, res * 2), res)
        return cache[res]

    def build_mips(self) -> None:
        """Pre-integrate ``base``: diffuse irradiance cube and GGX-prefiltered specular chain (differentiable)."""
        dev = self.base.device
        pooled = {self.res: self.base}
        self.specular = []
        for lv in self.levels:
            spec = apply_filter(self._spec_filter(lv, dev), self._pooled(pooled, lv.filter_res))
            if lv.filter_res < lv.res:
                idx, w = self._upsample_taps(lv.filter_res, lv.res, dev)
                spec = _gather_weighted(pad_cube(spec).reshape(-1, 3), idx, w)
            self.specular.append(spec)
        r = self.diffuse_res
        Wd = self._cached(("diffuse", r, str(dev)), lambda: diffuse_filter(r, r, dev))
        self.diffuse = (Wd @ self._pooled(pooled, r).reshape(-1, 3)).view(6, r, r, 3)
        self._diff_flat = pad_cube(self.diffuse).reshape(-1, 3)
        self._spec_flat = torch.cat([pad_cube(s).reshape(-1, 3) for s in self.specular])
        self._built_key = self._state_key()
        if self._spec_flat.requires_grad:
            ref = weakref.ref(self)

            def consumed(grad: torch.Tensor) -> None:
                light = ref()
                if light is not None:
                    light._built_key = None

            self._spec_flat.register_hook(consumed)
            self._diff_flat.register_hook(consumed)

    def __getstate__(self) -> dict:
        """Copies and pickles carry ``base`` only; caches and the pre-integrated maps are rebuilt on use."""
        state = self.__dict__.copy()
        state.update(_filters={}, _built_key=None, diffuse=None, specular=[], _spec_flat=None, _diff_flat=None)
        return state

    def _state_key(self) -> tuple:
        needs_graph = torch.is_grad_enabled() and self.base.requires_grad
        return (self.base._version, self.base.data_ptr(), str(self.base.device), needs_graph)

    def _ensure_built(self) -> None:
        key = self._state_key()
        if self._built_key is None or self._built_key[:3] != key[:3] or (key[3] and not self._built_key[3]):
            self.build_mips()

    def maps(self) -> ShadingMaps:
        """The pre-integrated maps (rebuilt first when ``base`` changed or a backward consumed the last build)."""
        self._ensure_built()
        sizes, offsets = self._level_tables(self.base.device)
        return ShadingMaps(self._spec_flat, self._diff_flat, sizes, offsets, len(self.levels), self.diffuse_res)

    def irradiance(self, normal: torch.Tensor) -> torch.Tensor:
        """Cosine-weighted (normalised) irradiance along ``normal [..., 3]`` -> ``[..., 3]``."""
        return irradiance_at(self.maps(), normal)

    def prefiltered(self, dirs: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
        """GGX-prefiltered radiance along ``dirs [..., 3]`` for ``roughness [..., 1] or [...]``."""
        return prefiltered_at(self.maps(), dirs, roughness)

    def shade(self, gb_pos: torch.Tensor, gb_normal: torch.Tensor, kd: torch.Tensor, ks: torch.Tensor,
              campos: torch.Tensor, bsdf: str = "pbr") -> torch.Tensor:
        """Shorthand for :func:`shade` with this light."""
        return shade(self, gb_pos, gb_normal, kd, ks, campos, bsdf=bsdf)

    def regularizer(self) -> torch.Tensor:
        """White-balance prior: ``mean |L - mean_rgb(L)|`` over base texels (nvdiffrec weight 0.005)."""
        return (self.base - self.base.mean(-1, keepdim=True)).abs().mean()

    @torch.no_grad()
    def clamp_(self, min: float = 0.0, max: float | None = None) -> "EnvLight":
        """Keep the radiance non-negative after an optimiser step (nvdiffrec clamps at 0)."""
        self.base.clamp_(min=min, max=max)
        return self

    def to_latlong(self, height: int | None = None) -> torch.Tensor:
        """The base cube as a lat-long image ``[H, 2H, 3]`` (default ``H = 2 R``)."""
        return cube_to_latlong(self.base.detach(), height or 2 * self.res)

    def extra_repr(self) -> str:
        chain = ", ".join(f"{lv.res}<-{lv.filter_res}@r{lv.roughness:.3f}" for lv in self.levels)
        return f"res={self.res}, levels=[{chain}], diffuse_res={self.diffuse_res}"


# ----------------------------------------------------------------------------------------------------------
# Shading
# ----------------------------------------------------------------------------------------------------------

def _broadcast_campos(campos: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    campos = torch.as_tensor(campos, dtype=pos.dtype, device=pos.device)
    if campos.dim() == 2 and pos.dim() > 2 and campos.shape[0] == pos.shape[0]:
        campos = campos.view(campos.shape[0], *([1] * (pos.dim() - 2)), 3)
    return campos


def shade(light: EnvLight, gb_pos: torch.Tensor, gb_normal: torch.Tensor, kd: torch.Tensor, ks: torch.Tensor,
          campos: torch.Tensor, bsdf: str = "pbr", lut: torch.Tensor | None = None) -> torch.Tensor:
    """nvdiffrec split-sum shading under ``light`` -> linear RGB ``[..., 3]`` (see :func:`split_sum`)."""
    if lut is None:
        lut = fg_lut(device=gb_pos.device)
    return split_sum(light.maps(), lut, gb_pos, gb_normal, kd, ks, campos, bsdf)


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


# ----------------------------------------------------------------------------------------------------------
# Lat-long conversion and probe files
# ----------------------------------------------------------------------------------------------------------

def latlong_dirs(height: int, width: int | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Unit directions ``[H, W, 3]`` of lat-long pixel centres (+Y up, u = atan2(x, -z)/2pi + 0.5, v = acos(y)/pi)."""
    width = width or 2 * height
    v = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    u = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    theta, phi = torch.meshgrid(v * math.pi, (u - 0.5) * 2 * math.pi, indexing="ij")
    st = torch.sin(theta)
    return torch.stack((st * torch.sin(phi), torch.cos(theta), -st * torch.cos(phi)), -1)


def _sample_latlong(img: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    H, W, C = img.shape
    d = _safe_normalize(dirs)
    u = torch.atan2(d[..., 0], -d[..., 2]) / (2 * math.pi) + 0.5
    v = torch.acos(d[..., 1].clamp(-1.0, 1.0)) / math.pi
    x = u * W - 0.5
    y = (v * H - 0.5).clamp(0.0, H - 1.0)
    x0, y0 = x.floor(), y.floor().clamp(max=max(H - 2, 0))
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    x0, y0 = x0.long() % W, y0.long()
    x1, y1 = (x0 + 1) % W, (y0 + 1).clamp(max=H - 1)
    flat = img.reshape(-1, C)
    return ((flat[y0 * W + x0] * (1 - fx) + flat[y0 * W + x1] * fx) * (1 - fy)
            + (flat[y1 * W + x0] * (1 - fx) + flat[y1 * W + x1] * fx) * fy)


def latlong_to_cube(img, res: int, supersample: int | None = None) -> torch.Tensor:
    """Resample a lat-long image ``[H, W, C]`` (numpy or torch) to a cube ``[6, res, res, C]``.

    Each texel averages ``supersample^2`` bilinear samples (default: enough to cover the lat-long pixels that
    fall in one texel, up to 8), so bright small sources are not aliased away.
    """
    img = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img).float()
    H, W = img.shape[:2]
    ss = supersample or int(min(8, max(1, math.ceil(W / (4 * res)))))
    c = (torch.arange(res * ss, dtype=torch.float32, device=img.device) + 0.5) * (2.0 / (res * ss)) - 1.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    face = torch.arange(6, device=img.device).view(6, 1, 1).expand(6, res * ss, res * ss)
    dirs = face_uv_to_dir(face, torch.stack((u, v), -1).expand(6, res * ss, res * ss, 2))
    out = _sample_latlong(img, dirs)
    if ss > 1:
        out = downsample_cube(out, res)
    return out.contiguous()


def cube_to_latlong(cube: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Resample ``cube [6, R, R, C]`` to a lat-long image ``[height, width (default 2 height), C]``."""
    return cube_lookup(cube, latlong_dirs(height, width, cube.device, cube.dtype))


def save_probe_hdr(path: str | Path, light: EnvLight, height: int | None = None) -> None:
    """Write the light's base cube as a lat-long Radiance ``.hdr`` probe (``[H, 2H]``, default ``H = 2 R``)."""
    write_hdr(path, light.to_latlong(height).cpu().numpy())


def load_probe(path: str | Path, res: int = 256, device=None, **kw) -> EnvLight:
    """An :class:`EnvLight` from a lat-long probe: ``.hdr`` read by the kit, other formats via imageio."""
    path = Path(path)
    if path.suffix.lower() in (".hdr", ".pic", ".rgbe"):
        img = read_hdr(path)
    else:
        import imageio.v3 as iio

        img = np.asarray(iio.imread(path), dtype=np.float32)[..., :3]
    return EnvLight.from_latlong(img, res=res, device=device, **kw)

"""Cube maps: face frames, texel directions and solid angles, seamless bilinear lookups, the GGX and diffuse
prefilter (symmetric sparse filters), lat-long conversion."""

from __future__ import annotations


import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch


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


def _safe_normalize(v: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    return v * torch.rsqrt(torch.clamp((v * v).sum(-1, keepdim=True), min=eps))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


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

    ``res`` and ``offset`` (start of the padded cube in a flat atlas) may be ints or per-lookup int tensors. No
    host-to-device copies (an int ``res`` stays a Python number), so eager shading does not stall the GPU here.
    """
    P = res + 2
    x = (uv[..., 0] + 1.0) * (0.5 * res) + 0.5
    y = (uv[..., 1] + 1.0) * (0.5 * res) + 0.5

    def cell(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().floor()
        return t.clamp_max(res) if isinstance(res, int) else torch.minimum(t, res.to(t.dtype))

    x0, y0 = cell(x), cell(y)
    fx, fy = x - x0, y - y0
    i00 = offset + (face * P + y0.long()) * P + x0.long()
    idx = torch.stack((i00, i00 + 1, i00 + P, i00 + P + 1), -1)
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

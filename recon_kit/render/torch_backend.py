"""Pure-PyTorch rasteriser with nvdiffrast's interface, for CPUs (CI, laptops) and GPU cross-checks.

Visibility is decided without gradients by binning: every triangle is expanded into the pixel centres of
its screen bounding box, candidates are tested with edge functions, and a per-pixel ``scatter_reduce(amin)``
over a (depth, triangle) key keeps the nearest one. No pixels x triangles matrix is ever formed.
Barycentrics of the winners are then recomputed differentiably from the clip-space vertices, so gradients
reach vertex positions exactly as with nvdiffrast. Triangles with a vertex behind the camera (w <= 0) are
dropped rather than clipped: fine for object-centric captures whose cameras sit well outside the object.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Candidate (triangle, pixel) pairs tested at once; bounds memory at high resolutions.
CHUNK = 1 << 22


def _screen(pos_clip: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-space x, y [V,2] and z/w [V] of clip-space vertices [V,4]."""
    w = pos_clip[:, 3:4]
    w = torch.where(w.abs() < 1e-12, torch.full_like(w, 1e-12), w)
    ndc = pos_clip[:, :3] / w
    xy = torch.stack([(ndc[:, 0] + 1) * (0.5 * width), (ndc[:, 1] + 1) * (0.5 * height)], -1)
    return xy, ndc[:, 2]


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Edge function: twice the signed area of (a, b, p), positive on the left of a->b."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _visible_triangles(xy: torch.Tensor, zw: torch.Tensor, w: torch.Tensor, tri: torch.Tensor,
                       width: int, height: int) -> torch.Tensor:
    """Index of the nearest triangle covering each pixel centre [H*W] (-1 = background). No gradients."""
    device = xy.device
    s = xy[tri]                                   # [F,3,2]
    z = zw[tri]                                   # [F,3]
    ok = (w[tri] > 0).all(1) & (z > -1).all(1) & (z < 1).all(1)
    area = _edge(s[:, 0], s[:, 1], s[:, 2])
    ok &= area.abs() > 1e-12
    lo = torch.ceil(s.amin(1) - 0.5).clamp_min(0)
    hi = torch.floor(s.amax(1) - 0.5)
    hi = torch.minimum(hi, torch.tensor([width - 1, height - 1], device=device, dtype=hi.dtype))
    bw = (hi[:, 0] - lo[:, 0] + 1).clamp_min(0)
    bh = (hi[:, 1] - lo[:, 1] + 1).clamp_min(0)
    counts = torch.where(ok, bw * bh, torch.zeros_like(bw)).long()
    ids = torch.nonzero(counts > 0).squeeze(1)
    best = torch.full((height * width,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
    if ids.numel() == 0:
        return torch.full((height * width,), -1, dtype=torch.int64, device=device)
    counts = counts[ids]
    ends = torch.cumsum(counts, 0)
    # Split the triangle list so that each chunk expands to at most CHUNK candidates.
    bounds = [0]
    total = int(ends[-1])
    if total > CHUNK:
        marks = torch.arange(CHUNK, total, CHUNK, device=device)
        bounds += torch.searchsorted(ends, marks, right=True).tolist()
    bounds.append(int(ids.numel()))
    inv_area = 1.0 / area
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        if c1 <= c0:
            continue
        t_ids, cnt = ids[c0:c1], counts[c0:c1]
        t = torch.repeat_interleave(t_ids, cnt)
        start = torch.cumsum(cnt, 0) - cnt
        off = torch.arange(int(cnt.sum()), device=device) - torch.repeat_interleave(start, cnt)
        bwt = bw[t].long()
        px = lo[t, 0].long() + off % bwt
        py = lo[t, 1].long() + off // bwt
        p = torch.stack([px, py], -1).to(xy.dtype) + 0.5
        st = s[t]
        ia = inv_area[t]
        l0 = _edge(st[:, 1], st[:, 2], p) * ia
        l1 = _edge(st[:, 2], st[:, 0], p) * ia
        l2 = 1.0 - l0 - l1
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        zt = z[t]
        depth = l0 * zt[:, 0] + l1 * zt[:, 1] + l2 * zt[:, 2]
        q = ((depth.clamp(-1, 1) + 1) * (0.5 * (2 ** 30 - 1))).long()
        key = (q << 32) | t
        pix = py * width + px
        best.scatter_reduce_(0, pix[inside], key[inside], reduce="amin")
    hit = best != torch.iinfo(torch.int64).max
    return torch.where(hit, best & 0xFFFFFFFF, torch.full_like(best, -1))


def _perspective_bary(s: torch.Tensor, w: torch.Tensor, zw: torch.Tensor, p: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perspective-correct (u, v) and z/w at points p [K,2] of triangles with screen verts s [K,3,2]."""
    area = _edge(s[:, 0], s[:, 1], s[:, 2])
    l0 = _edge(s[:, 1], s[:, 2], p) / area
    l1 = _edge(s[:, 2], s[:, 0], p) / area
    l2 = 1.0 - l0 - l1
    q0, q1, q2 = l0 / w[:, 0], l1 / w[:, 1], l2 / w[:, 2]
    qs = q0 + q1 + q2
    return q0 / qs, q1 / qs, l0 * zw[:, 0] + l1 * zw[:, 1] + l2 * zw[:, 2]


class TorchRasterizer:
    """nvdiffrast-compatible rasteriser in plain PyTorch (see :mod:`recon_kit.render.raster`)."""

    name = "torch"

    def rasterize(self, pos_clip: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = int(resolution[0]), int(resolution[1])
        if pos_clip.ndim == 2:
            pos_clip = pos_clip[None]
        tri = tri.long()
        rasts, dbs = [], []
        ys, xs = torch.meshgrid(torch.arange(height, device=pos_clip.device),
                                torch.arange(width, device=pos_clip.device), indexing="ij")
        centres = torch.stack([xs, ys], -1).reshape(-1, 2).to(pos_clip.dtype) + 0.5
        for b in range(pos_clip.shape[0]):
            pc = pos_clip[b]
            xy, zw = _screen(pc, width, height)
            with torch.no_grad():
                tid = _visible_triangles(xy.detach(), zw.detach(), pc[:, 3].detach(), tri, width, height)
            pix = torch.nonzero(tid >= 0).squeeze(1)
            t = tid[pix]
            corners = tri.index_select(0, t).reshape(-1)          # index_select: backward without a sort
            s = xy.index_select(0, corners).view(-1, 3, 2)
            wv = pc[:, 3].index_select(0, corners).view(-1, 3)
            zv = zw.index_select(0, corners).view(-1, 3)
            p = centres[pix]
            u, v, z = _perspective_bary(s, wv, zv, p)
            vals = torch.stack([u, v, z, (t + 1).to(u.dtype)], -1)
            rast = torch.zeros(height * width, 4, device=pc.device, dtype=pc.dtype).index_put((pix,), vals)
            with torch.no_grad():
                ux, vx, _ = _perspective_bary(s.detach(), wv.detach(), zv.detach(), p + torch.tensor([1.0, 0.0], device=p.device))
                uy, vy, _ = _perspective_bary(s.detach(), wv.detach(), zv.detach(), p + torch.tensor([0.0, 1.0], device=p.device))
                ud, vd = u.detach(), v.detach()
                db_vals = torch.stack([ux - ud, uy - ud, vx - vd, vy - vd], -1)
                db = torch.zeros(height * width, 4, device=pc.device, dtype=pc.dtype).index_put_((pix,), db_vals)
            rasts.append(rast.view(height, width, 4))
            dbs.append(db.view(height, width, 4))
        return torch.stack(rasts), torch.stack(dbs)

    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                    rast_db: torch.Tensor | None = None, diff_attrs=None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tri = tri.long()
        tid = rast[..., 3].long() - 1                   # [B,H,W]
        covered = (tid >= 0).unsqueeze(-1)
        safe = tid.clamp_min(0)
        corner = tri[safe]                              # [B,H,W,3]
        if attr.ndim == 2:
            a = attr.index_select(0, corner.reshape(-1)).view(*corner.shape, attr.shape[-1])   # [B,H,W,3,C]
        else:
            flat_idx = corner + (torch.arange(attr.shape[0], device=attr.device) * attr.shape[1]).view(-1, 1, 1, 1)
            a = attr.reshape(-1, attr.shape[-1]).index_select(0, flat_idx.reshape(-1)).view(*corner.shape, attr.shape[-1])
        u, v = rast[..., 0:1], rast[..., 1:2]
        a0, a1, a2 = a[..., 0, :], a[..., 1, :], a[..., 2, :]
        out = torch.where(covered, a2 + u * (a0 - a2) + v * (a1 - a2), torch.zeros_like(a0))
        if diff_attrs is None or rast_db is None:
            return out, None
        idx = list(range(attr.shape[-1])) if diff_attrs == "all" else list(diff_attrs)
        d0, d1 = (a0 - a2)[..., idx], (a1 - a2)[..., idx]
        dx = d0 * rast_db[..., 0:1] + d1 * rast_db[..., 2:3]
        dy = d0 * rast_db[..., 1:2] + d1 * rast_db[..., 3:4]
        da = torch.stack([dx, dy], -1).flatten(-2)
        return out, torch.where(covered, da, torch.zeros_like(da))

    def texture(self, tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
                filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level: int | None = None
                ) -> torch.Tensor:
        mip = uv_da is not None and filter_mode in ("auto", "linear-mipmap-linear")
        if filter_mode == "nearest":
            return _sample_nearest(tex, uv, boundary_mode)
        levels = mip_chain(tex, max_mip_level) if mip else [tex]
        if not mip:
            return _sample_bilinear_levels(levels, uv, torch.zeros(uv.shape[:-1], device=uv.device), boundary_mode)
        th, tw = tex.shape[1], tex.shape[2]
        dx = uv_da[..., 0::2] * torch.tensor([tw, th], device=uv.device, dtype=uv.dtype)
        dy = uv_da[..., 1::2] * torch.tensor([tw, th], device=uv.device, dtype=uv.dtype)
        rho2 = torch.maximum((dx ** 2).sum(-1), (dy ** 2).sum(-1)).clamp_min(1e-12)
        lod = (0.5 * torch.log2(rho2)).clamp(0, len(levels) - 1)
        return _sample_bilinear_levels(levels, uv, lod.detach(), boundary_mode)

    def antialias(self, color: torch.Tensor, rast: torch.Tensor, pos_clip: torch.Tensor,
                  tri: torch.Tensor) -> torch.Tensor:
        if pos_clip.ndim == 2:
            pos_clip = pos_clip[None].expand(color.shape[0], -1, -1)
        tri = tri.long()
        B, H, W, C = color.shape
        flat = color.reshape(B * H * W, C)
        delta = torch.zeros_like(flat)
        tid = (rast[..., 3].long() - 1)
        zw = rast[..., 2]
        for b in range(B):
            xy, _ = _screen(pos_clip[b], W, H)
            base = b * H * W
            for axis in (0, 1):
                _aa_pairs(flat, delta, tid[b], zw[b], xy, tri, axis, base, W)
        return (flat + delta).view(B, H, W, C)


def _aa_pairs(flat: torch.Tensor, delta: torch.Tensor, tid: torch.Tensor, zw: torch.Tensor, xy: torch.Tensor,
              tri: torch.Tensor, axis: int, base: int, width: int) -> None:
    """Blend pixel pairs along ``axis`` (0: horizontal, 1: vertical) that a silhouette edge separates."""
    if axis == 0:
        ta, tb = tid[:, :-1], tid[:, 1:]
        za, zb = zw[:, :-1], zw[:, 1:]
        ys, xs = torch.nonzero(ta != tb, as_tuple=True)
        pa = ys * width + xs
        pb = pa + 1
    else:
        ta, tb = tid[:-1, :], tid[1:, :]
        za, zb = zw[:-1, :], zw[1:, :]
        ys, xs = torch.nonzero(ta != tb, as_tuple=True)
        pa = ys * width + xs
        pb = pa + width
    if pa.numel() == 0:
        return
    t_a, t_b = ta[ys, xs], tb[ys, xs]
    # The front triangle is the non-background one, or the nearer of the two.
    a_front = (t_b < 0) | ((t_a >= 0) & (za[ys, xs] <= zb[ys, xs]))
    front = torch.where(a_front, t_a, t_b)
    p_front = torch.where(a_front, pa, pb)
    p_back = torch.where(a_front, pb, pa)
    other = torch.where(a_front, t_b, t_a)
    cf = tri[front]                                                  # [K,3]
    centre = lambda p: torch.stack([(p % width).to(xy.dtype), (p // width).to(xy.dtype)], -1) + 0.5  # noqa: E731
    c_front, c_back = centre(p_front), centre(p_back)
    with torch.no_grad():
        s = xy.detach()[cf]
        area = _edge(s[:, 0], s[:, 1], s[:, 2])
        lam = torch.stack([_edge(s[:, 1], s[:, 2], c_back), _edge(s[:, 2], s[:, 0], c_back),
                           _edge(s[:, 0], s[:, 1], c_back)], -1) / area[:, None]
        opp = lam.argmin(-1)                                         # edge opposite this vertex is crossed
        j = torch.gather(cf, 1, ((opp + 1) % 3)[:, None]).squeeze(1)
        k = torch.gather(cf, 1, ((opp + 2) % 3)[:, None]).squeeze(1)
        ot = tri[other.clamp_min(0)]
        shared = (other >= 0) & (ot == j[:, None]).any(1) & (ot == k[:, None]).any(1)
        keep = ~shared & (lam.gather(1, opp[:, None]).squeeze(1) < 0)
        # Each crossing is handled along one axis only, the one closer to the edge normal (else a diagonal
        # edge would be counted by horizontal and vertical pairs and its gradient doubled).
        d = s.gather(1, ((opp + 2) % 3)[:, None, None].expand(-1, 1, 2)).squeeze(1) - \
            s.gather(1, ((opp + 1) % 3)[:, None, None].expand(-1, 1, 2)).squeeze(1)
        keep &= (d[:, 1].abs() >= d[:, 0].abs()) if axis == 0 else (d[:, 0].abs() > d[:, 1].abs())
    if not bool(keep.any()):
        return
    j, k = j[keep], k[keep]
    c_front, c_back = c_front[keep], c_back[keep]
    i_front, i_back = base + p_front[keep], base + p_back[keep]
    sj, sk = xy.index_select(0, j), xy.index_select(0, k)
    ef, eb = _edge(sj, sk, c_front), _edge(sj, sk, c_back)
    denom = ef - eb
    denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    t = (ef / denom).clamp(0, 1)                                     # edge crossing, 0 at front centre
    col_f, col_b = flat.index_select(0, i_front), flat.index_select(0, i_back)
    w_back = (t - 0.5).clamp_min(0)[:, None]                         # front surface spills into back pixel
    w_front = (0.5 - t).clamp_min(0)[:, None]                        # background spills into front pixel
    delta.index_add_(0, i_back, (col_f - col_b) * w_back)
    delta.index_add_(0, i_front, (col_b - col_f) * w_front)


def mip_chain(tex: torch.Tensor, max_level: int | None = None) -> list[torch.Tensor]:
    """Mip pyramid [N,H,W,C] by 2x2 averaging (odd sizes are rounded up by edge padding), down to 1x1."""
    levels = [tex]
    while max(levels[-1].shape[1], levels[-1].shape[2]) > 1 and (max_level is None or len(levels) <= max_level):
        x = levels[-1].permute(0, 3, 1, 2)
        if x.shape[2] % 2 or x.shape[3] % 2:
            x = F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2), mode="replicate")
        levels.append(F.avg_pool2d(x, 2).permute(0, 2, 3, 1))
    return levels


def _wrap_index(i: torch.Tensor, n, boundary_mode: str) -> torch.Tensor:
    """Texel index ``i`` wrapped or clamped into ``[0, n)``; ``n`` may be an int or a per-pixel tensor."""
    if boundary_mode == "wrap":
        return torch.remainder(i, n)
    return torch.minimum(i.clamp_min(0), torch.as_tensor(n, device=i.device) - 1)


def _bilinear_flat(flat: torch.Tensor, total: int, n: int, uv: torch.Tensor, h, w, level_offset,
                   boundary_mode: str) -> torch.Tensor:
    """Bilinear lookup at uv [B,H,W,2] in images stored flat (``flat`` [n * total, C], image k of size h x w at
    ``k * total + level_offset``); ``h``, ``w`` and ``level_offset`` may be ints or per-pixel tensors."""
    c = flat.shape[-1]
    x = uv[..., 0] * w - 0.5
    y = uv[..., 1] * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    x0, y0 = x0.long(), y0.long()
    xs = (_wrap_index(x0, w, boundary_mode), _wrap_index(x0 + 1, w, boundary_mode))
    ys = (_wrap_index(y0, h, boundary_mode), _wrap_index(y0 + 1, h, boundary_mode))
    off = torch.zeros(uv.shape[:-1], dtype=torch.long, device=uv.device) + level_offset
    if n > 1:
        off = off + total * torch.arange(n, device=uv.device).view(-1, *([1] * (uv.ndim - 2)))

    def g(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        idx = off + yy * w + xx
        return flat.index_select(0, idx.reshape(-1)).view(*idx.shape, c)  # backward: index_add_, no sort

    top = g(ys[0], xs[0]) * (1 - fx) + g(ys[0], xs[1]) * fx
    bot = g(ys[1], xs[0]) * (1 - fx) + g(ys[1], xs[1]) * fx
    return top * (1 - fy) + bot * fy


def _bilinear_gather(tex: torch.Tensor, uv: torch.Tensor, boundary_mode: str) -> torch.Tensor:
    """Bilinear lookup of tex [N,h,w,C] (N = 1 or batch) at uv [B,H,W,2] by explicit gathers."""
    n, h, w, c = tex.shape
    return _bilinear_flat(tex.reshape(n * h * w, c), h * w, n, uv, h, w, 0, boundary_mode)


def _sample_bilinear_levels(levels: list[torch.Tensor], uv: torch.Tensor, lod: torch.Tensor,
                            boundary_mode: str) -> torch.Tensor:
    """Trilinear filtering: bilinear in the two mip levels around ``lod`` and a lerp between them.

    The pyramid is concatenated into one flat buffer, so each pixel gathers from exactly its two levels
    (8 taps) instead of every level in use being sampled over the whole image.
    """
    if len(levels) == 1:
        return _bilinear_gather(levels[0], uv, boundary_mode)
    n, c = levels[0].shape[0], levels[0].shape[-1]
    dev = uv.device
    flat = torch.cat([lv.reshape(n, -1, c) for lv in levels], 1)
    total = flat.shape[1]
    hs = torch.tensor([lv.shape[1] for lv in levels], device=dev)
    ws = torch.tensor([lv.shape[2] for lv in levels], device=dev)
    offsets = torch.cumsum(hs * ws, 0) - hs * ws
    lo = torch.floor(lod).long().clamp(0, len(levels) - 1)
    hi = (lo + 1).clamp_max(len(levels) - 1)
    frac = (lod - lo).unsqueeze(-1)
    flat = flat.reshape(n * total, c)
    a = _bilinear_flat(flat, total, n, uv, hs[lo], ws[lo], offsets[lo], boundary_mode)
    b = _bilinear_flat(flat, total, n, uv, hs[hi], ws[hi], offsets[hi], boundary_mode)
    return a + (b - a) * frac


def _sample_nearest(tex: torch.Tensor, uv: torch.Tensor, boundary_mode: str) -> torch.Tensor:
    n, h, w, c = tex.shape
    x = _wrap_index(torch.floor(uv[..., 0] * w).long(), w, boundary_mode)
    y = _wrap_index(torch.floor(uv[..., 1] * h).long(), h, boundary_mode)
    bsel = torch.zeros(uv.shape[:-1], dtype=torch.long, device=uv.device)
    if n > 1:
        bsel = bsel + torch.arange(n, device=uv.device).view(-1, *([1] * (uv.ndim - 2)))
    return tex.reshape(n * h * w, c)[bsel * h * w + y * w + x]


__all__ = ["TorchRasterizer", "mip_chain"]

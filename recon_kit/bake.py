"""UV unwrapping with xatlas and baking of a spatial material field into textures.

The UV layout is rasterised with clip positions ``(2u - 1, 2v - 1, 0, 1)``: rasteriser row 0 is NDC y = -1,
so texel row ``r`` holds v = (r + 0.5) / H, the texture convention of :mod:`recon_kit.mesh` (uv (0,0) = first
texel). Unlike nvdiffrec, texels outside the charts are filled from the nearest chart texel (a gutter), so
mip filtering at chart borders never mixes in values from empty texels (nvdiffrec issue #87).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from recon_kit.mesh import Mesh, vertex_normals, vertex_tangents

log = logging.getLogger(__name__)

#: ``field_fn(pos [M,3]) -> {name: [M,C]}``; it may also accept ``normal=`` and ``tangent=`` [M,3] (the smooth
#: vertex normal and the UV tangent of the unwrapped mesh at each texel) to re-express tangent-space outputs.
FieldFn = Callable[..., dict[str, torch.Tensor]]


def uv_unwrap(mesh: Mesh, max_faces: int | None = None, texture_res: int = 1024, padding: int = 2,
              chart_iterations: int = 0) -> Mesh:
    """Parametrise ``mesh`` with xatlas: same positions and triangles (``t_pos_idx = vmapping[indices]``), plus
    ``v_tex`` [T,2] in [0,1] and ``t_tex_idx`` [F,3] that split vertices along chart seams.

    ``texture_res``/``padding`` guide xatlas' packing (chart spacing in texels; xatlas picks the exact atlas
    size). xatlas' uv (0,0) is the first row of its atlas images, the kit's convention, so no flip is applied.
    Raises ValueError when the mesh has more than ``max_faces`` faces: xatlas time grows quickly with the face
    count, so decimate first (``recon_kit.mesh.simplify``; the trainer does, to ``geometry.unwrap_faces``).
    ``chart_iterations`` is xatlas' ``ChartOptions.max_iterations`` (its default 1 re-grows the charts once more:
    twice the time for ~25 % fewer charts on a pass-1 surface, docs/benchmarks.md §13).
    """
    import xatlas

    n_faces = mesh.num_faces
    if n_faces == 0:
        raise ValueError("cannot unwrap a mesh without faces")
    if max_faces is not None and n_faces > max_faces:
        raise ValueError(f"the mesh has {n_faces} faces, more than max_faces={max_faces}; decimate it first "
                         "(recon_kit.mesh.simplify) - xatlas gets slow on large meshes")
    t0 = time.perf_counter()
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.v_pos.detach().float().cpu().numpy(), mesh.t_pos_idx.cpu().numpy().astype(np.uint32))
    chart, pack = xatlas.ChartOptions(), xatlas.PackOptions()
    chart.max_iterations = int(chart_iterations)
    pack.resolution, pack.padding, pack.bilinear = int(texture_res), int(padding), True
    atlas.generate(chart_options=chart, pack_options=pack)
    vmapping, indices, uvs = atlas.get_mesh(0)
    if atlas.atlas_count != 1 or indices.shape[0] != n_faces:
        raise RuntimeError(f"xatlas returned {atlas.atlas_count} atlases and {indices.shape[0]} of {n_faces} faces")
    device = mesh.device
    t_pos_idx = torch.from_numpy(vmapping[indices].astype(np.int64)).to(device)
    v_tex = torch.from_numpy(np.ascontiguousarray(uvs, dtype=np.float32)).to(device)
    t_tex_idx = torch.from_numpy(indices.astype(np.int64)).to(device)
    log.info("uv_unwrap: %d faces -> %d charts, %d uv vertices, %.0f%% utilisation in %.2f s", n_faces,
             atlas.chart_count, v_tex.shape[0], 100 * atlas.utilization, time.perf_counter() - t0)
    return Mesh(mesh.v_pos, t_pos_idx, v_tex, t_tex_idx)


def _accepts_frame(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return ("normal" in params and "tangent" in params) or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def dilate(textures: dict[str, torch.Tensor], covered: torch.Tensor, gutter: int | None = 8) -> dict[str, torch.Tensor]:
    """Fill uncovered texels of [H,W,C] textures: within ``gutter`` texels of a chart (every texel when None)
    with the nearest covered texel's value (one exact Euclidean distance transform), beyond with the mean of
    the covered texels, so that no mip level ever averages in empty texels."""
    from scipy.ndimage import distance_transform_edt

    cov = covered.detach().cpu().numpy().astype(bool)
    if cov.all() or not cov.any():
        return dict(textures)
    dist, (rows, cols) = distance_transform_edt(~cov, return_indices=True)
    width = cov.shape[1]
    device = covered.device
    nearest = torch.from_numpy((rows * width + cols).reshape(-1)).to(device)
    far = None if gutter is None else torch.from_numpy(dist.reshape(-1) > gutter).to(device)
    flat_cov = covered.reshape(-1)
    out = {}
    for name, tex in textures.items():
        flat = tex.reshape(-1, tex.shape[-1])
        filled = flat[nearest]
        if far is not None:
            filled = torch.where(far[:, None], flat[flat_cov].mean(0, keepdim=True), filled)
        out[name] = filled.view(tex.shape)
    return out


@torch.no_grad()
def bake_field(rasterizer, mesh: Mesh, field_fn: FieldFn, texture_res: int | tuple[int, int] = 1024,
               gutter: int | None = 8, batch: int = 1 << 18, normalize: tuple[str, ...] = ("normal",)
               ) -> dict[str, torch.Tensor]:
    """Evaluate ``field_fn`` at the surface point of every texel covered by the UV layout of ``mesh``.

    Returns ``{name: [H,W,C]}`` float32 textures (one per output of ``field_fn``, channels named in
    ``normalize`` renormalised) with the gutter filled by :func:`dilate`, plus ``"mask"`` [H,W] bool, the
    texels the charts cover. The field is evaluated in chunks of ``batch`` points to bound memory; it also gets
    ``normal=`` and ``tangent=`` when its signature accepts them (see :data:`FieldFn`).
    """
    if not mesh.has_uv:
        raise ValueError("bake_field needs a mesh with UVs; run uv_unwrap first")
    height, width = (texture_res, texture_res) if isinstance(texture_res, int) else map(int, texture_res)
    uv = mesh.v_tex.float()
    pos_clip = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)
    rast, _ = rasterizer.rasterize(pos_clip[None].contiguous(), mesh.t_tex_idx.int(), (height, width))
    covered = rast[0, ..., 3] > 0
    tri = mesh.t_pos_idx.int()
    v_pos = mesh.v_pos.detach().float()
    attrs = [v_pos]
    with_frame = _accepts_frame(field_fn)
    if with_frame:
        v_nrm = vertex_normals(v_pos, mesh.t_pos_idx)
        attrs += [v_nrm, vertex_tangents(v_pos, mesh.t_pos_idx, uv, mesh.t_tex_idx, v_nrm)]
    gb, _ = rasterizer.interpolate(torch.cat(attrs, -1).contiguous(), rast, tri)
    points = gb[0][covered]                                                      # [M, 3 or 9]
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, points.shape[0], batch):
        p = points[start:start + batch]
        if with_frame:
            out = field_fn(p[:, 0:3], normal=F.normalize(p[:, 3:6], dim=-1, eps=1e-8),
                           tangent=F.normalize(p[:, 6:9], dim=-1, eps=1e-8))
        else:
            out = field_fn(p[:, 0:3])
        for name, val in out.items():
            chunks.setdefault(name, []).append(val.detach().float().reshape(p.shape[0], -1))
    textures = {}
    for name, parts in chunks.items():
        vals = torch.cat(parts)
        tex = torch.zeros(height, width, vals.shape[-1], device=vals.device)
        tex[covered.to(vals.device)] = vals
        textures[name] = tex
    textures = dilate(textures, covered, gutter)
    for name in normalize:
        if name in textures:
            textures[name] = F.normalize(textures[name], dim=-1, eps=1e-8)
    textures["mask"] = covered
    log.info("bake_field: %dx%d, %.1f%% texels covered, channels %s", width, height,
             100 * float(covered.float().mean()), sorted(chunks))
    return textures

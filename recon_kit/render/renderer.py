"""Deferred rendering of a mesh: G-buffer, material lookup, split-sum shading, compositing, antialiasing.

Backend-agnostic: everything goes through a :class:`~recon_kit.render.raster.Rasterizer`. Shading runs on the
covered pixels only (an object often covers a tenth of the image); finding them is the one host-device
synchronisation of a render call, shared with the material through :meth:`GBuffer.pixels`. No Python loop over
pixels or triangles.

:class:`MeshRenderer` composes a rasterizer with the shading in PyTorch3D's style: ``render`` one batch of
cameras, ``render_views`` a list of cameras in batches (the one batched render loop of the kit). A material is
any callable ``material(gbuffer, rasterizer) -> {kd, ks, normal}`` (:data:`MaterialFn`).
"""

from __future__ import annotations


import functools
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from recon_kit.cameras import Camera, stack_matrices
from recon_kit.render.shading import ShadingMaps, fg_lut, perturb_normal, split_sum
from recon_kit.mesh import Mesh, face_normals, vertex_normals, vertex_tangents
from recon_kit.render.raster import Rasterizer
from recon_kit.render.compile_cache import use_compile_cache


log = logging.getLogger(__name__)


#: A material maps a G-buffer (and the rasterizer, for texture lookups) to per-pixel ``kd`` [B,H,W,3],
#: ``ks`` [B,H,W,3] (occlusion, roughness, metallic) and ``normal`` (tangent space): ``material(gb, rasterizer)``.
MaterialFn = Callable[["GBuffer", Rasterizer], dict]


@dataclass
class GBuffer:
    """Per-pixel surface quantities of one rasterised batch; every tensor is [B,H,W,C] except ``face_normals``,
    the mesh's per-face table [F,3] (looked up at the covered pixels only: :meth:`face_normal_rows`)."""

    rast: torch.Tensor
    pos_clip: torch.Tensor
    tri: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    normal: torch.Tensor
    face_normals: torch.Tensor
    tangent: torch.Tensor
    depth: torch.Tensor
    uv: torch.Tensor | None = None
    uv_da: torch.Tensor | None = None
    capacity: int | None = None
    _pixels: torch.Tensor | None = field(default=None, repr=False)
    _slots: torch.Tensor | None = field(default=None, repr=False)

    def pixels(self) -> torch.Tensor:
        """Flat indices ``[N]`` (into ``B*H*W``) of the covered pixels, computed once (one host sync).

        With a ``capacity`` N is that number and there is no host sync (what a CUDA graph needs): the rows past
        the covered count repeat the first covered pixel, and :meth:`scatter` drops them; covered pixels past
        the capacity are not shaded (the caller sizes it: :func:`compact_indices`)."""
        if self._pixels is None:
            covered = self.mask.reshape(-1) > 0
            if self.capacity is None:
                self._pixels = self._slots = torch.nonzero(covered).squeeze(1)
            else:
                self._pixels, self._slots = compact_indices(covered, self.capacity)
        return self._pixels

    def rows(self, image: torch.Tensor) -> torch.Tensor:
        """The covered pixels' values ``[N,C]`` of a ``[B,H,W,C]`` image (``index_select``: no sort in backward)."""
        return image.reshape(-1, image.shape[-1]).index_select(0, self.pixels())

    def face_normal_rows(self) -> torch.Tensor:
        """The geometric normal ``[N,3]`` of the triangle under each covered pixel.

        Looked up at the covered pixels only: a per-pixel image would send every background pixel's (zero)
        gradient to one face, millions of atomic adds on one address in the backward."""
        tid = (self.rows(self.rast[..., 3:4].detach()).reshape(-1).long() - 1).clamp_min(0)  # padding rows: >= 0
        return self.face_normals.index_select(0, tid)

    def scatter(self, values: torch.Tensor, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
        """``[N,C]`` values of the covered pixels back into a ``[B,H,W,C]`` image over ``fill`` (differentiable
        w.r.t. ``values``; ``fill`` is a scalar or an image broadcastable to ``[B,H,W,C]``)."""
        shape = (*self.mask.shape[:3], values.shape[-1])
        n = shape[0] * shape[1] * shape[2]
        if isinstance(fill, torch.Tensor):
            base = fill.to(values.dtype).expand(shape).reshape(-1, shape[-1])
        else:  # a Python number: no host-to-device copy (which would wait for the GPU)
            base = values.new_full((n, shape[-1]), float(fill))
        self.pixels()
        if self.capacity is None:
            return base.index_copy(0, self._slots, values).view(shape)
        base = torch.cat([base, base[:1]])        # row n: where the padding rows land
        return base.index_copy(0, self._slots, values)[:n].view(shape)


def compact_indices(flags: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices of the True entries of a flat bool tensor in ``capacity`` slots, without a host sync
    (``torch.nonzero`` reads its count back): ``(gather, scatter)``, equal on the first ``count`` slots; past
    them ``gather`` repeats the True indices in turn (valid rows to compute on, spread so that their zero
    gradients do not pile onto one row) and ``scatter`` holds ``len(flags)`` (a sentinel row to drop). True
    entries past ``capacity`` are left out."""
    n = flags.numel()
    csum = torch.cumsum(flags, 0)
    slots = torch.arange(capacity, device=flags.device)
    scatter = torch.searchsorted(csum, slots + 1)          # slot j: the (j+1)-th True entry, n past the count
    repeat = scatter.index_select(0, slots % csum[-1:].clamp_min(1))
    gather = torch.where(scatter < n, scatter, repeat).clamp_max(n - 1)
    return gather, scatter


def clip_positions(v_pos: torch.Tensor, mvp: torch.Tensor) -> torch.Tensor:
    """World positions [V,3] to clip space [B,V,4] for matrices mvp [B,4,4]."""
    v_hom = F.pad(v_pos, (0, 1), value=1.0)
    return torch.einsum("vi,bji->bvj", v_hom, mvp)


def frame_from_normal(n: torch.Tensor) -> torch.Tensor:
    """A tangent orthogonal to ``n`` that varies continuously except at n = (0, 0, -1) (Duff et al. 2017)."""
    sign = torch.where(n[..., 2:3] >= 0, torch.ones_like(n[..., 2:3]), -torch.ones_like(n[..., 2:3]))
    a = -1.0 / (sign + n[..., 2:3])
    b = n[..., 0:1] * n[..., 1:2] * a
    return torch.cat([1 + sign * n[..., 0:1] ** 2 * a, sign * b, -sign * n[..., 0:1]], -1)


def rasterize_mesh(rasterizer: Rasterizer, mesh: Mesh, mvp: torch.Tensor, w2c: torch.Tensor,
                   resolution: tuple[int, int], raster: tuple[torch.Tensor, torch.Tensor] | None = None,
                   capacity: int | None = None) -> GBuffer:
    """Rasterise ``mesh`` for a batch of cameras and interpolate positions, normals, tangents, UVs, depth.

    ``raster``: ``(rast, rast_db)`` of this mesh and these cameras, rasterised already (a CUDA graph replays
    what follows the rasteriser); ``capacity``: see :meth:`GBuffer.pixels`."""
    tri = mesh.t_pos_idx.int()
    pos_clip = clip_positions(mesh.v_pos, mvp)
    rast, rast_db = raster if raster is not None else rasterizer.rasterize(pos_clip, tri, resolution)
    mask = (rast[..., 3:4] > 0).to(mesh.v_pos.dtype)
    v_nrm = vertex_normals(mesh.v_pos, mesh.t_pos_idx)
    pos, _ = rasterizer.interpolate(mesh.v_pos, rast, tri)
    nrm, _ = rasterizer.interpolate(v_nrm, rast, tri)
    cam_z = torch.einsum("vi,bji->bvj", F.pad(mesh.v_pos, (0, 1), value=1.0), w2c)[..., 2:3]
    depth, _ = rasterizer.interpolate(-cam_z.contiguous(), rast, tri)
    uv = uv_da = None
    if mesh.has_uv:
        uv, uv_da = rasterizer.interpolate(mesh.v_tex, rast, mesh.t_tex_idx.int(), rast_db=rast_db, diff_attrs="all")
        v_tng = vertex_tangents(mesh.v_pos, mesh.t_pos_idx, mesh.v_tex, mesh.t_tex_idx, v_nrm)
        tng, _ = rasterizer.interpolate(v_tng, rast, tri)
    else:
        tng = frame_from_normal(F.normalize(nrm, dim=-1, eps=1e-8))
    return GBuffer(rast=rast, pos_clip=pos_clip, tri=tri, mask=mask, pos=pos,
                   normal=F.normalize(nrm, dim=-1, eps=1e-8), face_normals=face_normals(mesh.v_pos, mesh.t_pos_idx),
                   tangent=F.normalize(tng, dim=-1, eps=1e-8), depth=depth, uv=uv, uv_da=uv_da, capacity=capacity)


def make_background(kind: str, shape: tuple[int, ...], device, reference: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Background image [B,H,W,3] in linear RGB: white, black, random (per-pixel noise) or reference."""
    if kind == "white":
        return torch.ones(*shape, 3, device=device)
    if kind == "black":
        return torch.zeros(*shape, 3, device=device)
    if kind == "random":
        return torch.rand(*shape, 3, device=device, generator=generator)
    if kind == "reference":
        if reference is None:
            raise ValueError("background='reference' needs the reference images")
        return reference
    raise ValueError(f"unknown background {kind!r}; use white, black, random or reference")


def shade_pixels(maps: ShadingMaps | None, lut: torch.Tensor | None, pos: torch.Tensor, campos: torch.Tensor,
                 face_normal: torch.Tensor, normal: torch.Tensor, tangent: torch.Tensor,
                 normal_map: torch.Tensor | None, kd: torch.Tensor, ks: torch.Tensor, bsdf: str = "pbr"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear RGB ``[N,3]`` and the shading normal ``[N,3]`` of ``N`` surface points (rows of a G-buffer).

    Two-sided normal-mapped shading normal, then split-sum shading (``bsdf`` pbr/diffuse) or a debug output
    (``kd``, ``normal``: ``maps`` and ``lut`` may then be None). A pure tensor function, so it compiles.
    """
    view_dir = F.normalize(campos - pos, dim=-1, eps=1e-8)
    n_shade = perturb_normal(face_normal, normal, tangent, normal_map, view_dir)
    if bsdf == "kd":
        return kd[..., 0:3], n_shade
    if bsdf == "normal":
        return n_shade * 0.5 + 0.5, n_shade
    return split_sum(maps, lut, pos, n_shade, kd, ks, campos, bsdf), n_shade


class _CompiledShader:
    """:func:`shade_pixels` through ``torch.compile(dynamic=True)`` (the pixel count changes every step): its
    ~200 elementwise and gather ops, forward and backward, become a few fused kernels. After a compiler failure
    it logs a warning and stays eager."""

    def __init__(self) -> None:
        cache = use_compile_cache()
        log.info("compiling the shading (torch.compile, once per process: up to a minute on first use, "
                 "seconds when %s holds an earlier process's graphs)", cache)
        self.fn, self.failed = torch.compile(shade_pixels, dynamic=True), False

    def __call__(self, *args, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.failed:
            try:
                return self.fn(*args, **kw)
            except torch.cuda.OutOfMemoryError:
                raise                  # not a compiler failure: the eager shading would need more memory still
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: stay eager
                log.warning("torch.compile of the shading failed (%s: %s); using the eager version",
                            type(exc).__name__, exc)
                self.failed = True
        return shade_pixels(*args, **kw)


@functools.cache
def compiled_shader() -> _CompiledShader:
    """The process's one compiled shader (compiling is per process; its graphs are cached by shape class)."""
    return _CompiledShader()


def shade_in_chunks(shader: Callable, chunk: int, maps, lut, *rows, bsdf: str = "pbr"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``shader(maps, lut, *rows, bsdf)`` over the rows ``chunk`` at a time, each chunk under activation
    checkpointing: its intermediates (the split-sum's ~200 per-pixel tensors) are freed after the forward and
    recomputed in the backward, so peak memory holds one chunk's instead of every covered pixel's. Same values
    and gradients as one call (``rows`` entries may be None). Checkpoint early-stop is off: it stops a
    recomputation by raising inside ``shader``, which the compiled shader would take for a compiler failure."""
    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

    n = rows[0].shape[0]
    with set_checkpoint_early_stop(False):
        parts = [checkpoint(shader, maps, lut, *(None if r is None else r[s:s + chunk] for r in rows), bsdf,
                            use_reentrant=False, preserve_rng_state=False)   # no random draws; a CUDA graph
                 for s in range(0, n, chunk)]                                 # refuses reading the RNG state
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def render_mesh(rasterizer: Rasterizer, mesh: Mesh, views: dict, resolution: tuple[int, int],
                material: MaterialFn, light, background: torch.Tensor, bsdf: str = "pbr",
                antialias: bool = True, compile: bool | None = None, shade_chunk: int = 0,
                raster: tuple[torch.Tensor, torch.Tensor] | None = None, capacity: int | None = None) -> dict:
    """Render ``mesh`` with ``material`` under ``light`` over ``background`` [B,H,W,3] (all linear RGB).

    ``views`` holds ``mvp``, ``w2c`` [B,4,4] and ``campos`` [B,3] (see :func:`recon_kit.cameras.stack_matrices`).
    Returns ``rgb_linear`` and ``alpha`` (antialiased), and the G-buffer-derived ``depth``, ``mask``,
    ``kd``, ``ks``, ``normal`` (shading normal, world), and the ``gbuffer`` itself. ``compile`` runs the
    shading compiled (:func:`shade_pixels`; default: on CUDA only; eager again if the compiler fails).
    ``shade_chunk`` > 0 shades the covered pixels that many at a time under checkpointing (:func:`shade_in_chunks`:
    less memory in training at high resolution, one more shading forward in the backward). ``raster`` and
    ``capacity``: see :func:`rasterize_mesh`.
    """
    with record_function("rk.rasterize"):
        gb = rasterize_mesh(rasterizer, mesh, views["mvp"], views["w2c"], resolution, raster, capacity)
    with record_function("rk.material"):
        mat = material(gb, rasterizer)
    with record_function("rk.shade"):
        H, W = gb.mask.shape[1:3]
        pos = gb.rows(gb.pos)
        campos = views["campos"].index_select(0, torch.div(gb.pixels(), H * W, rounding_mode="floor"))
        n_map = mat.get("normal")
        pbr = bsdf in ("pbr", "diffuse")
        shader = compiled_shader() if (pos.is_cuda if compile is None else compile) else shade_pixels
        maps, lut = (light.maps(), fg_lut(device=pos.device)) if pbr else (None, None)
        rows = (pos, campos, gb.face_normal_rows(), gb.rows(gb.normal), gb.rows(gb.tangent),
                None if n_map is None else gb.rows(n_map), gb.rows(mat["kd"]), gb.rows(mat["ks"]))
        if shade_chunk > 0 and torch.is_grad_enabled() and pos.shape[0] > shade_chunk:
            rgb, n_shade = shade_in_chunks(shader, shade_chunk, maps, lut, *rows, bsdf=bsdf)
        else:
            rgb, n_shade = shader(maps, lut, *rows, bsdf)
        rgb = gb.scatter(rgb, background)
        n_shade = gb.scatter(n_shade)
    color = torch.cat([rgb, gb.mask], -1)
    if antialias:
        with record_function("rk.antialias"):
            color = rasterizer.antialias(color, gb.rast, gb.pos_clip, gb.tri)
    return {"rgb_linear": color[..., :3], "alpha": color[..., 3:4], "depth": gb.depth, "mask": gb.mask,
            "kd": mat["kd"], "ks": mat["ks"], "normal": n_shade, "gbuffer": gb}


def constant_material(kd: Sequence[float] = (0.6, 0.6, 0.6), ks: Sequence[float] = (0.0, 0.5, 0.0)) -> MaterialFn:
    """A :data:`MaterialFn` of one ``kd`` (linear) and ``ks`` everywhere and a flat normal (untextured meshes)."""

    def material(gb: GBuffer, rasterizer: Rasterizer) -> dict:
        like = gb.pos
        return {"kd": torch.zeros_like(like) + like.new_tensor(kd), "ks": torch.zeros_like(like) + like.new_tensor(ks),
                "normal": torch.zeros_like(like) + like.new_tensor([0.0, 0.0, 1.0])}
    return material


class MeshRenderer:
    """A rasterizer composed with the kit's deferred shading (PyTorch3D's ``MeshRenderer(rasterizer, shader)``).

    ``compile``: run the shading through ``torch.compile`` (None: on CUDA only); ``shade_chunk``: shade the
    covered pixels in checkpointed chunks of this many rows (0 = one call); see :func:`render_mesh`.
    """

    def __init__(self, rasterizer: Rasterizer, compile: bool | None = None, shade_chunk: int = 0) -> None:
        self.rasterizer, self.compile, self.shade_chunk = rasterizer, compile, shade_chunk

    def render(self, mesh: Mesh, cameras: dict | Sequence[Camera], resolution: tuple[int, int], material: MaterialFn,
               light, background: torch.Tensor, bsdf: str = "pbr", antialias: bool = True, **raster) -> dict:
        """One batch: :func:`render_mesh` for ``cameras`` (a list of :class:`~recon_kit.cameras.Camera` or the
        matrices of :func:`~recon_kit.cameras.stack_matrices`) over ``background`` [B,H,W,3] (linear RGB);
        ``raster`` may hold :func:`render_mesh`'s ``raster`` and ``capacity``."""
        if not isinstance(cameras, dict):
            cameras = stack_matrices(list(cameras), device=mesh.v_pos.device)
        return render_mesh(self.rasterizer, mesh, cameras, resolution, material, light, background, bsdf=bsdf,
                           antialias=antialias, compile=self.compile, shade_chunk=self.shade_chunk, **raster)

    @torch.no_grad()
    def render_views(self, mesh: Mesh, cameras: Sequence[Camera], material: MaterialFn, light,
                     background: str | float = "white", bsdf: str = "pbr", batch: int = 8) -> dict:
        """Render ``cameras`` (all of one image size; e.g. a ViewSet's) ``batch`` at a time, without gradients.

        ``background``: a :func:`make_background` kind or a constant linear value. Returns ``rgb_linear``
        [N,H,W,3], ``alpha``, ``depth`` (camera depth, 0 where uncovered is not guaranteed: multiply by
        ``mask``) and ``mask``, each [N,H,W,1], on the mesh's device. A mesh without faces renders as background.
        """
        sizes = {(c.height, c.width) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"cameras must share one image size, got {sorted(sizes)}")
        (H, W), device = sizes.pop(), mesh.v_pos.device
        parts: dict[str, list[torch.Tensor]] = {"rgb_linear": [], "alpha": [], "depth": [], "mask": []}
        for s in range(0, len(cameras), batch):
            chunk = list(cameras[s:s + batch])
            if isinstance(background, str):
                bg = make_background(background, (len(chunk), H, W), device)
            else:
                bg = torch.full((len(chunk), H, W, 3), float(background), device=device)
            if mesh.num_faces == 0:
                empty = torch.zeros(len(chunk), H, W, 1, device=device)
                out = {"rgb_linear": bg, "alpha": empty, "depth": empty, "mask": empty}
            else:
                out = self.render(mesh, chunk, (H, W), material, light, bg, bsdf=bsdf)
            for k, v in parts.items():
                v.append(out[k])
        return {k: torch.cat(v) for k, v in parts.items()}

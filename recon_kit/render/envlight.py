"""Learnable HDR environment light (:class:`EnvLight`) with its prefiltered mip chain and probe files, and
:func:`shade` (split-sum image-based shading, nvdiffrec 'pbr'), in pure PyTorch. Cube-map maths live in
:mod:`recon_kit.render.cubemap`, the split-sum lookups in :mod:`recon_kit.render.shading`.

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


import math
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recon_kit.io.images import read_hdr, write_hdr  # noqa: F401
from recon_kit.render.shading import MAX_ROUGHNESS
from recon_kit.render.shading import MIN_ROUGHNESS
from recon_kit.render.shading import ShadingMaps
from recon_kit.render.cubemap import SymmetricFilter
from recon_kit.render.cubemap import _bilinear_taps
from recon_kit.render.cubemap import _gather_weighted
from recon_kit.render.cubemap import apply_filter
from recon_kit.render.cubemap import cube_to_latlong
from recon_kit.render.cubemap import diffuse_filter
from recon_kit.render.cubemap import dir_to_face_uv
from recon_kit.render.cubemap import downsample_cube
from recon_kit.render.cubemap import ggx_cutoff_cos
from recon_kit.render.cubemap import ggx_filter
from recon_kit.render.shading import irradiance_at
from recon_kit.render.cubemap import latlong_to_cube
from recon_kit.render.cubemap import pad_cube
from recon_kit.render.shading import prefiltered_at
from recon_kit.render.cubemap import texel_dirs
from recon_kit.render.shading import fg_lut
from recon_kit.render.shading import split_sum


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


def shade(light: EnvLight, gb_pos: torch.Tensor, gb_normal: torch.Tensor, kd: torch.Tensor, ks: torch.Tensor,
          campos: torch.Tensor, bsdf: str = "pbr", lut: torch.Tensor | None = None) -> torch.Tensor:
    """nvdiffrec split-sum shading under ``light`` -> linear RGB ``[..., 3]`` (see :func:`split_sum`)."""
    if lut is None:
        lut = fg_lut(device=gb_pos.device)
    return split_sum(light.maps(), lut, gb_pos, gb_normal, kd, ks, campos, bsdf)

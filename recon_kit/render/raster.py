"""The rasteriser interface shared by the nvdiffrast (CUDA) and pure-PyTorch (CPU or GPU) backends.

Both backends follow nvdiffrast's semantics so that everything above them is backend-agnostic:

``rasterize(pos_clip [B,V,4], tri [F,3] int32, (H, W)) -> rast [B,H,W,4], rast_db [B,H,W,4]``
    ``rast[..., 0:2]`` are perspective-correct barycentrics (u, v) of the visible triangle (an attribute is
    ``u * a0 + v * a1 + (1 - u - v) * a2``), ``rast[..., 2]`` is z/w, ``rast[..., 3]`` the triangle index + 1
    (0 = background). Row 0 is the image top with the kit's projection (see :mod:`recon_kit.cameras`).
    (u, v) carry gradients to ``pos_clip``; ``rast_db`` holds (du/dx, du/dy, dv/dx, dv/dy) per pixel.
``interpolate(attr [V,C] or [B,V,C], rast, tri, rast_db=None, diff_attrs=None) -> (out [B,H,W,C], da)``
    Barycentric interpolation; with ``diff_attrs`` ("all" or channel indices) also the screen-space
    derivatives [B,H,W,2*len] used for mip-mapped texture lookups.
``texture(tex [1 or B, Ht, Wt, C], uv [B,H,W,2], uv_da=None, filter_mode="auto") -> [B,H,W,C]``
    uv (0, 0) is the first texel (row 0); wraps around. Trilinear mip-mapping when ``uv_da`` is given.
``antialias(color [B,H,W,C], rast, pos_clip, tri) -> [B,H,W,C]``
    Analytic silhouette antialiasing that gives geometry gradients where a triangle edge separates pixels.
"""

from __future__ import annotations

import importlib
import logging
from typing import Protocol, runtime_checkable

import torch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "nvdiffrast")


@runtime_checkable
class Rasterizer(Protocol):
    name: str

    def rasterize(self, pos_clip: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                    rast_db: torch.Tensor | None = None, diff_attrs=None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def texture(self, tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
                filter_mode: str = "auto") -> torch.Tensor: ...

    def antialias(self, color: torch.Tensor, rast: torch.Tensor, pos_clip: torch.Tensor,
                  tri: torch.Tensor) -> torch.Tensor: ...


def nvdiffrast_available() -> bool:
    """True when CUDA is present and the ``nvdiffrast`` package can be found (the plugin is built lazily)."""
    if not torch.cuda.is_available():
        return False
    return importlib.util.find_spec("nvdiffrast") is not None


def get_rasterizer(backend: str = "auto", device: torch.device | str | None = None) -> Rasterizer:
    """Pick a rasteriser: nvdiffrast on CUDA devices when installed, else the PyTorch one.

    ``backend="torch"`` forces the pure-PyTorch path (it also runs on CUDA, for cross-checks).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {BACKENDS}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "nvdiffrast" or (backend == "auto" and device.type == "cuda" and nvdiffrast_available()):
        if device.type != "cuda":
            raise RuntimeError("the nvdiffrast backend needs a CUDA device; use backend='torch' on the CPU")
        from recon_kit.render.nvdiffrast_backend import NvdiffrastRasterizer
        return NvdiffrastRasterizer(device)
    from recon_kit.render.torch_backend import TorchRasterizer
    return TorchRasterizer()

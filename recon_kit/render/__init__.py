"""Differentiable rendering: one rasteriser interface, two backends, and a deferred PBR pipeline."""

from .pipeline import GBuffer, clip_positions, make_background, rasterize_mesh, render_mesh
from .raster import BACKENDS, Rasterizer, get_rasterizer, import_nvdiffrast, nvdiffrast_available

__all__ = ["BACKENDS", "GBuffer", "Rasterizer", "clip_positions", "get_rasterizer", "import_nvdiffrast",
           "make_background", "nvdiffrast_available", "rasterize_mesh", "render_mesh"]

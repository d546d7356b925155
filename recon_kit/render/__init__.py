"""Differentiable rendering: one rasteriser interface, two backends, and a deferred PBR pipeline."""

from recon_kit.render.renderer import GBuffer, clip_positions, make_background, rasterize_mesh, render_mesh
from recon_kit.render.raster import BACKENDS, Rasterizer, get_rasterizer, nvdiffrast_available
from recon_kit.render.nvdiffrast_backend import import_nvdiffrast

__all__ = ["BACKENDS", "GBuffer", "Rasterizer", "clip_positions", "get_rasterizer", "import_nvdiffrast",
           "make_background", "nvdiffrast_available", "rasterize_mesh", "render_mesh"]

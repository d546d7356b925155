"""Differentiable rendering: one rasteriser interface, two backends, and a deferred PBR pipeline."""

from recon_kit.render.renderer import (GBuffer, MaterialFn, MeshRenderer, clip_positions, constant_material,
                                       make_background, rasterize_mesh, render_mesh)
from recon_kit.render.raster import BACKENDS, Rasterizer, get_rasterizer, nvdiffrast_available
from recon_kit.render.nvdiffrast_backend import import_nvdiffrast

__all__ = ["BACKENDS", "GBuffer", "MaterialFn", "MeshRenderer", "Rasterizer", "clip_positions", "constant_material",
           "get_rasterizer", "import_nvdiffrast", "make_background", "nvdiffrast_available", "rasterize_mesh", "render_mesh"]

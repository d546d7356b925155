"""nvdiffrast backend (CUDA only): a thin adapter from the kit's interface to ``nvdiffrast.torch``.

Uses ``RasterizeCudaContext`` (no OpenGL/EGL needed on headless servers). The plugin is JIT-compiled by
nvdiffrast on first use (about 30 s, once per machine); see :func:`import_nvdiffrast`.
"""

from __future__ import annotations

import importlib
import re
import sys

import torch


class NvdiffrastRasterizer:
    name = "nvdiffrast"

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.dr = import_nvdiffrast()
        self.ctx = self.dr.RasterizeCudaContext(device=torch.device(device))

    def rasterize(self, pos_clip, tri, resolution):
        if pos_clip.ndim == 2:
            pos_clip = pos_clip[None]
        return self.dr.rasterize(self.ctx, pos_clip.contiguous().float(), tri.int().contiguous(),
                                 (int(resolution[0]), int(resolution[1])))

    def interpolate(self, attr, rast, tri, rast_db=None, diff_attrs=None):
        if attr.ndim == 2:
            attr = attr[None]
        out, da = self.dr.interpolate(attr.contiguous().float(), rast, tri.int().contiguous(),
                                      rast_db=rast_db, diff_attrs=diff_attrs)
        return out, (da if diff_attrs is not None else None)

    def texture(self, tex, uv, uv_da=None, filter_mode="auto", boundary_mode="wrap", max_mip_level=None):
        return self.dr.texture(tex.contiguous(), uv.contiguous(), uv_da=uv_da, filter_mode=filter_mode,
                               boundary_mode=boundary_mode, max_mip_level=max_mip_level)

    def antialias(self, color, rast, pos_clip, tri):
        if pos_clip.ndim == 2:
            pos_clip = pos_clip[None]
        return self.dr.antialias(color.contiguous(), rast, pos_clip.contiguous().float(), tri.int().contiguous())


def import_nvdiffrast():
    """Import ``nvdiffrast.torch`` (PyPI: ``diffrp-nvdiffrast``) so that its JIT-built plugin loads.

    nvdiffrast builds its CUDA plugin on first use (about 30 s, once per machine) into torch's extension
    directory, under a name made of its own and torch's versions. On torch >= 2.10 that directory is no
    longer on ``sys.path`` when nvdiffrast imports the built module, so the import fails after a good build;
    putting the directory on the path first (the one thing this function does) fixes it.
    """
    import nvdiffrast
    from torch.utils import cpp_extension

    for suffix in ("", "_gl"):
        name = re.sub(r"\W|^(?=\d)", "_", f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}{suffix}")
        build_dir = cpp_extension._get_build_directory(name, False)
        if build_dir not in sys.path:
            sys.path.append(build_dir)
    return importlib.import_module("nvdiffrast.torch")

"""nvdiffrast backend (CUDA only): a thin adapter from the kit's interface to ``nvdiffrast.torch``.

Uses ``RasterizeCudaContext`` (no OpenGL/EGL needed on headless servers). The plugin is JIT-compiled by
nvdiffrast on first use (about 30 s, once per machine); see :func:`import_nvdiffrast`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import sys
from pathlib import Path

import torch

from recon_kit.io import locking

log = logging.getLogger(__name__)


class NvdiffrastRasterizer:
    name = "nvdiffrast"

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.dr = import_nvdiffrast()
        with plugin_build_lock():                      # the first context builds the plugin
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


def _plugin_name(suffix: str = "") -> str:
    import nvdiffrast

    return re.sub(r"\W|^(?=\d)", "_", f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}{suffix}")


@contextlib.contextmanager
def plugin_build_lock(build_dir: str | Path | None = None):
    """Hold a machine-wide lock while nvdiffrast's plugin is built or loaded, so processes started together on a
    fresh machine wait for one build instead of failing on its ``lock`` file.

    The lock is ``flock`` on ``<torch extensions>/.recon-kit.lock`` (:func:`recon_kit.io.locking.acquire` with
    ``wait=True``): the kernel releases it when its holder dies, so a killed build never blocks the next one.
    Holding it, no other kit process can be building, so a ``lock`` file that torch's build left in the plugin's
    folder is stale (an interrupted build) and is removed. The plugin itself stays cached in that folder
    (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); delete its ``nvdiffrast_plugin_*`` folder
    to force a rebuild.
    """
    from torch.utils import cpp_extension

    build_dir = Path(build_dir or cpp_extension._get_build_directory(_plugin_name(), False))
    with locking.locked(build_dir.parent, "building nvdiffrast's plugin", wait=True):
        stale = build_dir / "lock"
        if stale.exists():
            log.warning("removing %s left by an interrupted nvdiffrast build", stale)
            stale.unlink(missing_ok=True)
        yield


def import_nvdiffrast():
    """Import ``nvdiffrast.torch`` (PyPI: ``diffrp-nvdiffrast``) so that its JIT-built plugin loads.

    nvdiffrast builds its CUDA plugin on first use (about 30 s, once per machine) into torch's extension
    directory, under a name made of its own and torch's versions. On torch >= 2.10 that directory is no
    longer on ``sys.path`` when nvdiffrast imports the built module, so the import fails after a good build;
    putting the directory on the path first (the one thing this function does) fixes it.
    """
    from torch.utils import cpp_extension

    for suffix in ("", "_gl"):
        build_dir = cpp_extension._get_build_directory(_plugin_name(suffix), False)
        if build_dir not in sys.path:
            sys.path.append(build_dir)
    return importlib.import_module("nvdiffrast.torch")

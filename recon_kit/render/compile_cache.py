"""Where ``torch.compile``'s work is kept between processes, so a second run starts in seconds (issue 15).

The kit compiles its shading (:func:`recon_kit.render.renderer.compiled_shader`) and the hash grid's gather and
scatter (:class:`recon_kit.model.hashgrid.HashGridEncoder`). Inductor can reuse what an earlier process compiled
from its on-disk caches: the FX graph cache (generated kernels per graph), the AOTAutograd cache (forward and
backward graphs) and Triton's compiled kernels (under ``<dir>/triton``). By default Inductor keeps them in
``/tmp/torchinductor_<user>``, which is lost with ``/tmp``; the kit keeps them in one folder:

- ``$RECON_KIT_COMPILE_CACHE`` when set, else
- ``$TORCHINDUCTOR_CACHE_DIR`` when set to other than Inductor's ``/tmp`` default (the user's own setting), else
- ``~/.cache/recon-kit/torch-compile``.

Clear it with ``rm -rf ~/.cache/recon-kit/torch-compile`` (or the folder above): the next run compiles again
(about a minute on a GPU). nvdiffrast's plugin is cached separately (``~/.cache/torch_extensions``, see
:func:`recon_kit.render.nvdiffrast_backend.plugin_build_lock`). :func:`use_compile_cache` is called where the kit
decides to compile, before the first ``torch.compile`` runs; it only fills in settings that are not set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Environment variable that moves the kit's compile cache.
CACHE_ENV = "RECON_KIT_COMPILE_CACHE"
#: Inductor's own cache-folder variable (its FX graph, AOTAutograd and Triton caches live under it).
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_cache_dir() -> Path:
    """The folder the compile caches use (see the module docstring for the order of the settings)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    inductor = os.environ.get(INDUCTOR_ENV)
    if inductor and os.path.abspath(inductor) != os.path.abspath(default_cache_dir()):
        return Path(inductor).expanduser()  # set by the user (Inductor writes its /tmp default there itself)
    return Path.home() / ".cache" / "recon-kit" / "torch-compile"


def use_compile_cache() -> Path:
    """Point Inductor's caches at :func:`compile_cache_dir` and make sure the on-disk FX graph and AOTAutograd
    caches are on; returns the folder. Safe to call more than once."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    folder = compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get(INDUCTOR_ENV) != str(folder):
        os.environ[INDUCTOR_ENV] = str(folder)  # Inductor reads it at each cache access (cache_dir_utils)
        log.info("torch.compile caches in %s (clear: delete the folder; move: $%s)", folder, CACHE_ENV)
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return folder

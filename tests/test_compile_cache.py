"""torch.compile's on-disk caches live in the kit's folder (recon_kit.render.compile_cache), set where the kit
compiles; no GPU needed."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, env_extra: dict, home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RECON_KIT_COMPILE_CACHE", "TORCHINDUCTOR_CACHE_DIR")}
    env.update({"HOME": str(home), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **env_extra})
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_default_env_and_inductor_dirs(tmp_path):
    code = ("from recon_kit.render.compile_cache import use_compile_cache\n"
            "import os, torch._inductor.config as c, torch._functorch.config as f\n"
            "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
            "d = use_compile_cache(); assert c.fx_graph_cache and f.enable_autograd_cache\n"
            "print(d, cache_dir(), os.environ['TORCHINDUCTOR_CACHE_DIR'], sep='|')")
    d, inductor, env = _run(code, {}, tmp_path).split("|")
    expected = str(tmp_path / ".cache" / "recon-kit" / "torch-compile")
    assert d == inductor == env == expected and Path(expected).is_dir()
    d, inductor, _ = _run(code, {"RECON_KIT_COMPILE_CACHE": str(tmp_path / "mine")}, tmp_path).split("|")
    assert d == inductor == str(tmp_path / "mine")
    d, inductor, _ = _run(code, {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}, tmp_path).split("|")
    assert d == inductor == str(tmp_path / "ind")


def test_compiling_the_shader_and_hash_grid_sets_the_cache(tmp_path):
    """The kit's compile points apply the setting (the CPU compile itself is not run: no compiler needed)."""
    code = ("import os\n"
            "from recon_kit.render.renderer import compiled_shader\n"
            "compiled_shader(); a = os.environ['TORCHINDUCTOR_CACHE_DIR']\n"
            "os.environ['TORCHINDUCTOR_CACHE_DIR'] = 'elsewhere'\n"
            "import torch\n"
            "from recon_kit.model.hashgrid import HashGridEncoder\n"
            "enc = HashGridEncoder(compile=True)\n"
            "import recon_kit.model.hashgrid as h\n"
            "h.torch.compile = lambda fn, **kw: fn\n"
            "enc._kernels(torch.device('cpu'))\n"
            "print(a, os.environ['TORCHINDUCTOR_CACHE_DIR'], sep='|')")
    a, b = _run(code, {"RECON_KIT_COMPILE_CACHE": str(tmp_path / "kit")}, tmp_path).split("|")
    assert a == b == str(tmp_path / "kit")

"""Run the numbered notebooks headlessly with papermill, and the whole demo (01 -> 02 -> 03 -> 04).

Each notebook's parameters cell (tagged ``parameters``) is read with ``papermill.inspect_notebook`` at run time;
only names the notebook declares are passed. A parameter the demo must wire (e.g. 02's ``dataset_dir``) that the
notebook does not declare is an error that lists the notebook's parameters.

``python -m recon_kit.notebooks --check-kernel`` tells whether the ``python3`` kernel runs this interpreter.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recon_kit.runs.notebook import (KERNEL_NAME, NOTEBOOK_DIR, REPO_ROOT, NotebookFailed, NotebookParameterError,
                                     _describe, notebook_parameters, run_notebook)

__all__ = [
    "NOTEBOOKS",
    "NotebookParameterError",
    "NotebookFailed",
    "DemoResult",
    "notebook_parameters",
    "run_notebook",
    "run_demo",
    "kernel_python",
]

NOTEBOOKS = ["01_prepare_data.ipynb", "02_check_poses.ipynb", "03_train.ipynb", "04_inspect_mesh.ipynb"]
DEMO_DATASET = "demo"  # 01_prepare_data synthesises the built-in demo object for this input

# Where run_demo looks for results inside the training run folder.
RESULT_FILES = {"mesh": "mesh/model.glb", "viewer": "viewer.html", "turntable": "turntable.gif"}

# Smallest settings (``quick=True``): a smoke run of the whole chain on a CPU.
QUICK = {"resolutions": [64], "grid_res": 32, "preset": "cpu-small",
         "overrides": {"data.resolution": 64, "geometry.grid_res": 32, "geometry.hull_res": 48,
                       "material.texture_res": 128, "pass1.iterations": 40, "pass2.iterations": 20,
                       "pass2.warmup": 5, "checkpoint_every": 0, "snapshot_every": 0},
         "inspect": {"n_frames": 12, "turntable_res": 128}}

# 03's overrides for the default CPU demo (preset cpu-small at 128^2): about 0.2 s per pass-1 iteration on an idle
# 2-core machine and a few times that in pass 2 (texture sampling), i.e. 2-3 minutes of training, so `make demo`
# stays well under 10 minutes there.
DEMO_CPU_OVERRIDES = {"pass1.iterations": 400, "pass2.iterations": 100}
#: Mask rim trimmed where a capture's photo shows its background (px at 1024 width; docs/benchmarks.md section 10).
CAPTURE_TRIM_PX = 8.0


def _pick(declared: Mapping[str, Any], notebook: str, *candidates: str) -> str:
    """The first of ``candidates`` the notebook declares (the first is the contract name, the rest aliases)."""
    for c in candidates:
        if c in declared:
            return c
    raise NotebookParameterError(
        f"notebook {notebook} has no parameter {candidates[0]!r}"
        + (f" (nor {', '.join(map(repr, candidates[1:]))})" if len(candidates) > 1 else "")
        + f", which run_demo must set; its parameters cell has: {_describe(declared)}"
    )


MESH_SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl", ".off"}


def _find_gt_mesh(dataset_dir: Path) -> Path | None:
    """A ground-truth mesh that 01_prepare_data left beside a synthetic dataset, if any.

    Looks for ``gt*`` / ``ground_truth*`` / ``mesh_gt*`` meshes in ``dataset_dir`` and its direct sub-folders
    (``demo_capture/``, ``<res>/``), and for a ``gt_mesh`` key in their transforms.json.
    """
    folders = [dataset_dir, *sorted(p for p in dataset_dir.glob("*") if p.is_dir())]
    for folder in folders:
        tf = folder / "transforms.json"
        try:
            meta = json.loads(tf.read_text()) if tf.exists() else {}
        except ValueError:
            meta = {}
        val = meta.get("gt_mesh") if isinstance(meta, dict) else None
        if isinstance(val, str) and (folder / val).exists():
            return folder / val
        for pattern in ("gt*", "ground_truth*", "mesh_gt*", "gt/*"):
            for p in sorted(folder.glob(pattern)):
                if p.is_file() and p.suffix.lower() in MESH_SUFFIXES:
                    return p
    return None


def _auto_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class DemoResult:
    output_dir: Path
    dataset_dir: Path
    run_dir: Path
    notebooks: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    results: dict[str, Path] = field(default_factory=dict)  # what exists of RESULT_FILES
    missing: dict[str, Path] = field(default_factory=dict)


def run_demo(
    output_dir: str | os.PathLike[str] = "outputs/demo",
    dataset: str | os.PathLike[str] = DEMO_DATASET,
    device: str = "auto",
    overwrite: bool = False,
    quick: bool = False,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    gt_mesh: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    log_output: bool = False,
    notebooks_dir: str | os.PathLike[str] | None = None,
    notebooks: Sequence[str] = NOTEBOOKS,
    echo=print,
    stream: bool | None = None,
) -> DemoResult:
    """Run notebooks 01..04 in order, wiring each one's outputs into the next.

    ``dataset``: ``"demo"`` (the built-in synthetic object) or a capture folder such as
    ``../shared/datasets/shoe``. Layout written::

        output_dir/data/        01: the prepared dataset (<res>/transforms.json, train/, depth/)
        output_dir/posecheck/   02: pose check pictures and report
        output_dir/run/         03: the training run (mesh/model.glb, viewer.html, turntable.gif, ...)
        output_dir/notebooks/   the executed notebooks

    A capture folder's masks are trimmed to its photos (01's ``trim_px`` = :data:`CAPTURE_TRIM_PX`, the README's
    recipe for hand-framed captures). ``quick``: the smallest settings (:data:`QUICK`), for a smoke run. ``preset`` defaults to ``cpu-small`` on a
    CPU and ``gpu-default`` on CUDA; ``overrides`` go to 03's ``overrides`` (config keys). Without ``overrides``,
    03 gets the quick settings' overrides, or :data:`DEMO_CPU_OVERRIDES` for the default preset on a CPU; given
    ``overrides`` replace those (they are not merged).
    """
    from recon_kit.io import locking
    from recon_kit.io.overwrite import check_clearable, clear, mark

    out = Path(output_dir).resolve()
    if str(dataset) != DEMO_DATASET:
        ds = Path(dataset).expanduser().resolve()
        if not ds.is_dir():
            raise FileNotFoundError(
                f"dataset folder {dataset} does not exist (use --dataset demo for the built-in object)"
            )
        dataset_in: str = str(ds)
    else:
        dataset_in = DEMO_DATASET
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a directory")
    replace = out.is_dir() and any(out.iterdir())
    if replace and not overwrite:
        raise FileExistsError(
            f"output folder {out} already exists and is not empty; pass overwrite=True (CLI: --overwrite) "
            f"to replace it, or choose another folder (--output-dir)"
        )
    inputs = {"dataset": None if dataset_in == DEMO_DATASET else dataset_in, "ground-truth mesh": gt_mesh}
    if replace:
        check_clearable(out, inputs)  # never delete the user's capture or mesh, nor a folder the kit did not write

    names = list(notebooks)
    if len(names) != 4:
        raise ValueError(f"run_demo needs the four notebooks prepare, check-poses, train, inspect; got {names}")
    # Inspect every notebook before running (or deleting) anything, so a wiring mismatch fails in a second.
    declared = [notebook_parameters(n, notebooks_dir) for n in names]
    nb01, nb02, nb03, nb04 = declared

    dev = _auto_device(device)
    preset_given = preset
    if preset is None:
        preset = QUICK["preset"] if (quick or dev == "cpu") else "gpu-default"
    dataset_dir, posecheck_dir, run_dir = out / "data", out / "posecheck", out / "run"
    nb_out = out / "notebooks"

    plan: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    # 01 prepare data
    req = {_pick(nb01, names[0], "input_dir", "capture_dir", "source"): dataset_in,
           _pick(nb01, names[0], "output_dir", "dataset_dir"): dataset_dir}
    opt: dict[str, Any] = {"overwrite": overwrite, "device": dev}
    if quick:
        opt["resolutions"] = QUICK["resolutions"]
    if dataset_in != DEMO_DATASET and "trim_px" in nb01:
        opt["trim_px"] = CAPTURE_TRIM_PX
    plan.append((names[0], req, opt))
    # 02 check poses
    req = {_pick(nb02, names[1], "dataset_dir", "data_dir"): dataset_dir,
           _pick(nb02, names[1], "output_dir", "out_dir", "report_dir"): posecheck_dir}
    opt = {"device": dev, "interactive": False}
    if quick:
        opt["grid_res"] = QUICK["grid_res"]
    plan.append((names[1], req, opt))
    # 03 train
    req = {_pick(nb03, names[2], "dataset_dir", "data_dir"): dataset_dir,
           _pick(nb03, names[2], "run_dir"): run_dir}
    opt = {"preset": preset, "device": dev, "interactive": False, "overwrite": overwrite}
    if not overrides:
        if quick:
            overrides = QUICK["overrides"]
        elif dev == "cpu" and preset_given is None:
            overrides = DEMO_CPU_OVERRIDES
    if overrides:
        req[_pick(nb03, names[2], "overrides")] = dict(overrides)
    plan.append((names[2], req, opt))
    # 04 inspect mesh (gt_mesh filled in after 01 ran)
    req = {_pick(nb04, names[3], "run_dir"): run_dir}
    opt = {"device": dev, "interactive": False, "dataset_dir": dataset_dir}
    if quick:
        opt.update(QUICK["inspect"])
    plan.append((names[3], req, opt))

    lock = locking.acquire(out, "demo")  # held until the demo ends (or this process does)
    if replace:
        clear(out, inputs)
    mark(out, "demo")
    res = DemoResult(output_dir=out, dataset_dir=dataset_dir, run_dir=run_dir)
    echo(f"recon-kit demo: dataset {dataset_in} -> {out} (device {dev}, preset {preset}{', quick' if quick else ''})")
    for i, (name, req, opt) in enumerate(plan):
        if i == 3:
            gt = Path(gt_mesh).resolve() if gt_mesh else _find_gt_mesh(dataset_dir)
            if gt is not None:
                req[_pick(nb04, name, "gt_mesh", "gt_mesh_path")] = gt
        t0 = time.perf_counter()
        echo(f"[{i + 1}/4] {name}: " + ", ".join(f"{k}={v}" for k, v in req.items()))
        path = run_notebook(name, nb_out / Path(name).name, req, optional=opt, timeout=timeout,
                            log_output=log_output, notebooks_dir=notebooks_dir,
                            stream=(echo is print) if stream is None else stream)
        res.seconds[name] = round(time.perf_counter() - t0, 1)
        res.notebooks.append(path)
        echo(f"      done in {res.seconds[name]:.1f} s")

    for key, rel in RESULT_FILES.items():
        (res.results if (run_dir / rel).exists() else res.missing)[key] = run_dir / rel
    _write_summary(res, dataset_in, dev, preset, quick)
    echo(f"executed notebooks: {nb_out}")
    labels = {"mesh": "mesh      ", "viewer": "viewer    ", "turntable": "turntable "}
    for key in RESULT_FILES:
        if key in res.results:
            echo(f"{labels[key]} {res.results[key]}")
        else:
            echo(f"{labels[key]} (not produced: {res.missing[key]})")
    lock.release()
    return res


def _write_summary(res: DemoResult, dataset: str, device: str, preset: str, quick: bool) -> None:
    summary = {
        "dataset": dataset, "device": device, "preset": preset, "quick": quick,
        "dataset_dir": str(res.dataset_dir), "run_dir": str(res.run_dir),
        "notebooks": [str(p) for p in res.notebooks], "seconds": res.seconds,
        "results": {k: str(v) for k, v in res.results.items()},
    }
    tmp = res.output_dir / ".demo.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, res.output_dir / "demo.json")


def kernel_python(kernel_name: str = KERNEL_NAME) -> str:
    """The interpreter that kernel ``kernel_name`` would run when started from this process."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    exe = spec.argv[0]
    # jupyter_client replaces a bare python / python3 / python3.X with sys.executable when it starts a kernel.
    aliases = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return sys.executable if exe in aliases else exe


def _check_kernel() -> int:
    try:
        exe = kernel_python()
    except Exception as err:  # NoSuchKernel and friends
        print(f"kernel {KERNEL_NAME!r} not found: {err}", file=sys.stderr)
        return 1
    # Compare environments, not binaries: a venv's python is a symlink to the base interpreter.
    try:
        import subprocess

        prefix = subprocess.run([exe, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                                timeout=60).stdout.strip()
    except OSError as err:
        print(f"kernel {KERNEL_NAME!r} runs {exe}, which cannot be started: {err}", file=sys.stderr)
        return 1
    same = os.path.realpath(prefix) == os.path.realpath(sys.prefix)
    print(f"kernel {KERNEL_NAME!r} runs {exe}" + ("" if same else f" (not this interpreter {sys.executable})"))
    return 0 if same else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--check-kernel"]:
        raise SystemExit(_check_kernel())
    print("usage: python -m recon_kit.notebooks --check-kernel", file=sys.stderr)
    raise SystemExit(2)


def at_repo_root() -> Path:
    """Make a notebook's relative paths mean the repository root, in JupyterLab (which starts kernels in
    ``notebooks/``) as under papermill (started with ``cwd`` = the root). Returns the working directory."""
    if Path.cwd().resolve() == NOTEBOOK_DIR.resolve():
        os.chdir(REPO_ROOT)
    return Path.cwd()

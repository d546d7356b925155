"""``recon-kit`` / ``python -m recon_kit.cli``: the notebooks' steps from a terminal.

Subcommands import their modules only when they run, so ``recon-kit --help`` stays fast (no torch import).
Errors about inputs (ValueError, FileNotFoundError, FileExistsError and their subclasses) print one line and exit
with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_USAGE = 2  # bad input: argparse errors, missing files, invalid values
EXIT_FAILED = 1  # a step ran and failed (a notebook cell raised, a module is missing)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


class CommandError(ValueError):
    """An error message for the user, printed without a traceback."""


def _parse_value(text: str) -> Any:
    """``--set key=value`` values: JSON when it parses (numbers, true/false, lists, quoted strings), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        lowered = text.lower()
        if lowered in {"true", "false"}:
            return lowered == "true"
        if lowered in {"none", "null"}:
            return None
        return text


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--set expects KEY=VALUE (e.g. --set steps=500), got {pair!r}")
        out[key.strip()] = _parse_value(value)
    return out


def _existing_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} {path} is not a directory")
    return p.resolve()


def _load(module: str, attr: str) -> Callable[..., Any]:
    """``module.attr``, imported now; a missing module is a one-line error, not an ImportError traceback."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            raise RuntimeError(f"{module} is not available in this checkout ({err})") from err
        raise
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise RuntimeError(f"{module} has no {attr}(); this subcommand needs it") from None


def _call(func: Callable[..., Any], positional: dict[str, Any], options: dict[str, Any]) -> Any:
    """Call a library function whose exact signature is still settling.

    ``positional`` values go by keyword when the function has a parameter of that name, else by position (in
    order); ``options`` (only those the user set, i.e. not None) must be accepted by name.
    """
    sig = inspect.signature(func)
    params = sig.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, value in positional.items():
        if name in params and params[name].kind is not inspect.Parameter.POSITIONAL_ONLY:
            kwargs[name] = value
        else:
            args.append(value)
    for name, value in options.items():
        if value is None:
            continue
        if name not in params and not takes_kwargs:
            opt = "--" + name.replace("_", "-")
            raise CommandError(f"{func.__module__}.{func.__name__}{sig} does not take {name!r} ({opt})")
        kwargs[name] = value
    return func(*args, **kwargs)


# subcommands ----------------------------------------------------------------------------------------------------
def cmd_demo(a: argparse.Namespace) -> int:
    if a.dataset != "demo":
        _existing_dir(a.dataset, "dataset folder")
    from recon_kit.notebooks import run_demo

    run_demo(
        output_dir=a.output_dir,
        dataset=a.dataset,
        device=a.device,
        overwrite=a.overwrite,
        quick=a.quick,
        preset=a.preset,
        overrides=_overrides(a.set),
        gt_mesh=a.gt_mesh,
        timeout=a.timeout,
        log_output=a.log_output,
    )
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    src = _existing_dir(a.input_dir, "input folder")
    func = _load("recon_kit.data", "prepare_dataset")
    result = _call(
        func,
        {"input_dir": src, "output_dir": Path(a.output_dir).resolve()},
        {"resolutions": a.resolutions, "mask_source": a.mask_source, "align": a.align,
         "overwrite": a.overwrite or None},
    )
    print(f"prepared dataset: {result if result is not None else a.output_dir}")
    return 0


def cmd_check_poses(a: argparse.Namespace) -> int:
    ds = _existing_dir(a.dataset_dir, "dataset folder")
    load_viewset = _load("recon_kit.data", "load_viewset")
    check_poses = _load("recon_kit.posecheck", "check_poses")
    views = load_viewset(ds, resolution=a.resolution)
    report = _call(check_poses, {"data": views}, {"res": a.grid_res, "bounds": a.mesh_scale})
    text = report.summary() if hasattr(report, "summary") else str(report)
    print(text)
    if a.write_corrected:
        write = _load("recon_kit.posecheck", "write_corrected_transforms")
        transforms_path = _load("recon_kit.posecheck", "transforms_path")
        calib = report.calibration if a.apply_calibration else None
        if report.fixes or calib is not None:
            written = write(
                transforms_path(ds), report.fixes, overwrite=a.overwrite,
                camera_angle_x=None if calib is None else calib.best_angle)
            print(f"corrected transforms written to {written} (the original is untouched)")
        else:
            print("nothing to correct: no fixes found (add --apply-calibration to write the scanned angle)")
    if a.output_dir:
        out = Path(a.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "posecheck.txt").write_text(text + "\n")
        table = getattr(report, "table", None)
        if table is not None:
            table.to_csv(out / "posecheck.csv", index=False)
        print(f"report written to {out}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    ds = _existing_dir(a.dataset_dir, "dataset folder")
    config: str = a.config
    looks_like_file = config.endswith((".json", ".yaml", ".yml", ".toml")) or "/" in config
    if looks_like_file and not Path(config).exists():
        raise FileNotFoundError(f"config file {config} does not exist")
    func = _load("recon_kit.train", "train_from_config")
    run_dir = Path(a.run_dir).resolve()
    cfg = str(Path(config).resolve()) if looks_like_file else config
    if a.nproc != 1:  # data parallel: torchrun runs recon_kit.distributed in N processes (docs/distributed.md)
        if a.nproc < 1:
            raise CommandError(f"--nproc must be >= 1, got {a.nproc}")
        launch = _load("recon_kit.distributed", "launch")
        rc = launch(a.nproc, ds, cfg, run_dir, _overrides(a.set), resume=a.resume, overwrite=a.overwrite,
                    check=False).returncode
        return EXIT_FAILED if rc else 0
    extra = {"overwrite": True} if a.overwrite else {}
    result = func(cfg, ds, run_dir, _overrides(a.set), a.resume, **extra)
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    print(f"run folder: {run_dir}")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    grid: dict[str, list[Any]] = {}
    for spec in a.grid or []:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise CommandError(f"--grid expects KEY=V1,V2,... (e.g. --grid pass1.lr_mat=0.01,0.03), got {spec!r}")
        if key.strip() in grid:
            raise CommandError(f"--grid {key.strip()} is given twice; list all its values in one --grid")
        from recon_kit.runs import parse_grid_values

        grid[key.strip()] = parse_grid_values(values.strip(), _parse_value)
    explicit = None
    if a.runs:
        explicit = json.loads(Path(a.runs).read_text()) if Path(a.runs).exists() else None
        if not isinstance(explicit, list) or not all(isinstance(r, dict) for r in explicit):
            raise CommandError(f"--runs {a.runs}: expected a JSON file holding a list of {{key: value}} objects")
    if not grid and not explicit:
        raise CommandError("nothing to sweep: give --grid KEY=V1,V2 (repeatable) and/or --runs FILE.json")
    from recon_kit import runs

    if a.search == "random":  # a seeded draw from the grid's values: the same command names the same runs
        from recon_kit.ray_engine import random_params

        if not grid:
            raise CommandError("--search random draws from --grid values: give --grid KEY=V1,V2,...")
        explicit = random_params(grid, a.num_samples, a.seed) + (explicit or [])
        grid = {}

    base = _overrides(a.set)
    out = Path(a.out)
    if a.dataset == "demo":
        from recon_kit.config import resolve

        dataset = runs.demo_dataset(out / "data", resolve(a.preset, base).data.resolution)
    else:
        dataset = _existing_dir(a.dataset, "dataset folder")
    sweep = runs.Sweep(out, dataset, grid=grid, runs=explicit, preset=a.preset, base=base, engine=a.engine,
                       timeout=a.timeout)
    if a.dry_run:
        print(sweep.plan().to_string())
        return 0
    ray = _ray_options(a, sweep=True)
    table = sweep.run(progress=not a.no_progress, retry_failed=a.retry_failed, rerun=a.rerun, ray=ray)
    table = table.loc[[n for n in sweep.names if n in table.index]]
    print(runs.summary(table).to_string())
    print(f"sweep folder: {out} (manifest: {sweep.manifest_path})")
    failed = table.index[table["status"] != "finished"].tolist()
    if failed:
        print(f"recon-kit sweep: {len(failed)} of {len(table)} runs did not finish: {', '.join(failed)} "
              f"(see error.txt in their folders)", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _ray_options(a: argparse.Namespace, sweep: bool = False) -> dict[str, Any] | None:
    """The ray engine's options the user set (``--engine ray``), or None for the sequential engine."""
    if a.engine != "ray":
        ray_flags = [f for f in ("address", "gpus_per_trial", "scheduler") if getattr(a, f, None) is not None]
        if ray_flags or (sweep and a.search == "optuna"):
            raise CommandError("--address, --gpus-per-trial, --scheduler and --search optuna need --engine ray")
        return None
    opts = {"address": a.address, "num_cpus": a.num_cpus, "gpus_per_trial": a.gpus_per_trial,
            "cpus_per_trial": a.cpus_per_trial, "scheduler": a.scheduler, "metric": a.metric,
            "grace_period": a.grace_period, "max_retries": a.max_retries, "max_concurrent": a.max_concurrent}
    if sweep and a.search == "optuna":
        opts.update(search="optuna", num_samples=a.num_samples, seed=a.seed)
    return {k: v for k, v in opts.items() if v is not None}


def cmd_batch(a: argparse.Namespace) -> int:
    _existing_dir(a.captures_dir, "captures folder")
    from recon_kit.batch import Batch

    prepare = {k: v for k, v in {"mask_source": a.mask_source, "align": a.align}.items() if v is not None}
    b = Batch(a.captures_dir, a.out, preset=a.preset, base=_overrides(a.set), resolution=a.resolution,
              prepare=prepare)
    if a.dry_run:
        print(b.plan().to_string())
        return 0
    summary = b.run(progress=not a.no_progress, rerun=a.rerun, retry_failed=a.retry_failed, ray=_ray_options(a))
    print(summary.to_string())
    print(f"batch folder: {a.out} (manifest: {b.manifest_path})")
    failed = summary.index[summary["status"] != "finished"].tolist()
    if failed:
        print(f"recon-kit batch: {len(failed)} of {len(summary)} captures did not finish: {', '.join(failed)} "
              f"(see error.txt in their folders)", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine ray`` options (docs/ray.md), shared by sweep and batch."""
    g = parser.add_argument_group("ray engine (--engine ray; needs pip install recon-kit[cluster])")
    g.add_argument("--address", default=None,
                   help="join a running Ray cluster ('auto', or ray://HEAD:10001); default: start a local one")
    g.add_argument("--num-cpus", type=int, default=None, help="local Ray only: CPUs it may use (default: all)")
    g.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs each run gets, fractions share a GPU (default: 1 when Ray sees GPUs, else CPU-only)")
    g.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs each run gets (default: 1)")
    g.add_argument("--scheduler", choices=["asha"], default=None,
                   help="ASHA early stopping on --metric at the trainer's log steps (stopped runs: status stopped)")
    g.add_argument("--metric", default=None,
                   help="metric reported at each log step: total (loss, default) or test_psnr (held-out views)")
    g.add_argument("--grace-period", type=int, default=None, help="ASHA: log steps before a run can be stopped (2)")
    g.add_argument("--max-retries", type=int, default=None, help="retries of a crashing run before it is failed (1)")
    g.add_argument("--max-concurrent", type=int, default=None, help="at most this many runs at once")


# parser ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recon-kit",
        description="Multi-view photos (+ depth) to a textured, relightable mesh. "
        "The same steps as notebooks/01..04, from a terminal.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    # --debug is accepted after the subcommand too; SUPPRESS keeps the subparser from resetting it to False
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser(
        "demo", parents=[common],
        help="run notebooks 01..04 through papermill (demo object or a capture folder)",
        description="Run notebooks 01..04 in order through papermill; executed copies go to "
        "OUTPUT_DIR/notebooks, the trained run to OUTPUT_DIR/run.",
    )
    d.add_argument("--output-dir", default="outputs/demo", help="where everything goes (default: %(default)s)")
    d.add_argument("--dataset", default="demo",
                   help="'demo' (built-in synthetic object) or a capture folder, e.g. ../shared/datasets/shoe")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    d.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    d.add_argument("--quick", action="store_true", help="smallest settings (smoke run)")
    d.add_argument("--preset", default=None, help="training preset (default: cpu-small on CPU, gpu-default on CUDA)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="training config override (repeatable)")
    d.add_argument("--gt-mesh", default=None, help="ground-truth mesh for 04 (default: the demo object's)")
    d.add_argument("--timeout", type=float, default=None, help="per-cell time limit in seconds (default: none)")
    d.add_argument("--log-output", action="store_true", help="stream the notebooks' output to this terminal")
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser(
        "prepare", parents=[common], help="capture folder -> dataset folder (recon_kit.data.prepare_dataset)")
    pr.add_argument("input_dir", help="capture folder (multi_views/, depth_renders/, transforms.json?)")
    pr.add_argument("output_dir", help="dataset folder to write (transforms.json, train/, depth/)")
    pr.add_argument("--resolutions", type=int, nargs="+", default=None, help="longest image side of each dataset to write, e.g. 512 1024")
    pr.add_argument("--mask-source", default=None, help="where masks come from (e.g. depth, alpha, background)")
    pr.add_argument("--align", action=argparse.BooleanOptionalAction, default=None, help="move each depth mask onto its photo (shift + uniform scale)")
    pr.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    pr.set_defaults(func=cmd_prepare)

    cp = sub.add_parser(
        "check-poses", parents=[common], help="visual-hull pose check of a dataset (recon_kit.posecheck.check_poses)")
    cp.add_argument("dataset_dir", help="prepared dataset folder (with transforms.json)")
    cp.add_argument("--output-dir", default=None, help="also write posecheck.txt and posecheck.csv there")
    cp.add_argument("--grid-res", type=int, default=None, help="voxel grid resolution of the hull (default 64)")
    cp.add_argument("--resolution", type=int, default=None, help="which <res>/ folder to load (default: largest)")
    cp.add_argument("--mesh-scale", type=float, default=None, help="side of the checked volume (default 2.0)")
    cp.add_argument("--write-corrected", action="store_true",
                    help="write <transforms>_corrected.json beside the dataset's transforms.json with the fixes")
    cp.add_argument("--apply-calibration", action="store_true",
                    help="with --write-corrected: also write the scanned camera_angle_x (object size kept)")
    cp.add_argument("--overwrite", action="store_true", help="replace an existing *_corrected.json")
    cp.set_defaults(func=cmd_check_poses)

    tr = sub.add_parser("train", parents=[common], help="train a mesh (recon_kit.train.train_from_config)")
    tr.add_argument("config", help="preset name (cpu-small, gpu-default, ...) or a config file")
    tr.add_argument("--dataset-dir", required=True, help="prepared dataset folder")
    tr.add_argument("--run-dir", required=True, help="run folder, e.g. outputs/shoe")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace a non-empty --run-dir")
    tr.add_argument("--nproc", type=int, default=1, metavar="N",
                    help="data-parallel training in N processes (one per GPU) through torchrun (default: 1)")
    tr.set_defaults(func=cmd_train)

    sw = sub.add_parser(
        "sweep", parents=[common], help="train a grid or list of parameter sets, one run folder each (recon_kit.runs)",
        description="Train every combination of the --grid values (and the --runs sets), each into OUT/<params> "
        "(e.g. OUT/pass1.lr_mat=0.01__geometry.grid_res=32), with OUT/sweep.json as the manifest. Finished runs "
        "are skipped when the sweep runs again; a failed run leaves error.txt and the others go on "
        "(exit status 1 when any failed). Compare them with notebooks/05_compare_runs.ipynb.",
    )
    sw.add_argument("--dataset", required=True,
                    help="prepared dataset folder, or 'demo' (the synthetic object, prepared into OUT/data)")
    sw.add_argument("--out", required=True, help="sweep folder, e.g. outputs/sweeps/lr")
    sw.add_argument("--preset", default="cpu-small",
                    help="preset or config file every run starts from (default: %(default)s)")
    sw.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                    help="a swept config key and its values (repeatable: every combination runs)")
    sw.add_argument("--runs", metavar="FILE.json", help="explicit parameter sets: a JSON list of {key: value} objects")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every run (repeatable)")
    sw.add_argument("--engine", default="trainer", choices=["trainer", "papermill", "ray"],
                    help="train in this process, execute notebooks/03_train.ipynb per run, or schedule the runs on "
                    "Ray Tune (docs/ray.md) (default: %(default)s)")
    sw.add_argument("--search", default="grid", choices=["grid", "random", "optuna"],
                    help="every --grid combination; --num-samples random draws from the --grid values (seeded); "
                    "or Optuna's sampler over them (--engine ray) (default: %(default)s)")
    sw.add_argument("--num-samples", type=int, default=8, help="random/optuna search: runs to draw (default: 8)")
    sw.add_argument("--seed", type=int, default=0, help="random/optuna search: sampler seed (default: 0)")
    sw.add_argument("--rerun", action="store_true", help="train finished runs again")
    sw.add_argument("--no-retry-failed", dest="retry_failed", action="store_false", help="leave failed runs as they are")
    sw.add_argument("--timeout", type=float, default=None, help="papermill engine: per-cell time limit in seconds")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and their status; train nothing")
    _add_ray_arguments(sw)
    sw.set_defaults(func=cmd_sweep)

    ba = sub.add_parser(
        "batch", parents=[common], help="prepare and reconstruct every capture folder under a directory "
        "(recon_kit.batch)",
        description="Every folder under CAPTURES_DIR that holds multi_views/ is prepared (OUT/_datasets/NAME) and "
        "trained into OUT/NAME (capture A/B -> OUT/A-B), then a summary table (time, faces, PSNR, IoU, the reason "
        "of each failure) is printed. Re-running skips finished captures (exit status 1 when any failed).",
    )
    ba.add_argument("captures_dir", help="folder of capture folders (each with multi_views/, depth_renders/?)")
    ba.add_argument("--out", required=True, help="batch folder, e.g. outputs/catalogue")
    ba.add_argument("--preset", default="cpu-small", help="preset or config file of every run (default: %(default)s)")
    ba.add_argument("--resolution", type=int, default=None, help="image size to prepare and train at "
                    "(default: the preset's data.resolution)")
    ba.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every run (repeatable)")
    ba.add_argument("--mask-source", default=None, help="prepare: where masks come from (depth, alpha, background)")
    ba.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                    help="prepare: move each depth mask onto its photo")
    ba.add_argument("--engine", default="trainer", choices=["trainer", "ray"],
                    help="one capture after another in this process, or on Ray Tune (default: %(default)s)")
    ba.add_argument("--rerun", action="store_true", help="reconstruct finished captures again")
    ba.add_argument("--no-retry-failed", dest="retry_failed", action="store_false",
                    help="leave failed captures as they are")
    ba.add_argument("--no-progress", action="store_true", help="no progress bar")
    ba.add_argument("--dry-run", action="store_true", help="list the captures and their status; train nothing")
    _add_ray_arguments(ba)
    ba.set_defaults(func=cmd_batch)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("recon-kit: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"recon-kit {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        if args.debug:
            raise
        from recon_kit.notebooks import NotebookFailed

        if isinstance(err, (NotebookFailed, RuntimeError)):
            print(f"recon-kit {args.command}: failed: {str(err).splitlines()[0]}", file=sys.stderr)
            print("(rerun with --debug for the traceback)", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())

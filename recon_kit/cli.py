"""``recon-kit`` / ``python -m recon_kit.cli``: the notebooks' steps from a terminal, generated with tyro.

Each subcommand is a typed dataclass whose fields carry the library function's parameter names and defaults (the
notebooks' parameters cells use the same names; tests/test_cli.py checks they agree); help comes from the
attribute docstrings. ``train`` also takes every :class:`~recon_kit.config.ReconConfig` field as a typed flag
(``--pass1.iterations 300``), besides ``--set key=value``. Under torchrun (``recon-kit train --nproc N`` starts
it) ``train`` runs one data-parallel process. Subcommands import their modules only when they run, so
``recon-kit --help`` stays fast (no torch import). Errors about inputs (ValueError, FileNotFoundError,
FileExistsError and their subclasses) print one line and exit with status 2; ``--debug`` (anywhere on the line)
shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import tyro

from recon_kit.config import ReconConfig, field_docs, parse_overrides, parse_value

EXIT_USAGE = 2  # bad input: argparse errors, missing files, invalid values
EXIT_FAILED = 1  # a step ran and failed (a notebook cell raised, a module is missing)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
PROG = "recon-kit"

Sets = Annotated[tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="KEY=VALUE")]


class CommandError(ValueError):
    """An error message for the user, printed without a traceback."""


def _unfinished(table, command: str, noun: str) -> int:
    """Exit status of a sweep or batch from its run table: EXIT_FAILED, with one line naming the rows that did
    not finish, or 0."""
    failed = table.index[table["status"] != "finished"].tolist()
    if not failed:
        return 0
    print(f"recon-kit {command}: {len(failed)} of {len(table)} {noun} did not finish: {', '.join(failed)} "
          f"(see error.txt in their folders)", file=sys.stderr)
    return EXIT_FAILED


def _existing_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} {p} is not a folder")
    return p.resolve()


def _workspace(path: Path | None):
    """The :class:`~recon_kit.runs.workspace.Workspace` of ``--workspace`` (None without it): the notebooks' rule
    for default paths, so a command and a notebook given the same workspace read and write the same folders."""
    if path is None:
        return None
    from recon_kit.runs.workspace import Workspace

    return Workspace(path)


def _config_overrides_type() -> type:
    """A dataclass mirroring :class:`ReconConfig` with every field optional (None = keep the preset's value)."""
    def mirror(cls: type, name: str) -> type:
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        fields = []
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                sub = mirror(hint, f"{f.name.capitalize()}Overrides")
                fields.append((f.name, Annotated[sub, tyro.conf.arg(help=docs.get(f.name, ""))],
                               dataclasses.field(default_factory=sub)))
            else:
                fields.append((f.name, Annotated[Optional[hint], tyro.conf.arg(help=docs.get(f.name, ""))],
                               dataclasses.field(default=None)))
        return dataclasses.make_dataclass(name, fields)

    return mirror(ReconConfig, "ConfigOverrides")


ConfigOverrides = _config_overrides_type()


def _typed_overrides(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_typed_overrides(value, f"{prefix}{f.name}."))
        elif value is not None:
            out[prefix + f.name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass
class RayFlags:
    """``--engine ray`` options (docs/ray.md; needs ``pip install recon-kit[cluster]``), shared by sweep and batch;
    unset ones keep :class:`recon_kit.runs.ray_engine.RayOptions`' defaults."""

    address: Optional[str] = None
    """Join a running Ray cluster ('auto', or ray://HEAD:10001); default: start a local one."""
    num_cpus: Optional[int] = None
    """Local Ray only: CPUs it may use (default: all)."""
    gpus_per_trial: Optional[float] = None
    """GPUs each run gets, fractions share a GPU (default: 1 when Ray sees GPUs, else CPU-only)."""
    cpus_per_trial: Optional[float] = None
    """CPUs each run gets (default: 1)."""
    scheduler: Optional[Literal["asha"]] = None
    """ASHA early stopping on --metric at the trainer's log steps (stopped runs: status stopped)."""
    metric: Optional[str] = None
    """Metric reported at each log step: total (loss, default) or test_psnr (held-out views)."""
    grace_period: Optional[int] = None
    """ASHA: log steps before a run can be stopped (2)."""
    max_retries: Optional[int] = None
    """Retries of a crashing run before it is failed (1)."""
    max_concurrent: Optional[int] = None
    """At most this many runs at once."""

    def options(self, engine: str, search: str = "grid", num_samples: int = 8, seed: int = 0
                ) -> dict[str, Any] | None:
        """The RayOptions fields the user set, or None for the sequential engines (where ray flags are errors)."""
        if engine != "ray":
            if any(v is not None for v in (self.address, self.gpus_per_trial, self.scheduler)) or search == "optuna":
                raise CommandError("--address, --gpus-per-trial, --scheduler and --search optuna need --engine ray")
            return None
        opts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if search == "optuna":
            opts.update(search="optuna", num_samples=num_samples, seed=seed)
        return {k: v for k, v in opts.items() if v is not None}


RayArgs = Annotated[RayFlags, tyro.conf.arg(name="")]


# subcommands ----------------------------------------------------------------------------------------------------
@dataclass
class Demo:
    """Run notebooks 01..04 in order through papermill; executed copies go to OUTPUT_DIR/notebooks, the trained run
    to OUTPUT_DIR/run (recon_kit.notebooks.run_demo)."""

    output_dir: Path = Path("outputs/demo")
    """Where everything goes; a workspace (data/, posecheck/, run/) that later commands take as --workspace."""
    dataset: str = "demo"
    """'demo' (built-in synthetic object) or a capture folder, e.g. ../shared/datasets/shoe."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device for training and rendering."""
    overwrite: bool = False
    """Replace a non-empty output folder."""
    quick: bool = False
    """Smallest settings (smoke run)."""
    preset: Optional[str] = None
    """Training preset (default: cpu-small on CPU, gpu-default on CUDA)."""
    set: Sets = ()
    """Training config override KEY=VALUE (repeatable)."""
    gt_mesh: Optional[str] = None
    """Ground-truth mesh for 04 (default: the demo object's)."""
    timeout: Optional[float] = None
    """Per-cell time limit in seconds (default: none)."""
    log_output: bool = False
    """Stream the notebooks' output to this terminal."""

    def run(self) -> int:
        if self.dataset != "demo":
            _existing_dir(self.dataset, "dataset folder")
        from recon_kit.notebooks import run_demo

        run_demo(output_dir=self.output_dir, dataset=self.dataset, device=self.device, overwrite=self.overwrite,
                 quick=self.quick, preset=self.preset, overrides=parse_overrides(list(self.set)),
                 gt_mesh=self.gt_mesh, timeout=self.timeout, log_output=self.log_output)
        return 0


@dataclass
class Prepare:
    """Capture folder -> dataset folder, one <res>/ folder per resolution (recon_kit.data.dataset.prepare_dataset;
    notebook 01 step by step)."""

    input_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="INPUT_DIR")]
    """Capture folder (multi_views/, depth_renders/, transforms.json?)."""
    output_dir: Annotated[Path | None, tyro.conf.Positional, tyro.conf.arg(metavar="OUTPUT_DIR")] = None
    """Dataset folder to write (transforms.json, train/, depth/ per resolution); default: <workspace>/data."""
    workspace: Path | None = None
    """Workspace folder (e.g. outputs/shoe) whose data/ receives the dataset when OUTPUT_DIR is not given."""
    resolutions: tuple[int, ...] = (512,)
    """Longest image side of each dataset to write, e.g. 512 1024."""
    mask_source: Literal["depth", "alpha", "background"] = "depth"
    """Where masks come from: depth > 0, the photos' alpha, or a near-white background."""
    align: bool = False
    """Move each depth map onto its photo (shift + uniform scale maximising mask IoU)."""
    trim_px: float = 0.0
    """Trim each mask's rim (this many px at 1024 px width) where the photo shows its background (0 = off; 8 for
    hand-framed captures whose depth masks were aligned to the photos, like the shoe)."""
    camera_angle_x: float = 0.85
    """Horizontal field of view (radians) of the axis rig, used without transforms.json."""
    distance: float = 3.0
    """Camera distance of the axis rig, used without transforms.json."""
    overwrite: bool = False
    """Replace existing <output_dir>/<res>/ folders."""
    allow_missing: bool = False
    """Skip frames whose photo (or photos whose frame) is missing, instead of stopping."""

    def run(self) -> int:
        src = _existing_dir(self.input_dir, "input folder")
        ws = _workspace(self.workspace)
        if self.output_dir is None and ws is None:
            raise CommandError("give OUTPUT_DIR or --workspace DIR (the dataset then goes to DIR/data)")
        output_dir = Path(self.output_dir if self.output_dir is not None else ws.data_dir).resolve()
        from recon_kit.data.dataset import prepare_dataset

        result = prepare_dataset(src, output_dir, self.resolutions, mask_source=self.mask_source,
                                 align=self.align, camera_angle_x=self.camera_angle_x, distance=self.distance,
                                 overwrite=self.overwrite, allow_missing=self.allow_missing, trim_px=self.trim_px)
        print(f"prepared dataset: {result if result is not None else output_dir}")
        return 0


@dataclass
class CheckPoses:
    """Visual-hull pose check of a dataset: per-view consistency, roll/mirror fixes, camera_angle_x scan
    (recon_kit.posecheck.run_check; notebook 02)."""

    dataset_dir: Annotated[Path | None, tyro.conf.Positional, tyro.conf.arg(metavar="DATASET_DIR")] = None
    """Prepared dataset folder (with transforms.json, or the parent of <res>/ folders); default: the largest
    (or --resolution) <res>/ folder in <workspace>/data."""
    workspace: Path | None = None
    """Workspace folder (e.g. outputs/shoe): DATASET_DIR and --output-dir default to its data/<res> and posecheck/."""
    transforms: str = ""
    """Transforms file whose poses are checked (empty: the transforms.json of dataset_dir)."""
    output_dir: Optional[Path] = None
    """Also write report.txt and consistency.csv there (default: <workspace>/posecheck with --workspace)."""
    grid_res: int = 64
    """Visual-hull grid resolution per axis."""
    mesh_scale: float = 2.1
    """Side of the checked cube centred at the origin (the training config's geometry.mesh_scale)."""
    mask_size: int = 128
    """Masks are area-downsampled to this longest side for the checks."""
    resolution: Optional[int] = None
    """Which <res>/ folder to load (default: the largest)."""
    run_calibration: bool = True
    """Scan camera_angle_x for the value that makes the silhouettes most consistent."""
    write_corrected: bool = False
    """Write <transforms>_corrected.json beside the checked file when fixes are found."""
    apply_calibration: bool = False
    """With --write-corrected: also write the scanned camera_angle_x (positions scaled, object size kept)."""
    overwrite: bool = False
    """Replace an existing *_corrected.json / report.txt."""

    def run(self) -> int:
        ws = _workspace(self.workspace)
        if self.dataset_dir is None and ws is None:
            raise CommandError("give DATASET_DIR or --workspace DIR (its largest prepared data/<res> is checked)")
        resolution = self.resolution
        if self.dataset_dir is not None:
            ds = _existing_dir(self.dataset_dir, "dataset folder")
        else:
            ds, resolution = ws.dataset(self.resolution).resolve(), None  # the <res>/ folder itself: nothing to pick
        output_dir = self.output_dir if self.output_dir is not None or ws is None else ws.posecheck_dir
        from recon_kit.posecheck import run_check

        check = run_check(ds, self.transforms, grid_res=self.grid_res, mesh_scale=self.mesh_scale,
                          mask_size=self.mask_size, run_calibration=self.run_calibration,
                          write_corrected=self.write_corrected, apply_calibration=self.apply_calibration,
                          overwrite=self.overwrite, output_dir=output_dir, resolution=resolution)
        print(check.report.summary())
        if check.written is not None:
            print(f"corrected transforms written to {check.written} (the original is untouched)")
        elif self.write_corrected:
            print("nothing to correct: no fixes found (add --apply-calibration to write the scanned angle)")
        if output_dir is not None:
            print(f"report written to {output_dir}")
        return 0


@dataclass
class Train:
    """Train a mesh: pass 1, bake, pass 2, export, evaluate (recon_kit.runs.run.train_from_config; notebook 03).
    With --nproc N, N data-parallel processes through torchrun (docs/distributed.md)."""

    preset: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PRESET")]
    """Preset name (cpu-small, gpu-default, gpu-fast, gpu-minute, gpu-calibrated, seed-nvdiffrec) or a config JSON file (kit or nvdiffrec format); under
    torchrun also 'auto' (gpu-default on CUDA, cpu-small on the CPU)."""
    dataset_dir: Path | None = None
    """Prepared dataset folder (default: the largest data/<res> of --workspace)."""
    run_dir: Path | None = None
    """Run folder, e.g. outputs/shoe/run (never overwritten silently); default: a new time-stamped
    <workspace>/runs/<UTC time>_<id>."""
    workspace: Path | None = None
    """Workspace folder (e.g. outputs/shoe) from which --dataset-dir and --run-dir follow when not given."""
    set: Sets = ()
    """Config override KEY=VALUE (repeatable), e.g. --set pass1.iterations=300."""
    config: Annotated[ConfigOverrides, tyro.conf.arg(name="")] = dataclasses.field(default_factory=ConfigOverrides)
    """Config fields as typed flags (unset ones keep the preset's value)."""
    resume: bool = False
    """Continue the run in --run-dir from its checkpoint."""
    overwrite: bool = False
    """Replace a non-empty --run-dir."""
    allow_changes: bool = False
    """With --resume: continue with settings that differ from the run's config.json (recorded there)."""
    nproc: int = 1
    """Data-parallel training in N processes (one per GPU) through torchrun."""
    progress: bool = True
    """Show a progress bar."""

    def overrides(self) -> dict[str, Any]:
        return {**_typed_overrides(self.config), **parse_overrides(list(self.set))}

    def paths(self, distributed: bool = False) -> tuple[Path, Path]:
        """The dataset and run folders: the explicit ones, else the workspace's (as notebook 03 picks them)."""
        ws = _workspace(self.workspace)
        if ws is None and (self.dataset_dir is None or self.run_dir is None):
            raise CommandError("give --dataset-dir and --run-dir, or --workspace DIR (data from DIR/data, the run "
                               "into a new DIR/runs/<UTC time>)")
        ds = _existing_dir(self.dataset_dir, "dataset folder") if self.dataset_dir is not None else \
            ws.dataset().resolve()
        if self.run_dir is not None:
            return ds, Path(self.run_dir).resolve()
        if self.resume:
            raise CommandError("--resume continues one run: give it as --run-dir (--workspace alone starts a new one)")
        if distributed:
            raise CommandError("under torchrun give --run-dir (each process would pick its own time-stamped folder); "
                               "recon-kit train --nproc N picks one for all")
        from recon_kit.runs.folder import new_run_path

        return ds, new_run_path(ws.runs_dir).resolve()

    def run(self) -> int:
        distributed = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ  # one process of a torchrun launch
        ds, run_dir = self.paths(distributed)
        config = self.preset
        looks_like_file = config.endswith((".json", ".yaml", ".yml", ".toml")) or "/" in config
        if looks_like_file and not Path(config).exists():
            raise FileNotFoundError(f"config file {config} does not exist")
        cfg = str(Path(config).resolve()) if looks_like_file else config
        if distributed:
            from recon_kit.runs.launch import train_distributed

            train_distributed(ds, None if cfg == "auto" else cfg, run_dir, self.overrides(), resume=self.resume, overwrite=self.overwrite,
                              progress=self.progress)
            return 0
        if self.nproc != 1:
            if self.nproc < 1:
                raise CommandError(f"--nproc must be >= 1, got {self.nproc}")
            from recon_kit.runs.launch import launch

            rc = launch(self.nproc, ds, cfg, run_dir, self.overrides(), resume=self.resume, overwrite=self.overwrite,
                        progress=self.progress, check=False).returncode
            return EXIT_FAILED if rc else 0
        from recon_kit.runs.run import train_from_config

        if self.allow_changes and not self.resume:
            raise CommandError("--allow-changes goes with --resume (it allows resuming with changed settings)")
        result = train_from_config(cfg, ds, run_dir, self.overrides(), self.resume, overwrite=self.overwrite,
                                   progress=self.progress, allow_changes=self.allow_changes)
        print(json.dumps(result, indent=2, default=str))
        print(f"run folder: {run_dir}")
        return 0


@dataclass
class Sweep:
    """Train every combination of the --grid values (and the --runs sets), each into OUT/<params> (e.g.
    OUT/pass1.lr_mat=0.01__geometry.grid_res=32), with OUT/sweep.json as the manifest. Finished runs are skipped
    when the sweep runs again; a failed run leaves error.txt and the others go on (exit status 1 when any
    failed). Compare them with notebooks/05_compare_runs.ipynb (recon_kit.runs.sweep.Sweep)."""

    dataset: str
    """Prepared dataset folder, or 'demo' (the synthetic object, prepared into OUT/data)."""
    out: Path
    """Sweep folder, e.g. outputs/sweeps/lr."""
    preset: str = "cpu-small"
    """Preset or config file every run starts from."""
    grid: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="KEY=V1,V2")] = ()
    """A swept config key and its values (repeatable: every combination runs)."""
    runs: Optional[Path] = None
    """Explicit parameter sets: a JSON file holding a list of {key: value} objects."""
    set: Sets = ()
    """Config override KEY=VALUE for every run (repeatable)."""
    engine: Literal["trainer", "papermill", "ray"] = "trainer"
    """Train in this process, execute notebooks/03_train.ipynb per run, or schedule the runs on Ray Tune
    (docs/ray.md)."""
    search: Literal["grid", "random", "optuna"] = "grid"
    """Every --grid combination; --num-samples random draws from the --grid values (seeded); or Optuna's sampler
    over them (--engine ray)."""
    num_samples: int = 8
    """Random/optuna search: runs to draw."""
    seed: int = 0
    """Random/optuna search: sampler seed."""
    rerun: bool = False
    """Train finished runs again."""
    retry_failed: bool = True
    """Train failed runs again."""
    timeout: Optional[float] = None
    """Papermill engine: per-cell time limit in seconds."""
    progress: bool = True
    """Show a progress bar."""
    dry_run: bool = False
    """List the runs and their status; train nothing."""
    ray: RayArgs = dataclasses.field(default_factory=RayFlags)
    """Ray engine options (--engine ray)."""

    def run(self) -> int:
        from recon_kit.runs.sweep import parse_grid_values

        grid: dict[str, list[Any]] = {}
        for spec in self.grid:
            key, sep, values = spec.partition("=")
            if not sep or not key.strip() or not values.strip():
                raise CommandError(f"--grid expects KEY=V1,V2,... (e.g. --grid pass1.lr_mat=0.01,0.03), got {spec!r}")
            if key.strip() in grid:
                raise CommandError(f"--grid {key.strip()} is given twice; list all its values in one --grid")
            grid[key.strip()] = parse_grid_values(values.strip(), parse_value)
        explicit = None
        if self.runs:
            explicit = json.loads(Path(self.runs).read_text()) if Path(self.runs).exists() else None
            if not isinstance(explicit, list) or not all(isinstance(r, dict) for r in explicit):
                raise CommandError(f"--runs {self.runs}: expected a JSON file holding a list of {{key: value}} objects")
        if not grid and not explicit:
            raise CommandError("nothing to sweep: give --grid KEY=V1,V2 (repeatable) and/or --runs FILE.json")
        from recon_kit.runs import sweep as rk_sweep
        from recon_kit.runs import table as rk_table

        if self.search == "random":  # a seeded draw from the grid's values: the same command names the same runs
            from recon_kit.runs.ray_engine import random_params

            if not grid:
                raise CommandError("--search random draws from --grid values: give --grid KEY=V1,V2,...")
            explicit = random_params(grid, self.num_samples, self.seed) + (explicit or [])
            grid = {}

        base = parse_overrides(list(self.set))
        out = Path(self.out)
        if self.dataset == "demo":
            from recon_kit.config import resolve

            dataset = rk_sweep.demo_dataset(out / "data", resolve(self.preset, base).data.resolution)
        else:
            dataset = _existing_dir(self.dataset, "dataset folder")
        sweep = rk_sweep.Sweep(out, dataset, grid=grid, runs=explicit, preset=self.preset, base=base,
                               engine=self.engine, timeout=self.timeout)
        if self.dry_run:
            print(sweep.plan().to_string())
            return 0
        ray = self.ray.options(self.engine, self.search, self.num_samples, self.seed)
        table = sweep.run(progress=self.progress, retry_failed=self.retry_failed, rerun=self.rerun, ray=ray)
        table = table.loc[[n for n in sweep.names if n in table.index]]
        print(rk_table.summary(table).to_string())
        print(f"sweep folder: {out} (manifest: {sweep.manifest_path})")
        return _unfinished(table, "sweep", "runs")


@dataclass
class Batch:
    """Prepare and reconstruct every capture folder under CAPTURES_DIR (recon_kit.runs.batch.Batch): each folder
    holding multi_views/ is prepared (OUT/_datasets/NAME) and trained into OUT/NAME (capture A/B -> OUT/A-B), then
    a summary table (time, faces, PSNR, IoU, the reason of each failure) is printed. Re-running skips finished
    captures (exit status 1 when any failed)."""

    captures_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CAPTURES_DIR")]
    """Folder of capture folders (each with multi_views/, depth_renders/?)."""
    out: Path
    """Batch folder, e.g. outputs/catalogue."""
    preset: str = "cpu-small"
    """Preset or config file of every run."""
    resolution: Optional[int] = None
    """Image size to prepare and train at (default: the preset's data.resolution)."""
    set: Sets = ()
    """Config override KEY=VALUE for every run (repeatable)."""
    mask_source: Literal["depth", "alpha", "background"] = "depth"
    """Prepare: where masks come from: depth > 0, the photos' alpha, or a near-white background."""
    align: bool = False
    """Prepare: move each depth mask onto its photo."""
    engine: Literal["trainer", "ray"] = "trainer"
    """One capture after another in this process, or on Ray Tune (docs/ray.md)."""
    rerun: bool = False
    """Reconstruct finished captures again."""
    retry_failed: bool = True
    """Reconstruct failed captures again."""
    progress: bool = True
    """Show a progress bar."""
    dry_run: bool = False
    """List the captures and their status; train nothing."""
    ray: RayArgs = dataclasses.field(default_factory=RayFlags)
    """Ray engine options (--engine ray)."""

    def run(self) -> int:
        captures = _existing_dir(self.captures_dir, "captures folder")
        from recon_kit.runs.batch import Batch as RunBatch

        b = RunBatch(captures, self.out, preset=self.preset, base=parse_overrides(list(self.set)),
                     resolution=self.resolution, prepare={"mask_source": self.mask_source, "align": self.align})
        if self.dry_run:
            print(b.plan().to_string())
            return 0
        summary = b.run(progress=self.progress, rerun=self.rerun, retry_failed=self.retry_failed,
                        ray=self.ray.options(self.engine))
        print(summary.to_string())
        print(f"batch folder: {self.out} (manifest: {b.manifest_path})")
        return _unfinished(summary, "batch", "captures")


COMMANDS = {"demo": Demo, "prepare": Prepare, "check-poses": CheckPoses, "train": Train, "sweep": Sweep,
            "batch": Batch}
DESCRIPTION = ("Multi-view photos (+ depth) to a textured, relightable mesh: the same steps as notebooks/01..04, "
               "from a terminal. --debug (anywhere) shows full tracebacks instead of one-line errors.")


def _command_type() -> Any:
    return typing.Union[tuple(Annotated[cls, tyro.conf.subcommand(name)] for name, cls in COMMANDS.items())]


def build_parser():
    """The argparse parser tyro generates (for tests and shell completion)."""
    return tyro.extras.get_parser(_command_type(), prog=PROG, description=DESCRIPTION)


def parse(argv: list[str] | None = None):
    """The subcommand object for ``argv`` (tyro exits with status 2 on usage errors)."""
    return tyro.cli(_command_type(), args=argv, prog=PROG, description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not any(a in COMMANDS or a in ("-h", "--help") for a in argv):
        print(f"usage: {PROG} [-h] {{{','.join(COMMANDS)}}} ...\n{PROG}: error: choose a command "
              f"({', '.join(COMMANDS)}); {PROG} --help lists them", file=sys.stderr)
        return EXIT_USAGE
    command = parse(argv)
    name = next(k for k, v in COMMANDS.items() if isinstance(command, v))
    try:
        return int(command.run() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("recon-kit: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, OSError) and err.errno is not None:  # raised by the OS, not by the kit
            from recon_kit.io.fsio import describe_os_error

            msg = describe_os_error(err)
        print(f"recon-kit {name}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # permission denied, read-only, disk full, a file that vanished: one line, path + fix
        if debug:
            raise
        from recon_kit.io.fsio import describe_os_error

        print(f"recon-kit {name}: error: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:
        if debug:
            raise
        from recon_kit.runs.notebook import NotebookFailed

        if isinstance(err, (NotebookFailed, RuntimeError)):
            print(f"recon-kit {name}: failed: {str(err).splitlines()[0]}", file=sys.stderr)
            print("(rerun with --debug for the traceback)", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())

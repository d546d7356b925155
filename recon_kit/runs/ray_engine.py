"""Sweeps and batches on Ray Tune: the same run folders, scheduled over the GPUs and machines Ray sees.

Every trial is one run of a :class:`recon_kit.runs.sweep.Sweep` (or one capture of a :class:`recon_kit.runs.batch.Batch`):
it trains on a Ray worker through the sweep's own single-run code (``Sweep._run_one``: resume from the run
folder's checkpoint, ``error.txt`` on failure, ``log.txt``), so the folder names, ``sweep.json`` and the run
table are exactly the sequential engine's. Ray Tune adds what one process cannot do::

    from recon_kit.runs import sweep as runs
    from recon_kit.runs.ray_engine import RayOptions
    sweep = runs.Sweep("outputs/sweeps/lr", "outputs/demo/data", grid={"pass1.lr_mat": [0.01, 0.03]},
                       engine="ray")
    sweep.run(ray=RayOptions(gpus_per_trial=0.5, scheduler="asha"))

- resources: ``gpus_per_trial`` (default: 1 when the cluster has GPUs, else CPU-only trials; fractions share a
  GPU), ``cpus_per_trial``; ``address`` joins a running cluster (``"auto"`` or ``"ray://head:10001"``), else a
  local one is started (``num_cpus``/``num_gpus`` bound it);
- search: the sweep's grid/list as given (random search: :func:`random_params` draws the list), or
  ``search="optuna"`` with ``num_samples`` trials drawn from the grid's values;
- ``scheduler="asha"``: early stopping on ``metric`` (the training loss ``total`` by default, or ``test_psnr``
  on held-out views) reported at every log step (``log_every``); a stopped run gets ``stopped.json`` and the
  status ``stopped`` in the run table (not ``failed``) and is not trained again when the sweep re-runs;
- a trial that raises is retried ``max_retries`` times (default once; it resumes from its checkpoint) and then
  recorded as failed; the other trials go on;
- re-running the same command resumes: finished and stopped runs are skipped, interrupted ones resume from
  their own checkpoints (no Ray Tune experiment state is needed);
- one line per trial state change (``echo``, default ``print``).

Ray is imported only here and only when the engine runs: ``pip install recon-kit[cluster]``.
"""

from __future__ import annotations

import copy
import inspect
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from recon_kit.runs.folder import ERROR_FILE, STOPPED_FILE, read_json, _utc_now, _write_json
from recon_kit.runs.params import SweepError, _Planned, grid_params, run_name
from recon_kit.runs.table import _ascending, _read_error, read_run

#: a :class:`recon_kit.runs.sweep.Sweep` (not imported: sweep.py imports this module to hand a sweep over)
Sweep = Any

__all__ = ["RayOptions", "RayMissing", "require_ray", "run_sweep", "run_trials", "random_params", "train_reporting",
           "live_table", "TRIAL_FOLDER"]

INSTALL_HINT = "pip install recon-kit[cluster]"
TRIAL_FOLDER = ".ray"  # Ray Tune's own experiment files, inside the sweep folder (not a run folder)
SEARCHES = ("grid", "optuna")
SCHEDULERS = (None, "asha")
FINISHED_KEY = "run_finished"  # in a trial's last report when its run folder has metrics.json


class RayMissing(RuntimeError):
    """Ray Tune is not installed (the ``cluster`` extra)."""


def require_ray():
    """``ray`` and ``ray.tune``, or a one-line error naming the install command."""
    try:
        import ray
        from ray import tune
    except ImportError as err:
        raise RayMissing(f"the ray engine needs Ray Tune ({err}): {INSTALL_HINT}") from None
    return ray, tune


@dataclass
class RayOptions:
    """How the ray engine schedules trials (the CLI's ``sweep --engine ray`` / ``batch --engine ray`` options)."""

    address: str | None = None          # None: start a local Ray; "auto" / "ray://host:10001": join a cluster
    num_cpus: int | None = None         # local Ray only: CPUs it may use (default: all)
    num_gpus: int | None = None         # local Ray only: GPUs it may use (default: all)
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU-only trials)
    cpus_per_trial: float = 1.0
    search: str = "grid"                # grid: the sweep's parameter sets; optuna: num_samples draws (needs optuna)
    num_samples: int = 8                # optuna only
    seed: int = 0                       # optuna's sampler seed
    scheduler: str | None = None        # None or "asha"
    metric: str = "total"               # reported at every log step: a history.jsonl loss key, or test_psnr
    mode: str | None = None             # min / max; None: max for psnr/ssim/iou, else min
    grace_period: int = 2               # ASHA: log steps every trial gets before it can be stopped
    reduction_factor: int = 2           # ASHA: keep the best 1/reduction_factor at each rung
    max_retries: int = 1                # a crashing trial is retried this many times, then recorded as failed
    max_concurrent: int | None = None   # None: as many as the resources allow
    echo: Callable[[str], Any] | None = print  # one line per trial state change

    @classmethod
    def coerce(cls, options: RayOptions | Mapping[str, Any] | None) -> RayOptions:
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        known = {f.name for f in fields(cls)}
        bad = sorted(set(options) - known)
        if bad:
            raise SweepError(f"unknown ray option(s) {bad}; known: {sorted(known)}")
        return cls(**options)

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise SweepError(f"ray search must be one of {SEARCHES}, got {self.search!r}")
        if self.scheduler not in SCHEDULERS:
            raise SweepError(f"ray scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise SweepError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")
        if self.cpus_per_trial <= 0:
            raise SweepError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.mode not in (None, "min", "max"):
            raise SweepError(f"mode must be min or max, got {self.mode!r}")

    @property
    def metric_mode(self) -> str:
        return self.mode or ("min" if _ascending(self.metric) else "max")


# ---- random search: a seeded list of parameter sets, so the same command names the same runs ---------------
def random_params(grid: Mapping[str, Sequence[Any]], num_samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """``num_samples`` distinct parameter sets, each value drawn uniformly from its grid list (seeded: re-running
    the same command draws the same sets, so the sweep resumes). Fewer when the grid has fewer combinations."""
    total = len(grid_params(grid))
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(out) < min(num_samples, total):
        params = {k: rng.choice(list(v)) for k, v in grid.items()}
        if run_name(params) not in seen:
            seen.add(run_name(params))
            out.append(params)
    return out


# ---- what a trial runs (on the worker) ------------------------------------------------------------------------
def train_reporting(preset, dataset_dir, run_dir, overrides, resume, overwrite, report=None, metric="total") -> dict:
    """:func:`recon_kit.runs.run.train_from_config` that calls ``report({metric: value, "global_it": ...})`` at every
    log step (``test_psnr``: evaluated on the held-out views there), for a scheduler to stop it early."""
    from recon_kit.config import resolve
    from recon_kit.data.dataset import load_viewset
    from recon_kit.io.images import DataError
    from recon_kit.runs.run import finish, new_trainer

    cfg = resolve(preset, overrides)
    views = load_viewset(dataset_dir, resolution=cfg.data.resolution)
    trainer = new_trainer(cfg, views, run_dir, resume=resume, overwrite=overwrite)
    callback = None
    if report is not None:
        test_views = None
        if metric.startswith("test_"):
            try:
                test_views = load_viewset(dataset_dir, resolution=cfg.data.resolution, split="test")
            except DataError as err:
                raise ValueError(f"metric {metric!r} needs held-out views (transforms_test.json) in {dataset_dir}: "
                                 "use metric='total'") from err
        logged = [len(trainer.history)]

        def callback(tr, result):
            if len(tr.history) == logged[0]:
                return  # not a log step
            logged[0] = len(tr.history)
            rec = dict(tr.history[-1])
            values = {k: float(v) for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if test_views is not None:
                values.update({k: v for k, v in tr.evaluate(test_views, split="test").items()
                               if isinstance(v, float)})
            report(values)

    trainer.run(progress=False, callback=callback)
    return finish(trainer, dataset_dir)


class TrialFailed(RuntimeError):
    """A run raised on its worker (its error.txt has the traceback); Ray Tune retries it."""


@dataclass
class _Trial:
    """One run of a sweep: the sweep is the executor (its ``_run_one``), ``fresh``: empty the folder first."""

    sweep: Sweep
    planned: _Planned
    fresh: bool = False


def _reporting_engine(engine: Any, report: Callable[[dict], None], metric: str) -> Callable[..., Any]:
    """The sweep's engine with ``report`` wired in: the trainer reports at log steps; a callable that takes
    ``report`` gets it; anything else reports its final metrics only."""
    if engine in ("trainer", "ray"):
        return lambda **kw: train_reporting(**kw, report=report, metric=metric)
    if engine == "papermill":
        raise SweepError("the ray engine trains with the trainer; papermill runs stay on the sequential engine")
    if "report" in inspect.signature(engine).parameters:
        return lambda **kw: engine(**kw, report=report)
    return engine


def _trainable(config: dict, trials: dict[str, _Trial], metric: str, optuna_sweep: Sweep | None = None) -> None:
    """A Ray Tune function trainable: train one run folder, reporting at log steps; raise on failure."""
    from ray import tune

    if optuna_sweep is not None:
        params = {k: v for k, v in config.items()}
        trial = _Trial(optuna_sweep, _Planned(run_name(params), params, "pending"))
    else:
        trial = trials[config["name"]]
    threads = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))
    import torch

    torch.set_num_threads(threads)
    last: dict[str, float] = {}

    def report(values: dict) -> None:
        last.update(values)
        tune.report(values)

    sweep = copy.copy(trial.sweep)
    sweep.engine = _reporting_engine(trial.sweep.engine, report, metric)
    metrics_path = sweep.run_dir(trial.planned.name) / "metrics.json"
    if trial.fresh or not metrics_path.exists():  # optuna may draw a finished parameter set again: not retrained
        entry: dict[str, Any] = {}
        if not sweep._run_one(trial.planned, entry, fresh=trial.fresh):
            raise TrialFailed(entry.get("error", "the run failed"))
    metrics = read_json(metrics_path) or {}
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if metric == "total" and "final_loss" in final:
        final["total"] = final["final_loss"]
    final.setdefault(metric, last.get(metric, math.nan))  # Tune insists on the metric in every result
    tune.report({**last, **final, FINISHED_KEY: 1.0})  # the scheduler's metric stays in every result


# ---- the driver -------------------------------------------------------------------------------------------------
def _connect(opts: RayOptions):
    ray, tune = require_ray()
    if not ray.is_initialized():
        if opts.address:
            ray.init(address=opts.address, configure_logging=False, log_to_driver=False)
        else:
            ray.init(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, include_dashboard=False,
                     configure_logging=False, log_to_driver=False)
    return ray, tune


def _resources(ray, opts: RayOptions) -> dict[str, float]:
    gpus = opts.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"cpu": float(opts.cpus_per_trial), "gpu": float(gpus)}


def run_trials(trials: dict[str, _Trial], opts: RayOptions, storage: Path, on_change: Callable[..., None], *,
               max_t: int, optuna_sweep: Sweep | None = None) -> None:
    """Run ``trials`` (or ``opts.num_samples`` Optuna draws from ``optuna_sweep``) as Ray Tune trials.

    ``on_change(name, status, info)`` is called on the driver at every state change: running (``attempt``),
    retrying (``error``), failed (``error``), finished, stopped (``iterations``, ``value``).
    """
    ray, tune = _connect(opts)
    resources = _resources(ray, opts)
    metric, mode = opts.metric, opts.metric_mode
    if optuna_sweep is None:
        if not trials:
            return
        param_space = {"name": tune.grid_search(list(trials))}
        search_alg, num_samples = None, 1
    else:
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as err:
            raise RayMissing(f"search='optuna' needs optuna ({err}): pip install optuna") from None
        param_space = {k: tune.choice(v) for k, v in optuna_sweep.grid.items()}
        search_alg = OptunaSearch(metric=metric, mode=mode, seed=opts.seed)
        num_samples = opts.num_samples
    if opts.max_concurrent and search_alg is not None:
        from ray.tune.search import ConcurrencyLimiter

        search_alg = ConcurrencyLimiter(search_alg, max_concurrent=opts.max_concurrent)
    scheduler = None
    if opts.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max(max_t, opts.grace_period + 1),
                                  grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)

    def trial_name(trial) -> str:
        cfg = trial.config
        return cfg["name"] if optuna_sweep is None else run_name(dict(cfg))

    class Progress(tune.Callback):
        def __init__(self):
            self.attempts: dict[str, int] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            name = trial_name(trial)
            self.attempts[name] = self.attempts.get(name, 0) + 1
            on_change(name, "running", {"attempt": self.attempts[name], "params": dict(trial.config)})

        def on_trial_recover(self, iteration, trials, trial, **info):
            name = trial_name(trial)
            on_change(name, "retrying", {"attempt": self.attempts.get(name, 1), "error": _trial_error(trial)})

        def on_trial_error(self, iteration, trials, trial, **info):
            on_change(trial_name(trial), "failed", {"error": _trial_error(trial),
                                                    "attempt": self.attempts.get(trial_name(trial), 1)})

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            status = "finished" if last.get(FINISHED_KEY) else "stopped"
            on_change(trial_name(trial), status, {"iterations": last.get("training_iteration"),
                                                  "metric": metric, "value": last.get(metric)})

    trainable = tune.with_parameters(_trainable, trials=trials, metric=metric, optuna_sweep=optuna_sweep)
    trainable = tune.with_resources(trainable, resources)
    storage.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, search_alg=search_alg,
                                    num_samples=num_samples, max_concurrent_trials=opts.max_concurrent,
                                    reuse_actors=True),  # no fresh worker process (torch import) per run
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S"), storage_path=str(storage.resolve()), verbose=0,
            callbacks=[Progress()], failure_config=tune.FailureConfig(max_failures=opts.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    tuner.fit()


def _trial_error(trial) -> str:
    """The one-line reason of a trial's error (from the run folder's error.txt when it wrote one)."""
    text = str(getattr(trial, "error_msg", None) or "")
    for line in text.splitlines():
        if "TrialFailed:" in line:
            return line.split("TrialFailed:", 1)[1].strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "the trial's worker died"


def _echo_line(noun: str, name: str, status: str, info: dict, wall: float | None = None) -> str:
    head = f"{noun} {name}:"
    if status == "running":
        return f"{head} running (attempt {info.get('attempt', 1)})"
    if status == "retrying":
        return f"{head} crashed (attempt {info.get('attempt', 1)}): {info.get('error')}; retrying"
    if status == "failed":
        return f"{head} failed after {info.get('attempt', 1)} attempt(s): {info.get('error')}"
    if status == "stopped":
        value = info.get("value")
        shown = f"{value:.4g}" if isinstance(value, float) else value
        return f"{head} stopped early by ASHA after {info.get('iterations')} log steps ({info.get('metric')} {shown})"
    took = f" in {wall:.1f} s" if wall is not None else ""
    return f"{head} {status}{took}"


class TrialBook:
    """The driver's record of trial states: manifest entries, stopped.json markers and the one-line echo."""

    def __init__(self, entries: dict[str, dict], save: Callable[[], None], run_dir: Callable[[str], Path],
                 echo: Callable[[str], Any] | None, bar=None, make_entry: Callable[[str, dict], dict] | None = None,
                 noun: str = "trial"):
        self.entries, self.save, self.run_dir, self.echo, self.bar = entries, save, run_dir, echo, bar
        self.make_entry, self.noun = make_entry, noun
        self.t0: dict[str, float] = {}

    def __call__(self, name: str, status: str, info: dict) -> None:
        if name not in self.entries and self.make_entry is not None:
            self.entries[name] = self.make_entry(name, info)
        entry = self.entries[name]
        d = self.run_dir(name)
        if status in ("retrying", "failed"):  # the run's own one-line reason (error.txt), else Ray's
            info = {**info, "error": _read_error(d) or info.get("error")}
        wall = None
        if status == "running":
            self.t0.setdefault(name, time.perf_counter())
            entry.update(status="running", started_utc=entry.get("started_utc") if info.get("attempt", 1) > 1
                         else _utc_now(), attempts=info.get("attempt", 1))
            entry.pop("error", None)
            entry.pop("skipped", None)
        elif status == "retrying":
            entry.update(status="running", last_error=info.get("error"))
        else:
            wall = round(time.perf_counter() - self.t0.get(name, time.perf_counter()), 3)
            entry.update(wall_s=wall, finished_utc=_utc_now())
            if status == "stopped" and not (d / "metrics.json").exists():
                marker = {"by": "ASHA", "log_steps": info.get("iterations"), "metric": info.get("metric"),
                          "value": info.get("value"), "utc": _utc_now()}
                if d.is_dir():
                    _write_json(d / STOPPED_FILE, marker)
                entry.update(status="stopped", stopped=marker)
            else:
                entry["status"] = read_run(d).status if d.is_dir() else "failed"
                if status == "failed" or entry["status"] == "failed":
                    entry["status"] = "failed"
                    entry["error"] = info.get("error") or entry.get("last_error")
                    if d.is_dir() and not (d / ERROR_FILE).exists():
                        (d / ERROR_FILE).write_text(f"{entry['error']}\n", encoding="utf-8")
            status = entry["status"]
            if self.bar is not None:
                self.bar.update(1)
        self.save()
        if self.echo is not None and status in ("running", "retrying", "failed", "finished", "stopped"):
            self.echo(_echo_line(self.noun, name, status, info, wall))


def _max_log_steps(sweep: Sweep, params: Sequence[Mapping[str, Any]]) -> int:
    """The most log steps any run reports (ASHA's max_t)."""
    from recon_kit.config import ConfigError, resolve

    steps = 1
    for ps in params:
        try:
            cfg = resolve(sweep.preset, sweep.overrides(ps))
        except (ConfigError, FileNotFoundError, ValueError):
            continue
        total = cfg.pass1.iterations + cfg.pass2.iterations
        steps = max(steps, math.ceil(total / max(1, cfg.log_every)) + 2)
    return steps


def run_sweep(sweep: Sweep, options: RayOptions | Mapping[str, Any] | None = None, *, progress: bool = True,
              retry_failed: bool = True, rerun: bool = False, echo: Callable[[str], Any] | None = None):
    """``Sweep.run`` on Ray Tune (what ``engine="ray"`` calls); returns the sweep's run table. The driver holds the
    sweep folder's lock, as the sequential engines do: a second driver on the same sweep fails at once."""
    from recon_kit.io.locking import acquire

    opts = RayOptions.coerce(options)
    require_ray()
    if not sweep.dataset_dir.exists():
        raise FileNotFoundError(f"dataset folder {sweep.dataset_dir} does not exist")
    with acquire(sweep.out_dir, "sweep (ray)"):  # before Ray starts
        return _run_sweep(sweep, opts, progress, retry_failed, rerun, echo or opts.echo)


def _run_sweep(sweep: Sweep, opts: RayOptions, progress: bool, retry_failed: bool, rerun: bool,
               echo: Callable[[str], Any] | None):
    """:func:`run_sweep` under the sweep folder's lock."""
    from tqdm.auto import tqdm

    optuna = sweep if opts.search == "optuna" else None
    if optuna is not None:  # the plan is what Optuna draws; until then, the runs earlier draws left
        if not sweep.grid:
            raise SweepError("search='optuna' draws from the sweep's grid: give grid={'key': [values]}")
        kept = [(n, p) for n, p in zip(sweep.names, sweep.params) if sweep.run_dir(n).is_dir()]
        sweep.names, sweep.params = [n for n, _ in kept], [p for _, p in kept]
    planned, man, entries = sweep._start(rerun)
    todo: dict[str, _Trial] = {}
    for p in planned:
        done = p.status in ("finished", "stopped") and not rerun
        if done or (p.status == "failed" and not retry_failed):
            entries[p.name]["skipped"] = True
            if echo:
                echo(f"trial {p.name}: skipped ({p.status})")
            continue
        todo[p.name] = _Trial(sweep, p, fresh=rerun and p.status in ("finished", "stopped"))
    sweep._save_manifest(man, entries)
    if optuna is not None:
        todo = {}  # Optuna decides what runs (a drawn finished run is reported, not trained again)

    def make_entry(name: str, info: dict) -> dict:  # optuna: a parameter set drawn now
        params = {k: v for k, v in info.get("params", {}).items()}
        if name not in sweep.names:
            sweep.names.append(name)
            sweep.params.append(params)
        return {"name": name, "params": params, "status": "pending"}

    total = opts.num_samples if optuna is not None else len(todo)
    bar = tqdm(total=total, desc=f"sweep {sweep.out_dir.name} (ray)", disable=not progress, unit="run")
    book = TrialBook(entries, lambda: sweep._save_manifest(man, entries), sweep.run_dir, echo, bar, make_entry)
    try:
        run_trials(todo, opts, sweep.out_dir / TRIAL_FOLDER, book,
                   max_t=_max_log_steps(sweep, [t.planned.params for t in todo.values()] or sweep.params),
                   optuna_sweep=optuna)
    finally:
        bar.close()
        for e in entries.values():  # the driver was interrupted: these resume from their checkpoints next time
            if e["status"] == "running":
                e["status"] = "incomplete"
        sweep._save_manifest(man, entries)
    return sweep.table()


def live_table(sweep_dir: str | Path):
    """The sweep's state as its manifest has it now (name, status, attempts, wall_s, error): what notebook 05
    redraws at each trial state change while a sweep runs (either engine)."""
    import pandas as pd

    from recon_kit.runs.folder import MANIFEST

    man = read_json(Path(sweep_dir) / MANIFEST) or {}
    cols = ["name", "status", "attempts", "wall_s", "error"]
    rows = [{c: e.get(c) for c in cols} for e in man.get("runs", []) if isinstance(e, dict)]
    return pd.DataFrame(rows, columns=cols).set_index("name")


def options_dict(opts: RayOptions) -> dict[str, Any]:
    """The options as JSON-able values (for manifests)."""
    return {k: v for k, v in asdict(opts).items() if k != "echo"}

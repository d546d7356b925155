"""Run folders as a table, and parameter sweeps that fill a folder with runs.

Reading runs::

    from recon_kit import runs
    table = runs.load_runs("outputs/sweeps/lr")          # one row per run folder (sub-folders of the path)
    runs.sort_runs(runs.filter_runs(table, {"geometry.grid_res": 48}), "train_psnr")

A row holds the run's name, ``path``, ``status`` (finished: metrics.json present; failed: error.txt present;
stopped: stopped.json present, an early-stopping scheduler ended it; incomplete: anything else), ``error``, the swept parameters (from the folder's sweep.json), every flattened
config key (:func:`recon_kit.config.flatten`: ``pass1.lr_mat``, ...), the scalar metrics (``train_psnr``,
``timings_s.pass1``, ...; a metric whose name is also a config key, such as ``device``, becomes
``metrics.device``), ``wall_s`` (training time: the sum of metrics.json's ``timings_s``), ``sweep_wall_s`` (the
whole run as the sweep timed it: loading, training, export, evaluation), a few ``env.*`` keys and the exports
(:data:`EXPORTS`: ``mesh_zip``, ``glb``, ``training_gif``, ... as paths, None when missing). ``table.attrs``
names the column groups: ``params``, ``config``, ``metrics``, ``exports``.

Sweeps::

    sweep = runs.Sweep("outputs/sweeps/lr", dataset_dir="outputs/demo/data", preset="cpu-small",
                       grid={"pass1.lr_mat": [0.01, 0.03], "geometry.grid_res": [32, 48]},
                       base={"pass1.iterations": 100})
    table = sweep.run()                                  # tqdm bar; returns load_runs(sweep folder)

Each parameter set trains into ``<sweep folder>/<name>`` where the name is built from its parameters
(``pass1.lr_mat=0.01__geometry.grid_res=32``). Re-running a sweep skips finished runs (metrics.json present),
resumes an interrupted one from its last checkpoint and retries failed ones. A run that raises leaves
``error.txt`` in its folder and a ``failed`` entry in ``sweep.json``; the other runs go on. ``engine="trainer"``
(default) calls :func:`recon_kit.train.train_from_config` in this process; ``engine="papermill"`` executes
notebooks/03_train.ipynb for each run (executed copies in ``<sweep folder>/notebooks/``); ``engine="ray"``
schedules the runs as Ray Tune trials (:mod:`recon_kit.ray_engine`: GPUs per trial, ASHA, Optuna, clusters;
``run(ray=RayOptions(...))``), each still training in-process on its worker into the same run folders.
The command line: ``recon-kit sweep --dataset D --grid pass1.lr_mat=0.01,0.03 --out outputs/sweeps/NAME``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .animation import snapshot_key, snapshots  # noqa: F401  (snapshot_key re-exported)

__all__ = [
    "EXPORTS", "MANIFEST", "ERROR_FILE", "STOPPED_FILE", "RunRecord", "Sweep", "SweepError", "grid_params", "run_name",
    "is_run_dir", "list_runs", "read_run", "load_runs", "load_history", "load_histories", "filter_runs",
    "sort_runs", "best_run", "summary", "param_columns", "metric_columns", "varying_columns", "demo_dataset",
]

log = logging.getLogger(__name__)

MANIFEST = "sweep.json"
ERROR_FILE = "error.txt"
STOPPED_FILE = "stopped.json"  # an early-stopping scheduler ended the run (ray engine): not a failure
NOTEBOOK_FOLDER = "notebooks"  # papermill engine: executed copies of 03_train, one per run
#: what a run folder may export (table column -> path inside the run folder)
EXPORTS = {
    "mesh_zip": "mesh.zip",
    "glb": "mesh/model.glb",
    "obj": "mesh/mesh.obj",
    "training_gif": "training.gif",
    "training_mp4": "training.mp4",
    "viewer": "viewer.html",
    "turntable": "turntable.gif",
}
ENV_KEYS = ("created_utc", "git_sha", "git_dirty", "torch", "device_name")
#: metrics where larger is better (for sort_runs / best_run); everything else sorts ascending
HIGHER_IS_BETTER = ("psnr", "ssim", "iou", "fscore", "f_score")
_MAX_NAME = 120


class SweepError(ValueError):
    """A sweep cannot start as asked (bad grid, or its folder holds finished runs of another configuration)."""


# ---- parameter sets and their folder names ---------------------------------------------------------------
def grid_params(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of ``{"key": [values...]}``, the first key varying slowest."""
    keys = list(grid)
    values = []
    for k in keys:
        v = grid[k]
        if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
            raise SweepError(f"grid key {k!r}: expected a list of values, got {v!r}")
        v = list(v)
        if not v:
            raise SweepError(f"grid key {k!r} has no values")
        values.append(v)
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(not isinstance(x, (list, tuple, dict)) for x in value):
        return ",".join(_format_value(x) for x in value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)  # 1.0, not 1: the folder name shows the type the config gets
    return json.dumps(value, separators=(",", ":"))


def _sanitise(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._=,+\-]+", "-", text)  # no slashes, spaces, quotes or brackets
    text = re.sub(r"\.{2,}", ".", re.sub(r"-{2,}", "-", text))
    return text.strip("-.") or "run"


def run_name(params: Mapping[str, Any]) -> str:
    """``pass1.lr_mat=0.01__geometry.grid_res=32``: the folder name of one parameter set (filesystem-safe;
    long names are shortened and end with a hash of the parameters)."""
    if not params:
        return "defaults"
    name = "__".join(_sanitise(f"{k}={_format_value(v)}") for k, v in params.items())
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = name[:_MAX_NAME - 9].rstrip("-_.=") + "_" + digest
    return name


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: Any) -> None:
    from .rundir import RunDir

    RunDir(path.parent).write_json(path.name, obj)  # atomic


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- reading run folders ----------------------------------------------------------------------------
def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """A folder a run wrote into (config.json, metrics.json, env.json or error.txt)."""
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in ("config.json", "metrics.json", "env.json", ERROR_FILE))


def list_runs(root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], recursive: bool = False) -> list[Path]:
    """Run folders: ``root`` itself when it is one, else its sub-folders that are (``recursive``: at any
    depth), sorted by name. A list of paths is passed through (each must be a run folder)."""
    if not isinstance(root, (str, os.PathLike)):
        paths = [Path(p) for p in root]
        missing = [str(p) for p in paths if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"run folder(s) {', '.join(missing)} do not exist")
        return paths
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist")
    if is_run_dir(root):
        return [root]
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if is_run_dir(sub):
            found.append(sub)
        elif recursive:
            found.extend(list_runs(sub, recursive=True) if any(sub.iterdir()) else [])
    return found


def _read_error(path: Path) -> str | None:
    try:
        lines = [ln for ln in (path / ERROR_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[0] if lines else "unknown error"


def _scalars(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with dotted keys; keep numbers, strings, booleans and None; drop lists."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_scalars(v, key + "."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = v
    return out


@dataclass
class RunRecord:
    """What one run folder holds (files read when the record is made, the history on demand)."""

    path: Path
    status: str                      # finished, failed, stopped, incomplete
    config: dict[str, Any] | None    # flattened config.json
    metrics: dict[str, Any] | None   # metrics.json as written (nested, with per-view lists)
    env: dict[str, Any] | None
    error: str | None = None
    exports: dict[str, Path] = field(default_factory=dict)
    snapshots: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def history(self):
        """history.jsonl as a DataFrame (empty when the run logged nothing)."""
        return load_history(self.path)

    @property
    def wall_s(self) -> float | None:
        t = (self.metrics or {}).get("timings_s")
        if not isinstance(t, Mapping):
            return None
        vals = [float(v) for v in t.values() if isinstance(v, (int, float))]
        return float(sum(vals)) if vals else None


def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read one run folder (config.json, metrics.json, env.json, error.txt, exports, snapshots)."""
    from .config import ReconConfig, flatten

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"run folder {p} does not exist")
    cfg_raw = _read_json(p / "config.json")
    config = None
    if isinstance(cfg_raw, dict):
        try:
            config = flatten(ReconConfig.from_dict(cfg_raw, source=str(p / "config.json")))
        except ValueError:  # an older or hand-edited config: flatten what is there
            config = _scalars(cfg_raw)
    metrics = _read_json(p / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else None
    env = _read_json(p / "env.json")
    env = env if isinstance(env, dict) else None
    if metrics is not None:
        status, error = "finished", None
    elif (p / ERROR_FILE).exists():
        status, error = "failed", _read_error(p)
    elif (p / STOPPED_FILE).exists():
        status, error = "stopped", None
    else:
        status, error = "incomplete", None
    exports = {k: p / rel for k, rel in EXPORTS.items() if (p / rel).exists()}
    return RunRecord(p, status, config, metrics, env, error, exports, snapshots(p))


def load_history(run_dir: str | os.PathLike[str]):
    """``history.jsonl`` of a run as a DataFrame (a truncated last line is ignored)."""
    from .rundir import RunDir

    return RunDir(Path(run_dir)).read_history()


def load_histories(runs) -> dict[str, Any]:
    """``{run name: history DataFrame}`` for a table from :func:`load_runs`, a folder or a list of folders."""
    paths = [Path(p) for p in runs["path"]] if hasattr(runs, "columns") else list_runs(runs)
    return {p.name: load_history(p) for p in paths}


def _manifest_for(paths: Sequence[Path]) -> dict[Path, dict]:
    """The sweep.json entries of these runs, from the manifests of their parent folders."""
    entries: dict[Path, dict] = {}
    for parent in {p.parent for p in paths}:
        man = _read_json(parent / MANIFEST)
        if isinstance(man, dict):
            for e in man.get("runs", []):
                if isinstance(e, dict) and "name" in e:
                    entries[(parent / e["name"]).resolve()] = e
    return entries


def load_runs(root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], recursive: bool = False):
    """One row per run folder (see the module docstring for the columns), indexed by run name."""
    import pandas as pd

    paths = list_runs(root, recursive=recursive)
    manifest = _manifest_for(paths)
    rows, param_keys, config_keys, metric_keys = [], [], [], []

    def remember(keys: list[str], new: Iterable[str]) -> None:
        keys.extend(k for k in new if k not in keys)

    for p in paths:
        rec = read_run(p)
        entry = manifest.get(p.resolve(), {})
        params = entry.get("params") or {}
        remember(param_keys, params)
        row: dict[str, Any] = {"run": rec.name, "path": str(p), "status": rec.status,
                               "error": rec.error or (entry.get("error") if rec.status == "failed" else None)}
        config = rec.config or {}
        remember(config_keys, config)
        row.update(config)
        for k, v in params.items():  # failed runs have no config.json: show what they were asked to do
            row.setdefault(k, v)
        metrics = {}
        if rec.metrics:
            for k, v in _scalars(rec.metrics).items():
                metrics[f"metrics.{k}" if k in config or k in row else k] = v
        remember(metric_keys, metrics)
        row.update(metrics)
        row["wall_s"] = rec.wall_s
        row["sweep_wall_s"] = entry.get("wall_s")
        for k in ENV_KEYS:
            row[f"env.{k}"] = (rec.env or {}).get(k)
        for k in EXPORTS:
            row[k] = str(rec.exports[k]) if k in rec.exports else None
        row["snapshots"] = len(rec.snapshots)
        rows.append(row)

    lead = ["run", "path", "status", "error"]
    tail = ["wall_s", "sweep_wall_s", *(f"env.{k}" for k in ENV_KEYS), *EXPORTS, "snapshots"]
    rest_config = [k for k in config_keys if k not in param_keys]
    columns = lead + param_keys + metric_keys + tail + rest_config
    table = pd.DataFrame(rows, columns=columns)
    table.index = pd.Index(table["run"].tolist(), name="name")
    table.attrs.update(params=param_keys, config=config_keys, metrics=metric_keys + ["wall_s", "sweep_wall_s"],
                       exports=list(EXPORTS))
    return table


# ---- table helpers ----------------------------------------------------------------------------------------
def param_columns(table) -> list[str]:
    """The swept parameters (from sweep.json), else the config keys that differ between the runs."""
    params = [c for c in table.attrs.get("params", []) if c in table.columns]
    return params or varying_columns(table)


def metric_columns(table, include_views: bool = False) -> list[str]:
    """Numeric metric columns (``train_psnr``, ..., ``wall_s``); per-view counts left out unless asked."""
    import pandas as pd

    names = [c for c in table.attrs.get("metrics", []) if c in table.columns]
    if not names:
        skip = {"snapshots"} | set(table.attrs.get("config", []))
        names = [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])]
    return [c for c in names if pd.api.types.is_numeric_dtype(table[c]) and (include_views or not c.endswith("_views"))
            and not pd.api.types.is_bool_dtype(table[c])]


def varying_columns(table) -> list[str]:
    """Config keys whose value is not the same in every run (what distinguishes the runs)."""
    keys = [c for c in table.attrs.get("config", []) if c in table.columns]
    out = []
    for k in keys:
        vals = {json.dumps(v, sort_keys=True, default=str) for v in table[k].tolist()
                if not (isinstance(v, float) and math.isnan(v))}
        if len(vals) > 1:
            out.append(k)
    return out


def filter_runs(table, where: Mapping[str, Any] | Callable | str | None = None, *,
                status: str | Sequence[str] | None = None):
    """Rows of ``table`` that match.

    ``where``: ``{"key": value}`` (equal), ``{"key": [v1, v2]}`` (any of), ``{"key": callable}`` (true for the
    value); a callable on the row; or a :meth:`pandas.DataFrame.query` string (back-quote dotted keys:
    ```pass1.lr_mat` < 0.02``). ``status``: one status or a list (finished, failed, incomplete).
    """
    import pandas as pd

    keep = pd.Series(True, index=table.index)
    if status is not None:
        keep &= table["status"].isin([status] if isinstance(status, str) else list(status))
    if isinstance(where, str):
        keep &= table.index.isin(table.query(where).index)
    elif callable(where):
        keep &= table.apply(where, axis=1).astype(bool)
    elif where:
        for key, cond in where.items():
            if key not in table.columns:
                raise KeyError(f"no column {key!r}; columns: {', '.join(map(str, table.columns))}")
            col = table[key]
            if callable(cond):
                keep &= col.map(lambda v: bool(cond(v)))
            elif isinstance(cond, (list, tuple, set)):
                keep &= col.isin(list(cond))
            else:
                keep &= col == cond
    out = table[keep]
    out.attrs.update(table.attrs)
    return out


def _ascending(metric: str) -> bool:
    return not any(word in metric.lower() for word in HIGHER_IS_BETTER)


def sort_runs(table, by: str | Sequence[str] = "train_psnr", ascending: bool | None = None):
    """Sort by one or more columns; ``ascending=None``: best first (larger PSNR/SSIM/IoU, smaller losses
    and times). Runs without the value (failed ones) go last."""
    keys = [by] if isinstance(by, str) else list(by)
    for k in keys:
        if k not in table.columns:
            raise KeyError(f"no column {k!r}; metrics: {', '.join(metric_columns(table))}")
    asc = [_ascending(k) for k in keys] if ascending is None else ascending
    out = table.sort_values(keys, ascending=asc, na_position="last", kind="stable")
    out.attrs.update(table.attrs)
    return out


def best_run(table, metric: str = "train_psnr") -> str | None:
    """Name of the best finished run by ``metric`` (None when no run has it)."""
    done = table[table[metric].notna()] if metric in table.columns else table.iloc[:0]
    return None if done.empty else str(sort_runs(done, metric).index[0])


DEFAULT_METRICS = ("train_psnr", "train_ssim", "train_iou", "test_psnr", "final_loss", "faces", "wall_s")


def summary(table, metrics: Sequence[str] | None = None, params: Sequence[str] | None = None):
    """The comparison table: status, parameters, main metrics and wall time (a view of ``table``)."""
    params = list(params) if params is not None else param_columns(table)
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in table.columns and table[m].notna().any()]
    cols = ["status", *params, *metrics]
    if "error" in table.columns and table["error"].notna().any():
        cols.append("error")
    out = table[cols].convert_dtypes()  # 32, not 32.0, in a column that a failed run left empty
    out.attrs.update(table.attrs)
    return out


# ---- the demo dataset for sweeps -----------------------------------------------------------------------
def demo_dataset(folder: str | os.PathLike[str], resolution: int = 128, capture_resolution: int | None = None) -> Path:
    """The built-in synthetic object prepared at ``resolution`` under ``folder`` (reused when already there).

    Returns ``folder`` (which holds ``<resolution>/transforms.json``) to pass as a sweep's ``dataset_dir``.
    """
    from . import data, synth

    folder = Path(folder)
    if not (folder / str(resolution) / "transforms.json").exists():
        cap = folder / "demo_capture"
        if not (cap / "transforms.json").exists() and not any(cap.glob("*")):
            synth.write_demo_capture(cap, resolution=capture_resolution or max(2 * resolution, 96), n_test=2)
        data.prepare_dataset(cap, folder, [resolution], progress=False, overwrite=True)
    return folder


# ---- sweeps -----------------------------------------------------------------------------------------------
Engine = Callable[..., Any]


@dataclass
class _Planned:
    name: str
    params: dict[str, Any]
    status: str  # finished, failed, incomplete, pending


class Sweep:
    """A list or grid of parameter sets trained headlessly, each into its own run folder under ``out_dir``.

    ``grid``: ``{"dotted.key": [values]}`` (every combination); ``runs``: explicit parameter sets
    (``[{"pass1.lr_mat": 0.01}, ...]``, appended after the grid's). ``base``: overrides every run gets (a
    run's parameters win). ``preset``: preset name or config file (as notebook 03's ``preset``).
    ``engine``: ``"trainer"`` (in this process), ``"papermill"`` (notebook 03 per run), ``"ray"`` (Ray Tune
    trials, each training as ``"trainer"`` on a Ray worker: :mod:`recon_kit.ray_engine`) or a callable
    ``engine(preset=, dataset_dir=, run_dir=, overrides=, resume=, overwrite=)``.
    """

    def __init__(self, out_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str],
                 grid: Mapping[str, Sequence[Any]] | None = None, runs: Sequence[Mapping[str, Any]] | None = None,
                 *, preset: str = "cpu-small", base: Mapping[str, Any] | None = None,
                 engine: str | Engine = "trainer", timeout: float | None = None, names: Sequence[str] | None = None):
        self.out_dir = Path(out_dir)
        self.dataset_dir = Path(dataset_dir)
        self.params = grid_params(grid) if grid else []  # checks the grid's values
        self.grid = {k: list(v) for k, v in (grid or {}).items()}
        self.explicit = [dict(r) for r in (runs or [])]
        self.preset = str(preset)
        self.base = dict(base or {})
        if not (callable(engine) or engine in ("trainer", "papermill", "ray")):
            raise SweepError(f"engine must be 'trainer', 'papermill', 'ray' or a callable, got {engine!r}")
        self.engine = engine
        self.timeout = timeout
        self.params += self.explicit
        if not self.params:
            raise SweepError("a sweep needs a grid ({'key': [values]}) or a list of parameter sets")
        for ps in self.params:
            bad = [k for k in ps if not isinstance(k, str) or not k]
            if bad:
                raise SweepError(f"parameter names must be dotted config keys, got {bad!r}")
        if names is not None:
            if len(names) != len(self.params):
                raise SweepError(f"{len(names)} names for {len(self.params)} parameter sets")
            self.names = [_sanitise(n) for n in names]
        else:
            self.names = [run_name(ps) for ps in self.params]
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise SweepError(f"parameter sets repeat (same folder name): {', '.join(dup)}")

    def __repr__(self) -> str:
        return f"Sweep({str(self.out_dir)!r}, {len(self.params)} runs, engine={self._engine_name()!r})"

    def __len__(self) -> int:
        return len(self.params)

    def _engine_name(self) -> str:
        return self.engine if isinstance(self.engine, str) else getattr(self.engine, "__name__", "callable")

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST

    def overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.base, **params}

    def run_dir(self, name: str) -> Path:
        return self.out_dir / name

    # ---- planning -------------------------------------------------------------------------------------
    def plan(self):
        """One row per parameter set: name, status (finished, failed, stopped, incomplete, pending) and parameters."""
        import pandas as pd

        rows = [{"name": p.name, "status": p.status, **p.params} for p in self._plan()]
        return pd.DataFrame(rows).set_index("name")

    def _plan(self) -> list[_Planned]:
        out = []
        for name, params in zip(self.names, self.params):
            d = self.run_dir(name)
            status = read_run(d).status if d.is_dir() and any(d.iterdir()) else "pending"
            out.append(_Planned(name, params, status))
        return out

    def _check_finished(self, planned: list[_Planned]) -> None:
        """Finished runs are skipped only when they were trained with the configuration asked for now."""
        from .config import ConfigError, flatten, resolve

        stale = []
        for p in planned:
            if p.status != "finished":
                continue
            saved = _read_json(self.run_dir(p.name) / "config.json")
            try:
                want = resolve(self.preset, self.overrides(p.params)).to_dict()
            except (ConfigError, FileNotFoundError):
                continue
            if isinstance(saved, dict) and saved != want:
                from .config import ReconConfig

                try:
                    have = flatten(ReconConfig.from_dict(saved))
                except ValueError:
                    have = _scalars(saved)
                wanted = flatten(resolve(self.preset, self.overrides(p.params)))
                diff = [f"{k}: {have.get(k)!r} -> {v!r}" for k, v in wanted.items() if have.get(k) != v]
                stale.append(f"{p.name} ({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''})")
        if stale:
            raise SweepError(
                f"{self.out_dir} holds finished runs trained with another configuration: {', '.join(stale)}; "
                "use another sweep folder, or run(rerun=True) (CLI: --rerun) to train them again")
        man = _read_json(self.manifest_path)
        if isinstance(man, dict) and man.get("dataset_dir") and Path(man["dataset_dir"]) != self.dataset_dir.resolve():
            if any(p.status == "finished" for p in planned):
                raise SweepError(f"{self.out_dir} was swept on dataset {man['dataset_dir']}, not {self.dataset_dir}; "
                                 "use another sweep folder or rerun=True")

    # ---- manifest -------------------------------------------------------------------------------------
    def _load_manifest(self) -> dict:
        man = _read_json(self.manifest_path)
        if not isinstance(man, dict):
            man = {"created_utc": _utc_now(), "runs": []}
        return man

    def _save_manifest(self, man: dict, entries: dict[str, dict]) -> None:
        order = list(self.names) + [e["name"] for e in man.get("runs", []) if e.get("name") not in entries]
        old = {e.get("name"): e for e in man.get("runs", []) if isinstance(e, dict)}
        runs_ = [entries.get(n) or old[n] for n in order if n in entries or n in old]
        counts: dict[str, int] = {}
        for e in runs_:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        man.update(updated_utc=_utc_now(), out_dir=str(self.out_dir.resolve()),
                   dataset_dir=str(self.dataset_dir.resolve()), preset=self.preset, base=self.base,
                   engine=self._engine_name(), grid=self.grid, explicit=self.explicit, runs=runs_, counts=counts)
        _write_json(self.manifest_path, man)

    # ---- running --------------------------------------------------------------------------------------
    def run(self, progress: bool = True, retry_failed: bool = True, rerun: bool = False,
            stop_on_error: bool = False, echo: Callable[[str], Any] | None = None, ray: Any = None):
        """Train every parameter set that is not finished yet; returns :func:`load_runs` of the sweep folder.

        ``retry_failed=False`` leaves failed runs as they are; ``rerun=True`` trains finished runs again (their
        folders are emptied first); ``stop_on_error=True`` re-raises the first failure. ``engine="ray"``: ``ray``
        is a :class:`recon_kit.ray_engine.RayOptions` (or a dict of its fields) and the runs go to Ray Tune.
        """
        from tqdm.auto import tqdm

        if self.engine == "ray":
            from .ray_engine import run_sweep

            return run_sweep(self, ray, progress=progress, retry_failed=retry_failed, rerun=rerun, echo=echo)
        if ray is not None:
            raise SweepError("ray options need engine='ray'")
        planned, man, entries = self._start(rerun)
        counts = {"trained": 0, "skipped": 0, "failed": 0}
        bar = tqdm(total=len(planned), desc=f"sweep {self.out_dir.name}", disable=not progress, unit="run")
        try:
            for p in planned:
                entry = entries[p.name]
                skip = (p.status == "finished" and not rerun) or (p.status == "failed" and not retry_failed)
                if skip:
                    counts["skipped"] += 1
                    entry["skipped"] = True
                    bar.update(1)
                    bar.set_postfix(counts)
                    continue
                entry.pop("skipped", None)
                bar.set_postfix_str(f"{p.name}")
                if echo:
                    echo(f"run {p.name}")
                ok = self._run_one(p, entry, fresh=rerun and p.status == "finished")
                counts["trained" if ok else "failed"] += 1
                self._save_manifest(man, entries)
                bar.update(1)
                bar.set_postfix(counts)
                if not ok:
                    msg = f"run {p.name} failed: {entry['error']} (see {self.run_dir(p.name) / ERROR_FILE})"
                    log.warning(msg)
                    if echo:
                        echo(msg)
                    if stop_on_error:
                        raise RuntimeError(msg)
        finally:
            bar.close()
            for e in entries.values():  # interrupted (Ctrl-C): resumed from its checkpoint next time
                if e["status"] == "running":
                    e["status"] = "incomplete"
            self._save_manifest(man, entries)
        return self.table()

    def _start(self, rerun: bool) -> tuple[list[_Planned], dict, dict[str, dict]]:
        """Check the dataset and finished runs, write the manifest's entries for the plan (every engine)."""
        if not self.dataset_dir.exists():
            raise FileNotFoundError(f"dataset folder {self.dataset_dir} does not exist")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        planned = self._plan()
        if not rerun:
            self._check_finished(planned)
        man = self._load_manifest()
        old = {e.get("name"): e for e in man.get("runs", []) if isinstance(e, dict)}
        entries: dict[str, dict] = {}
        for p in planned:
            prev = old.get(p.name, {})
            entries[p.name] = {"name": p.name, "params": p.params, "status": p.status,
                               **{k: prev[k] for k in ("error", "wall_s", "started_utc", "finished_utc") if k in prev}}
            if p.status != "failed":
                entries[p.name].pop("error", None)
        self._save_manifest(man, entries)
        return planned, man, entries

    def table(self):
        """:func:`load_runs` of this sweep's folders (runs of the current plan first)."""
        import pandas as pd

        table = load_runs(self.out_dir) if self.out_dir.is_dir() and list_runs(self.out_dir) else pd.DataFrame(
            columns=["run", "path", "status", "error"])
        order = [n for n in self.names if n in table.index] + [n for n in table.index if n not in self.names]
        out = table.loc[order]
        out.attrs.update(table.attrs)
        return out

    def _run_one(self, p: _Planned, entry: dict, fresh: bool = False) -> bool:
        d = self.run_dir(p.name)
        resume = overwrite = False
        if d.is_dir() and any(d.iterdir()):
            can_resume = (not fresh and (d / "checkpoints" / "latest.txt").exists()
                          and (d / "config.json").exists())
            if can_resume:
                try:
                    from .config import resolve

                    want = resolve(self.preset, self.overrides(p.params)).to_dict()
                    can_resume = _read_json(d / "config.json") == want
                except (ValueError, FileNotFoundError):
                    can_resume = False
            resume, overwrite = can_resume, not can_resume
        (d / ERROR_FILE).unlink(missing_ok=True)
        (d / STOPPED_FILE).unlink(missing_ok=True)
        entry.update(status="running", started_utc=_utc_now(), resumed=resume)
        entry.pop("error", None)
        entry.pop("finished_utc", None)
        handler, buf = _capture_log()
        t0 = time.perf_counter()
        try:
            self._call_engine(d, self.overrides(p.params), resume=resume, overwrite=overwrite, name=p.name)
        except Exception as err:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
            entry.update(status="failed", error=_error_line(err), wall_s=round(time.perf_counter() - t0, 3),
                         finished_utc=_utc_now())
            d.mkdir(parents=True, exist_ok=True)
            (d / ERROR_FILE).write_text(entry["error"] + "\n\n" + "".join(traceback.format_exception(err)),
                                        encoding="utf-8")
            return False
        finally:
            _release_log(handler, buf, d)
        entry.update(wall_s=round(time.perf_counter() - t0, 3), finished_utc=_utc_now(),
                     status="finished" if (d / "metrics.json").exists() else "incomplete")
        if entry["status"] != "finished":
            entry["error"] = "the run ended without writing metrics.json"
        return entry["status"] == "finished"

    def _call_engine(self, run_dir: Path, overrides: dict, resume: bool, overwrite: bool, name: str) -> None:
        if callable(self.engine):
            self.engine(preset=self.preset, dataset_dir=self.dataset_dir, run_dir=run_dir, overrides=overrides,
                        resume=resume, overwrite=overwrite)
        elif self.engine == "trainer":
            from .train import train_from_config

            train_from_config(self.preset, self.dataset_dir, run_dir, overrides=overrides, resume=resume,
                              overwrite=overwrite, progress=False)
        else:
            from .notebooks import run_notebook

            if overwrite:  # notebook 03 would refuse a non-empty run folder
                from .rundir import safe_rmtree

                safe_rmtree(run_dir)
            preset = self.preset
            if Path(preset).suffix == ".json" and Path(preset).exists():
                preset = str(Path(preset).resolve())
            run_notebook("03_train.ipynb", self.out_dir / NOTEBOOK_FOLDER / f"{name}.ipynb",
                         {"dataset_dir": self.dataset_dir.resolve(), "run_dir": run_dir.resolve(), "preset": preset,
                          "overrides": dict(overrides), "interactive": False, "resume": resume},
                         timeout=self.timeout)


def _error_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _capture_log() -> tuple[logging.Handler, io.StringIO]:
    """Collect the kit's log records of one run (appended to its log.txt afterwards: the run folder may be
    emptied and recreated while it runs, so a file handler opened now could write into a deleted file)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("recon_kit")
    handler._recon_kit_level = logger.level  # type: ignore[attr-defined]
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler, buf


def _release_log(handler: logging.Handler, buf: io.StringIO, run_dir: Path) -> None:
    logger = logging.getLogger("recon_kit")
    logger.removeHandler(handler)
    logger.setLevel(handler._recon_kit_level)  # type: ignore[attr-defined]
    text = buf.getvalue()
    if text and run_dir.is_dir():
        with open(run_dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(text)


# ---- command-line helpers ------------------------------------------------------------------------------
def parse_grid_values(text: str, parse: Callable[[str], Any] | None = None) -> list[Any]:
    """``"0.01,0.03"`` -> ``[0.01, 0.03]``; ``"[0,0,0],[1,1,1]"`` -> two lists; ``"white,black"`` -> strings."""
    try:
        values = json.loads(f"[{text}]")
        if values:
            return values
    except ValueError:
        pass
    parse = parse or _parse_scalar
    return [parse(v.strip()) for v in text.split(",") if v.strip()]


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        low = text.lower()
        return low == "true" if low in ("true", "false") else text

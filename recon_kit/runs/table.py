"""Tables of runs: one row per run folder (parameters, metrics, status), filters, sorting, summaries."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recon_kit.config import ReconConfig
from recon_kit.runs.folder import (
    ERROR_FILE,
    EXPORTS,
    MANIFEST,
    STOPPED_FILE,
    _jsonable,
    read_json,
    snapshots,
    write_metrics_json,
)

if TYPE_CHECKING:  # annotations only; imported where used
    import pandas


def metrics_table(run: Any, keys: tuple[str, ...] | None = None, reload: bool = True):
    """A run's metrics.json as a one-column pandas table (dotted keys for nested values).

    ``run`` is a loaded :class:`recon_kit.runs.run.Run` or a run folder (then only metrics.json is read, so this
    also works while the run is still training). ``keys`` keeps the metrics under those dotted prefixes.
    """
    import pandas as pd

    from recon_kit.runs.folder import read_metrics_json

    if hasattr(run, "reload_metrics"):
        metrics = run.reload_metrics() if reload else run.metrics
    else:
        path = Path(run) / "metrics.json"
        metrics = read_metrics_json(path) if path.is_file() else {}
    flat = flat_metrics(metrics)
    if keys is not None:
        flat = {k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in keys)}

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else str(v)
        return "-" if v is None else v

    df = pd.DataFrame({"value": pd.Series({k: fmt(v) for k, v in flat.items()}, dtype=object)})
    df.index.name = "metric"
    return df


def metrics_dataframe(metrics: Mapping[str, Any]) -> "pandas.DataFrame":
    """A DataFrame of metrics: nested ``{row: {column: value}}`` gives one row per key; a flat dict one
    ``value`` column indexed by metric name."""
    import pandas as pd

    if metrics and all(isinstance(v, Mapping) for v in metrics.values()):
        return pd.DataFrame.from_dict({k: dict(v) for k, v in metrics.items()}, orient="index")
    cells = {k: (v if np.isscalar(v) or v is None else str(_jsonable(v))) for k, v in metrics.items()}
    return pd.DataFrame({"value": pd.Series(cells, dtype=object)})


def format_table(metrics: Mapping[str, Any], precision: int = 4) -> str:
    """A fixed-width text table of ``metrics`` (see :func:`metrics_dataframe`) for logs and notebooks."""
    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.{precision}f}" if math.isfinite(v) else str(float(v))
        return "-" if v is None else str(v)

    df = metrics_dataframe(metrics)
    if not len(df):
        return "(no metrics)"
    cellwise = df.map if hasattr(df, "map") else df.applymap  # pandas < 2.1 only has applymap
    return cellwise(fmt).to_string()


class MetricsTable:
    """Rows of metrics collected during an evaluation (e.g. one per view, plus a mean), shown and saved together."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, row: str, **metrics: Any) -> None:
        """Add or update the metrics of ``row``."""
        self.rows.setdefault(row, {}).update(metrics)

    def mean(self) -> dict[str, float]:
        """Mean of each numeric column over the finite values of the rows (an ``inf`` PSNR is left out).

        Use ``table.add("mean", **table.mean())`` to append it as a row.
        """
        columns: dict[str, list[float]] = {}
        for values in self.rows.values():
            for k, v in values.items():
                if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v):
                    columns.setdefault(k, []).append(float(v))
        return {k: float(np.mean(v)) for k, v in columns.items()}

    def to_dataframe(self) -> "pandas.DataFrame":
        return metrics_dataframe(self.rows)

    def format(self, precision: int = 4) -> str:
        return format_table(self.rows, precision)

    def write_json(self, path: str | Path, key: str | None = None) -> dict[str, Any]:
        """Merge the rows into the JSON file at ``path``, under ``key`` when given."""
        return write_metrics_json(path, {key: self.rows} if key else self.rows)


_DROP = object()  # what a leaf function returns for a value the flattened dict leaves out


def _flatten(obj: Mapping[str, Any], leaf, prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to dotted keys, each non-dict value passed through ``leaf`` (or dropped)."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, leaf, key + "."))
        elif (value := leaf(v)) is not _DROP:
            out[key] = value
    return out


def _metric_leaf(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and v and all(isinstance(r, Mapping) for r in v):
        return f"{len(v)} rows"
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v)) if all(isinstance(x, int) for x in v) else str(list(v))
    return v


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics flattened to dotted keys; lists of per-view rows are summarised as a count."""
    return _flatten(metrics, _metric_leaf, prefix)


ENV_KEYS = ("created_utc", "git_sha", "git_dirty", "torch", "device_name")


#: metrics where larger is better (for sort_runs / best_run); everything else sorts ascending
HIGHER_IS_BETTER = ("psnr", "ssim", "iou", "fscore", "f_score")


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
    return _flatten(obj, lambda v: v if v is None or isinstance(v, (bool, int, float, str)) else _DROP, prefix)


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
    from recon_kit.config import flatten

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"run folder {p} does not exist")
    cfg_raw = read_json(p / "config.json")
    config = None
    if isinstance(cfg_raw, dict):
        try:
            config = flatten(ReconConfig.from_dict(cfg_raw, source=str(p / "config.json")))
        except ValueError:  # an older or hand-edited config: flatten what is there
            config = _scalars(cfg_raw)
    metrics = read_json(p / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else None
    env = read_json(p / "env.json")
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
    from recon_kit.runs.folder import RunDir

    return RunDir(Path(run_dir)).read_history()


def load_histories(runs) -> dict[str, Any]:
    """``{run name: history DataFrame}`` for a table from :func:`load_runs`, a folder or a list of folders."""
    paths = [Path(p) for p in runs["path"]] if hasattr(runs, "columns") else list_runs(runs)
    return {p.name: load_history(p) for p in paths}


def _manifest_for(paths: Sequence[Path]) -> dict[Path, dict]:
    """The sweep.json entries of these runs, from the manifests of their parent folders."""
    entries: dict[Path, dict] = {}
    for parent in {p.parent for p in paths}:
        man = read_json(parent / MANIFEST)
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
    ```pass1.lr_mat` < 0.02``). ``status``: one status or a list (finished, failed, stopped, incomplete).
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

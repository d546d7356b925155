"""Parameter sweeps that fill a folder with runs (the table of runs is :mod:`recon_kit.runs.table`).

Reading runs::

    import recon_kit as rk
    table = rk.load_runs("outputs/sweeps/lr")          # one row per run folder (sub-folders of the path)
    rk.sort_runs(rk.filter_runs(table, {"geometry.grid_res": 48}), "train_psnr")

A row holds the run's name, ``path``, ``status`` (finished: metrics.json present; failed: error.txt present;
stopped: stopped.json present, an early-stopping scheduler ended it; incomplete: anything else), ``error``, the swept parameters (from the folder's sweep.json), every flattened
config key (:func:`recon_kit.config.flatten`: ``pass1.lr_mat``, ...), the scalar metrics (``train_psnr``,
``timings_s.pass1``, ...; a metric whose name is also a config key, such as ``device``, becomes
``metrics.device``), ``wall_s`` (training time: the sum of metrics.json's ``timings_s``), ``sweep_wall_s`` (the
whole run as the sweep timed it: loading, training, export, evaluation), a few ``env.*`` keys and the exports
(:data:`EXPORTS`: ``mesh_zip``, ``glb``, ``training_gif``, ... as paths, None when missing). ``table.attrs``
names the column groups: ``params``, ``config``, ``metrics``, ``exports``.

Sweeps::

    sweep = rk.Sweep("outputs/sweeps/lr", dataset_dir="outputs/demo/data", preset="cpu-small",
                       grid={"pass1.lr_mat": [0.01, 0.03], "geometry.grid_res": [32, 48]},
                       base={"pass1.iterations": 100})
    table = sweep.run()                                  # tqdm bar; returns load_runs(sweep folder)

Each parameter set trains into ``<sweep folder>/<name>`` where the name is built from its parameters
(``pass1.lr_mat=0.01__geometry.grid_res=32``). Re-running a sweep skips finished runs (metrics.json present),
resumes an interrupted one from its last checkpoint and retries failed ones. A run that raises leaves
``error.txt`` in its folder and a ``failed`` entry in ``sweep.json``; the other runs go on. ``engine="trainer"``
(default) calls :func:`recon_kit.runs.run.train_from_config` in this process; ``engine="papermill"`` executes
notebooks/03_train.ipynb for each run (executed copies in ``<sweep folder>/notebooks/``); ``engine="ray"``
schedules the runs as Ray Tune trials (:mod:`recon_kit.runs.ray_engine`: GPUs per trial, ASHA, Optuna, clusters;
``run(ray=RayOptions(...))``), each still training in-process on its worker into the same run folders.
The command line: ``recon-kit sweep --dataset D --grid pass1.lr_mat=0.01,0.03 --out outputs/sweeps/NAME``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from recon_kit.runs.folder import (
    ERROR_FILE,
    MANIFEST,
    STOPPED_FILE,
    _utc_now,
    _write_json,
    read_json,
)
from recon_kit.runs.params import SweepError, _Planned, _sanitise, grid_params, run_name  # noqa: F401
from recon_kit.runs.table import _scalars, list_runs, load_runs, read_run

__all__ = ["Sweep", "SweepError", "demo_dataset", "grid_params", "parse_grid_values", "run_name"]


log = logging.getLogger(__name__)


NOTEBOOK_FOLDER = "notebooks"  # papermill engine: executed copies of 03_train, one per run


# ---- the demo dataset for sweeps -----------------------------------------------------------------------
def demo_dataset(folder: str | os.PathLike[str], resolution: int = 128, capture_resolution: int | None = None) -> Path:
    """The built-in synthetic object prepared at ``resolution`` under ``folder`` (reused when already there).

    Returns ``folder`` (which holds ``<resolution>/transforms.json``) to pass as a sweep's ``dataset_dir``.
    """
    from recon_kit import synth
    from recon_kit.data import dataset as rk_dataset

    folder = Path(folder)
    if not (folder / str(resolution) / "transforms.json").exists():
        cap = folder / "demo_capture"
        if not (cap / "transforms.json").exists() and not any(cap.glob("*")):
            synth.write_demo_capture(cap, resolution=capture_resolution or max(2 * resolution, 96), n_test=2)
        rk_dataset.prepare_dataset(cap, folder, [resolution], progress=False, overwrite=True)
    return folder


# ---- sweeps -----------------------------------------------------------------------------------------------
Engine = Callable[..., Any]


class Sweep:
    """A list or grid of parameter sets trained headlessly, each into its own run folder under ``out_dir``.

    ``grid``: ``{"dotted.key": [values]}`` (every combination); ``runs``: explicit parameter sets
    (``[{"pass1.lr_mat": 0.01}, ...]``, appended after the grid's). ``base``: overrides every run gets (a
    run's parameters win). ``preset``: preset name or config file (as notebook 03's ``preset``).
    ``engine``: ``"trainer"`` (in this process), ``"papermill"`` (notebook 03 per run), ``"ray"`` (Ray Tune
    trials, each training as ``"trainer"`` on a Ray worker: :mod:`recon_kit.runs.ray_engine`) or a callable
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

    def _config_json(self, params: Mapping[str, Any]) -> dict:
        """The config.json a run of ``params`` writes, as read back (JSON: the config's tuples become lists), to
        compare with a run folder's."""
        from recon_kit.config import resolve

        return json.loads(json.dumps(resolve(self.preset, self.overrides(params)).to_dict()))

    @staticmethod
    def _saved_config_json(run_dir: Path) -> dict | None:
        """A run folder's config.json as :meth:`_config_json` writes it: loaded through :class:`ReconConfig`, so
        keys added since the run take their defaults and the resume history (``_history``) is left out."""
        from recon_kit.config import ReconConfig

        try:
            return json.loads(json.dumps(ReconConfig.load(run_dir / "config.json").to_dict()))
        except (ValueError, OSError):
            return read_json(run_dir / "config.json")

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
        from recon_kit.config import ConfigError, flatten, resolve, setting_matches

        stale = []
        for p in planned:
            if p.status != "finished":
                continue
            saved = self._saved_config_json(self.run_dir(p.name))
            try:
                want = self._config_json(p.params)
            except (ConfigError, FileNotFoundError):
                continue
            if isinstance(saved, dict) and saved != want:
                from recon_kit.config import ReconConfig

                try:
                    have = flatten(ReconConfig.from_dict(saved))
                except ValueError:
                    have = _scalars(saved)
                wanted = flatten(resolve(self.preset, self.overrides(p.params)))
                diff = [f"{k}: {have.get(k)!r} -> {v!r}" for k, v in wanted.items() if not setting_matches(have.get(k), v)]
                if not diff:
                    continue
                stale.append(f"{p.name} ({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''})")
        if stale:
            raise SweepError(
                f"{self.out_dir} holds finished runs trained with another configuration: {', '.join(stale)}; "
                "use another sweep folder, or run(rerun=True) (CLI: --rerun) to train them again")
        man = read_json(self.manifest_path)
        if isinstance(man, dict) and man.get("dataset_dir") and Path(man["dataset_dir"]) != self.dataset_dir.resolve():
            if any(p.status == "finished" for p in planned):
                raise SweepError(f"{self.out_dir} was swept on dataset {man['dataset_dir']}, not {self.dataset_dir}; "
                                 "use another sweep folder or rerun=True")

    # ---- manifest -------------------------------------------------------------------------------------
    def _load_manifest(self) -> dict:
        man = read_json(self.manifest_path)
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
        is a :class:`recon_kit.runs.ray_engine.RayOptions` (or a dict of its fields) and the runs go to Ray Tune.
        """
        from recon_kit.io.locking import acquire

        if self.engine == "ray":
            from recon_kit.runs.ray_engine import run_sweep

            return run_sweep(self, ray, progress=progress, retry_failed=retry_failed, rerun=rerun, echo=echo)
        if ray is not None:
            raise SweepError("ray options need engine='ray'")
        if not self.dataset_dir.exists():
            raise FileNotFoundError(f"dataset folder {self.dataset_dir} does not exist")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with acquire(self.out_dir, "sweep"):  # the same sweep started twice fails at once, naming this process
            return self._run_here(progress, retry_failed, rerun, stop_on_error, echo)

    def _run_here(self, progress: bool, retry_failed: bool, rerun: bool, stop_on_error: bool,
                  echo: Callable[[str], Any] | None):
        """:meth:`run` for the in-process engines (trainer, notebook, a callable), under the sweep folder's lock."""
        from tqdm.auto import tqdm

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
                    can_resume = self._saved_config_json(d) == self._config_json(p.params)
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
            from recon_kit.runs.run import train_from_config

            train_from_config(self.preset, self.dataset_dir, run_dir, overrides=overrides, resume=resume,
                              overwrite=overwrite, progress=False)
        else:
            from recon_kit.runs.notebook import run_notebook

            if overwrite:  # notebook 03 would refuse a non-empty run folder
                from recon_kit.io.overwrite import clear

                clear(run_dir, {"dataset": self.dataset_dir})
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

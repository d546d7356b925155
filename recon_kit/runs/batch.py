"""Batch reconstruction: every capture folder under a directory, prepared and trained into one run folder each.

::

    from recon_kit.runs.batch import Batch
    b = Batch("captures/", "outputs/catalogue", preset="cpu-small", resolution=128)
    b.run()                                   # sequential; b.run(ray=RayOptions(...)) schedules on Ray Tune
    b.summary()                               # time, faces, PSNR, IoU and the one-line reason of each failure

A capture folder is any folder holding ``multi_views/`` (and optionally ``depth_renders/`` and
``transforms.json``, see :mod:`recon_kit.data`). Capture ``A/B`` trains into ``OUT/A-B`` (a run folder like any
other: :func:`recon_kit.runs.table.load_runs` reads ``OUT``), its prepared dataset goes to ``OUT/_datasets/A-B``, and
``OUT/batch.json`` is the manifest. Each capture runs through a one-run :class:`recon_kit.runs.sweep.Sweep` (resume,
``error.txt``, ``log.txt`` as a sweep's runs); re-running skips finished captures (refusing, as a sweep does, when
they were trained with another configuration: ``rerun=True``), resumes interrupted ones and retries failed ones. The command line: ``recon-kit batch CAPTURES_DIR --out OUT [--preset ...] [--engine ray]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recon_kit.runs.folder import read_json, _utc_now, _write_json
from recon_kit.runs.params import _Planned, _sanitise
from recon_kit.runs.sweep import Sweep
from recon_kit.runs.table import read_run

__all__ = ["Batch", "find_captures", "capture_name", "PrepareAndTrain", "MANIFEST", "DATA_FOLDER", "SUMMARY_COLUMNS"]

MANIFEST = "batch.json"
DATA_FOLDER = "_datasets"
SUMMARY_COLUMNS = ["status", "time_s", "faces", "train_psnr", "test_psnr", "train_iou", "error"]


def find_captures(root: str | os.PathLike[str]) -> list[Path]:
    """Capture folders (holding ``multi_views/``) at or below ``root``, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"captures folder {root} does not exist")
    if (root / "multi_views").is_dir():
        return [root]
    found = sorted({p.parent for p in root.rglob("multi_views") if p.is_dir()},
                   key=lambda p: p.relative_to(root).as_posix())
    if not found:
        raise FileNotFoundError(f"no capture folders (with multi_views/) under {root}")
    return found


def capture_name(capture: Path, root: Path) -> str:
    """``catalogue/shoe_12`` -> ``catalogue-shoe_12``: the run folder name of a capture."""
    rel = Path(capture).resolve().relative_to(Path(root).resolve()).as_posix()
    return _sanitise(rel.replace("/", "-") if rel != "." else Path(root).resolve().name)


class PrepareAndTrain:
    """A sweep engine for one capture: prepare it into ``dataset_dir`` (once per resolution), then train."""

    def __init__(self, capture: Path, prepare: Mapping[str, Any] | None = None):
        self.capture = Path(capture).resolve()
        self.prepare = dict(prepare or {})

    def __call__(self, preset, dataset_dir, run_dir, overrides, resume, overwrite, report=None) -> dict:
        from recon_kit.config import resolve
        from recon_kit.data.dataset import prepare_dataset

        res = resolve(preset, overrides).data.resolution
        if not (Path(dataset_dir) / str(res) / "transforms.json").exists():
            prepare_dataset(self.capture, dataset_dir, [res], progress=False, overwrite=True, **self.prepare)
        if report is None:
            from recon_kit.runs.run import train_from_config

            return train_from_config(preset, dataset_dir, run_dir, overrides, resume=resume, overwrite=overwrite,
                                     progress=False)
        from recon_kit.runs.ray_engine import train_reporting

        return train_reporting(preset, dataset_dir, run_dir, overrides, resume, overwrite, report=report)


class Batch:
    """Every capture under ``captures_dir`` reconstructed into ``out_dir/<capture name>``.

    ``preset``/``base``: the training config of every capture (``base``: overrides; ``resolution`` sets
    ``data.resolution``); ``prepare``: keyword arguments of :func:`recon_kit.data.dataset.prepare_dataset`
    (``mask_source``, ``align``, ...).
    """

    def __init__(self, captures_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 preset: str = "cpu-small", base: Mapping[str, Any] | None = None, resolution: int | None = None,
                 prepare: Mapping[str, Any] | None = None):
        self.captures_dir = Path(captures_dir)
        self.out_dir = Path(out_dir)
        self.preset = str(preset)
        self.base = {**(base or {}), **({"data.resolution": int(resolution)} if resolution else {})}
        self.prepare = dict(prepare or {})
        self.captures = find_captures(self.captures_dir)
        self.names = [capture_name(c, self.captures_dir) for c in self.captures]

    def __len__(self) -> int:
        return len(self.captures)

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST

    def executor(self, i: int) -> Sweep:
        """The one-run sweep that reconstructs capture ``i`` (its ``_run_one`` does the work)."""
        name = self.names[i]
        return Sweep(self.out_dir, self.out_dir / DATA_FOLDER / name, runs=[{}], names=[name], preset=self.preset,
                     base=self.base, engine=PrepareAndTrain(self.captures[i], self.prepare))

    def plan(self):
        """One row per capture: name, capture folder and status (finished, failed, incomplete, pending)."""
        import pandas as pd

        return pd.DataFrame([{"name": n, "capture": str(c), "status": self._status(n)}
                             for n, c in zip(self.names, self.captures)]).set_index("name")

    def _status(self, name: str) -> str:
        d = self.out_dir / name
        return read_run(d).status if d.is_dir() and any(d.iterdir()) else "pending"

    def _save(self, entries: dict[str, dict]) -> None:
        counts: dict[str, int] = {}
        for e in entries.values():
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        man = read_json(self.manifest_path) or {"created_utc": _utc_now()}
        man.update(updated_utc=_utc_now(), captures_dir=str(self.captures_dir.resolve()), preset=self.preset,
                   base=self.base, prepare=self.prepare, runs=[entries[n] for n in self.names],
                   counts=dict(sorted(counts.items())))
        _write_json(self.manifest_path, man)

    def run(self, progress: bool = True, rerun: bool = False, retry_failed: bool = True,
            echo: Callable[[str], Any] | None = print, ray: Any = None):
        """Reconstruct every capture not finished yet (``ray``: a :class:`recon_kit.runs.ray_engine.RayOptions` or
        dict: on Ray Tune); returns :meth:`summary`. Holds the batch folder's lock (one driver per batch, either
        engine)."""
        from recon_kit.io.locking import acquire

        self.out_dir.mkdir(parents=True, exist_ok=True)
        with acquire(self.out_dir, "batch"):  # the same batch started twice fails at once, naming this process
            return self._run_here(progress, rerun, retry_failed, echo, ray)

    def _run_here(self, progress: bool, rerun: bool, retry_failed: bool, echo: Callable[[str], Any] | None,
                  ray: Any):
        """:meth:`run` under the batch folder's lock."""
        from tqdm.auto import tqdm

        from recon_kit.runs.ray_engine import RayOptions, TrialBook, _Trial, run_trials

        old = {e.get("name"): e for e in (read_json(self.manifest_path) or {}).get("runs", []) if isinstance(e, dict)}
        entries: dict[str, dict] = {}
        todo: dict[str, _Trial] = {}
        for i, (name, cap) in enumerate(zip(self.names, self.captures)):
            status = self._status(name)
            prev = old.get(name, {})
            entries[name] = {"name": name, "capture": str(cap), "status": status,
                             **{k: prev[k] for k in ("error", "wall_s") if k in prev and status != "pending"}}
            if status == "finished" and not rerun:  # a finished capture counts only under the same config
                self.executor(i)._check_finished([_Planned(name, {}, status)])
            if (status == "finished" and not rerun) or (status == "failed" and not retry_failed):
                if echo:
                    echo(f"capture {name}: skipped ({status})")
                continue
            todo[name] = _Trial(self.executor(i), _Planned(name, {}, status), fresh=rerun and status == "finished")
        self._save(entries)
        opts = RayOptions.coerce(ray) if ray is not None else None
        bar = tqdm(total=len(todo), desc=f"batch {self.out_dir.name}", disable=not progress, unit="capture")
        book = TrialBook(entries, lambda: self._save(entries), lambda n: self.out_dir / n, echo, bar, noun="capture")
        try:
            if opts is not None:
                run_trials(todo, opts, self.out_dir / ".ray", book, max_t=10_000)
            else:
                for name, trial in todo.items():
                    book(name, "running", {"attempt": 1})
                    entry: dict[str, Any] = {}
                    ok = trial.sweep._run_one(trial.planned, entry, fresh=trial.fresh)
                    book(name, "finished" if ok else "failed", {"error": entry.get("error")})
        finally:
            bar.close()
            for e in entries.values():
                if e["status"] == "running":
                    e["status"] = "incomplete"
            self._save(entries)
        return self.summary()

    def summary(self):
        """One row per capture: status, time_s (the whole capture: preparing, training, export, evaluation),
        faces, train_psnr, test_psnr (when the capture has held-out views), train_iou, error (one line)."""
        import pandas as pd

        from recon_kit.runs.table import load_runs

        man = {e.get("name"): e for e in (read_json(self.manifest_path) or {}).get("runs", []) if isinstance(e, dict)}
        present = [self.out_dir / n for n in self.names if (self.out_dir / n).is_dir()]
        table = load_runs(present) if present else pd.DataFrame(columns=["status", "error"])
        rows = []
        for n in self.names:
            row = table.loc[n].to_dict() if n in table.index else {"status": "pending"}
            entry = man.get(n, {})
            row["time_s"] = entry.get("wall_s")
            if row.get("status") == "failed" and not row.get("error"):
                row["error"] = entry.get("error")
            rows.append({c: row.get(c) for c in SUMMARY_COLUMNS})
        out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS, index=pd.Index(self.names, name="capture"))
        return out.convert_dtypes()

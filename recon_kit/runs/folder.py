"""Run folders under ``outputs/``: one folder per run, holding everything the run wrote.

Layout (see README "Outputs")::

    outputs/<run>/
      env.json        python/torch/cuda versions, device, git sha + dirty flag, platform (written on create)
      log.txt         the run's log (RunDir.get_logger())
      history.jsonl   one JSON object per line, append-only (RunDir.append_jsonl / read_history)
      *.json          atomically written summaries (RunDir.write_json), e.g. config.json, metrics.json

Usage::

    run = RunDir.create("outputs")                       # outputs/2026-11-24T20-37-47Z_ab12cd
    run = RunDir.create("outputs", "shoe", resume=True)  # keep what outputs/shoe holds
    log = run.get_logger(); log.info("hello")
    run.append_jsonl("history.jsonl", {"step": 1, "loss": 0.5})
    run.write_json("metrics.json", {"psnr": 31.2})
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon_kit.io.fsio import atomic_write_text
from recon_kit.io.locking import LOCK_FILE
from recon_kit.io.overwrite import check_clearable, clear, mark

log = logging.getLogger(__name__)


def _jsonable(x: Any) -> Any:
    """Plain-JSON version of metric values: numpy/torch scalars to Python, non-finite floats to None."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def _deep_merge(old: dict, new: Mapping) -> dict:
    out = dict(old)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def read_metrics_json(path: str | Path) -> dict[str, Any]:
    """The metrics stored at ``path``, or an empty dict when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it away or fix it before writing metrics") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``metrics`` into the JSON object at ``path`` (nested dicts merged key by key) and write atomically.

    Written to a temporary file in the same folder and moved over with ``os.replace``, so readers never see a
    half-written file. Non-finite floats (an ``inf`` PSNR, a NaN normal consistency) are stored as null.
    Returns the merged content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = _deep_merge(read_metrics_json(path), _jsonable(dict(metrics)))
    atomic_write_text(path, json.dumps(merged, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return merged


__all__ = ["RunDir", "RunDirExistsError", "environment_info", "new_run_path"]


ENV_FILE = "env.json"


LOG_FILE = "log.txt"


HISTORY_FILE = "history.jsonl"


_REPO_ROOT = Path(__file__).resolve().parents[1]


class RunDirExistsError(FileExistsError):
    """The run folder exists and is not empty, and neither overwrite nor resume was asked for."""


def _utc_name() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    return f"{stamp}_{secrets.token_hex(3)}"


def attach_package_log(run_dir: str | os.PathLike[str], level: int = logging.INFO) -> logging.Handler:
    """Send the ``recon_kit`` package's log records (training, auto settings, warnings) to ``run_dir/log.txt``;
    a handler attached earlier for another run is detached first (one run's log per process)."""
    logger = logging.getLogger("recon_kit")
    for h in list(logger.handlers):
        if getattr(h, "_recon_kit_run_log", False):
            logger.removeHandler(h)
            h.close()
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(run_dir) / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%Y-%m-%dT%H:%M:%S"))
    handler.setLevel(level)
    handler._recon_kit_run_log = True
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    return handler


def new_run_path(root: str | os.PathLike[str] = "outputs/runs") -> Path:
    """``root/<UTC time>_<suffix>``: a fresh run folder's path (nothing is created), the default of notebook 03."""
    return Path(root) / _utc_name()


def _json_default(obj: Any) -> Any:
    """Make the usual research objects JSON-serialisable: paths, numpy/torch scalars and arrays, dataclasses."""
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays/scalars, torch tensors
    if callable(tolist):
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu()
        return obj.tolist()
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _git_info(repo: Path = _REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return {"git_sha": None, "git_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": sha, "git_dirty": None if status is None else bool(status)}


def environment_info() -> dict[str, Any]:
    """Versions and hardware of this process: what env.json records."""
    info: dict[str, Any] = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "argv": list(sys.argv),
    }
    try:
        import recon_kit

        info["recon_kit"] = recon_kit.__version__
    except Exception:  # pragma: no cover - the package is always importable here
        info["recon_kit"] = None
    try:
        import torch

        cuda = torch.cuda.is_available()
        info.update(
            torch=torch.__version__,
            cuda=torch.version.cuda,
            cuda_available=cuda,
            device="cuda" if cuda else "cpu",
            device_name=torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine()),
            torch_threads=torch.get_num_threads(),
        )
    except ImportError:
        info.update(torch=None, cuda=None, cuda_available=False, device="cpu", device_name=platform.machine())
    info.update(_git_info())
    return info


def safe_rmtree(path: Path) -> None:
    """Delete a folder the kit wrote; refuses the user's folders (see :func:`recon_kit.io.overwrite.check_clearable`)."""
    check_clearable(path)
    shutil.rmtree(path)


class RunDir:
    """One run folder. Build it with :meth:`create` (new or resumed run) or :meth:`open` (read an old one)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.dir = Path(path)

    # construction ---------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str] = "outputs",
        name: str | None = None,
        overwrite: bool = False,
        resume: bool = False,
        inputs: dict[str, Any] | None = None,
    ) -> RunDir:
        """Make ``root/name`` (``name=None``: a UTC timestamp + short random suffix) and write env.json.

        An existing, non-empty folder is an error unless ``overwrite=True`` (its contents are deleted) or
        ``resume=True`` (its contents are kept; env.json records this session and keeps the earlier ones).
        An absolute ``name`` is used as is. ``inputs`` (``{"dataset": path, ...}``) are what the run reads:
        overwrite refuses to clear a folder that holds or lies inside one (:func:`recon_kit.io.overwrite.clear`).
        """
        if overwrite and resume:
            raise ValueError("RunDir.create: pass overwrite=True or resume=True, not both")
        path = Path(root) / (name if name is not None else _utc_name())
        if path.exists() and not path.is_dir():
            raise RunDirExistsError(f"run folder {path} exists and is not a directory")
        non_empty = path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())
        if non_empty and not (overwrite or resume):
            raise RunDirExistsError(
                f"run folder {path} already exists and is not empty; pass overwrite=True to delete its contents "
                f"or resume=True to continue in it (CLI: --overwrite / --resume), or choose another name"
            )
        run = cls(path)
        if non_empty and overwrite:
            run.close()  # release log.txt before deleting it
            clear(path, inputs or {})
        path.mkdir(parents=True, exist_ok=True)
        mark(path, "run")
        env = environment_info()
        old = run.dir / ENV_FILE
        if resume and old.exists():
            try:
                prev = json.loads(old.read_text())
                env["previous_sessions"] = [*prev.pop("previous_sessions", []), prev]
            except (ValueError, AttributeError):
                pass  # an unreadable env.json is simply replaced
        run.write_json(ENV_FILE, env)
        return run

    @classmethod
    def at(cls, path: str | os.PathLike[str], overwrite: bool = False, resume: bool = False,
           inputs: dict[str, Any] | None = None) -> RunDir:
        """:meth:`create` for an exact path (what notebooks get as their ``run_dir`` parameter)."""
        path = Path(path)
        return cls.create(path.parent, path.name, overwrite=overwrite, resume=resume, inputs=inputs)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """An existing run folder, for reading (no env.json is written)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"run folder {path} does not exist")
        return cls(path)

    # paths ----------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.dir.name

    def path(self, *parts: str | os.PathLike[str]) -> Path:
        """``run/<parts...>``, creating its parent folders (not the file itself)."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def __fspath__(self) -> str:
        return os.fspath(self.dir)

    def __str__(self) -> str:
        return str(self.dir)

    def __repr__(self) -> str:
        return f"RunDir({str(self.dir)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.dir.resolve() == other.dir.resolve()

    def __hash__(self) -> int:
        return hash(self.dir.resolve())

    # files ----------------------------------------------------------------------------------------------
    def write_json(self, name: str | os.PathLike[str], obj: Any) -> Path:
        """Write ``obj`` as JSON atomically (temporary file in the same folder + os.replace)."""
        target = self.path(name)
        atomic_write_text(target, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")
        return target

    def read_json(self, name: str | os.PathLike[str]) -> Any:
        return json.loads((self.dir / name).read_text(encoding="utf-8"))

    def append_jsonl(self, name: str | os.PathLike[str], record: dict[str, Any]) -> None:
        """Append one record as a single JSON line (one write call, flushed: survives a crash)."""
        line = json.dumps(record, default=_json_default, allow_nan=True)
        if "\n" in line:  # cannot happen with json.dumps, but a broken line would corrupt the file
            raise ValueError("a JSONL record must serialise to one line")
        with open(self.path(name), "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def read_jsonl(self, name: str | os.PathLike[str] = HISTORY_FILE) -> list[dict[str, Any]]:
        """Records of a JSONL file; a truncated last line (a crash mid-write) is ignored; no file -> []."""
        p = self.dir / name
        if not p.exists():
            return []
        lines = p.read_text(encoding="utf-8").splitlines()
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if i == len(lines) - 1:
                    break  # partial last line
                raise ValueError(f"{p}: line {i + 1} is not valid JSON") from None
        return records

    def read_history(self, name: str | os.PathLike[str] = HISTORY_FILE):
        """``history.jsonl`` as a pandas DataFrame (one row per record; empty frame when there is none)."""
        import pandas as pd

        return pd.DataFrame.from_records(self.read_jsonl(name))

    # logging --------------------------------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.dir / LOG_FILE

    def _logger_name(self) -> str:
        digest = hashlib.sha1(str(self.dir.resolve()).encode()).hexdigest()[:10]
        return f"recon_kit.run.{self.dir.name.replace('.', '_')}-{digest}"

    def get_logger(self, level: int = logging.INFO, stream: bool = False) -> logging.Logger:
        """The run's logger: writes to ``log.txt`` (one handler per run, however often this is called).

        ``stream=True`` also prints records on stdout (once). Records propagate to the ``recon_kit`` logger.
        """
        logger = logging.getLogger(self._logger_name())
        logger.setLevel(level)
        target = os.path.abspath(self.log_file)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
        if not any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
            self.dir.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(target, encoding="utf-8")
            fh.setFormatter(fmt)
            logger.addHandler(fh)
        if stream and not any(getattr(h, "_recon_kit_stream", False) for h in logger.handlers):
            sh = logging.StreamHandler(sys.stdout)
            sh.setFormatter(fmt)
            sh._recon_kit_stream = True  # type: ignore[attr-defined]
            logger.addHandler(sh)
        return logger

    def close(self) -> None:
        """Close and detach the run's log handlers (files can then be moved or deleted)."""
        logger = logging.getLogger(self._logger_name())
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_history(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                    log.warning("%s: skipping an unreadable line", path)
    return rows


def snapshot_key(path: Path) -> tuple[int, int] | None:
    """``(pass number, iteration)`` of ``snapshots/pass<N>_<it>.png``; None for other files."""
    m = re.fullmatch(r"pass(\d+)_(\d+)", path.stem)
    return (int(m.group(1)), int(m.group(2))) if m and path.suffix.lower() == ".png" else None


def snapshots(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The run's training snapshots in training order (pass, then iteration)."""
    folder = Path(run_dir) / "snapshots"
    if not folder.is_dir():
        return []
    keyed = [(snapshot_key(p), p) for p in folder.iterdir()]
    return [p for k, p in sorted((k, p) for k, p in keyed if k is not None)]


MANIFEST = "sweep.json"


ERROR_FILE = "error.txt"
STOPPED_FILE = "stopped.json"  # an early-stopping scheduler ended the run (ray engine): not a failure


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


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: Any) -> None:

    RunDir(path.parent).write_json(path.name, obj)  # atomic


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """The JSON value stored at ``path``, or ``default`` when the file is missing or unreadable (the one JSON
    reader of the runs layer: config.json, metrics.json, env.json, manifests)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


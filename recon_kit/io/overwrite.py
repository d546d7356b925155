"""``--overwrite`` that never deletes what the user brought.

A folder the kit writes (a run folder, a demo output folder, a prepared dataset) carries a marker file,
``.recon-kit``. :func:`clear` empties a folder only when

* it carries that marker (or is a run folder written before markers existed: an ``env.json`` by recon-kit),
* it neither contains nor lies inside one of the run's inputs (capture, dataset, config, ground-truth mesh),
* it is not the current directory, one of its parents, the home or root folder, or a source tree.

Otherwise :class:`OverwriteRefused` names both paths. Clearing keeps the folder's lock file, so a second
writer cannot slip in between the clear and the new run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from recon_kit.io.locking import LOCK_FILE

__all__ = ["MARKER", "OverwriteRefused", "check_clearable", "clear", "is_kit_folder", "mark"]

MARKER = ".recon-kit"
_REPO_ROOT = Path(__file__).resolve().parents[2]


class OverwriteRefused(ValueError):
    """Clearing this folder could delete something the user brought."""


def mark(folder: str | os.PathLike[str], kind: str) -> Path:
    """Write the marker that lets a later ``--overwrite`` clear ``folder`` (``kind``: run, demo, dataset)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MARKER
    if not path.exists():
        path.write_text(json.dumps({"written_by": "recon-kit", "kind": kind}) + "\n", encoding="utf-8")
    return path


def is_kit_folder(folder: str | os.PathLike[str]) -> bool:
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    for name in ("env.json", "transforms.json"):  # run folders and datasets from before markers
        try:
            if "recon_kit" in json.loads((folder / name).read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError, TypeError):
            pass
    return False


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_clearable(folder: str | os.PathLike[str], inputs: Mapping[str, str | os.PathLike[str] | None] = {}
                    ) -> None:
    """Raise :class:`OverwriteRefused` unless emptying ``folder`` is safe (see the module docstring)."""
    raw = Path(folder)
    folder = raw.resolve()
    cwd = Path.cwd().resolve()
    if _inside(cwd, folder):
        raise OverwriteRefused(f"refusing to clear {raw}: it is (or holds) the current directory {cwd}; "
                               "choose another output folder")
    if folder in (Path.home().resolve(), Path(folder.anchor)) or _inside(_REPO_ROOT, folder):
        raise OverwriteRefused(f"refusing to clear {raw}: it is the home, root or recon-kit source folder; "
                               "choose another output folder")
    for name, path in inputs.items():
        if path is None or str(path) == "demo":
            continue
        p = Path(path).expanduser().resolve()
        if _inside(p, folder):
            raise OverwriteRefused(f"refusing to clear {raw}: it contains the {name} {p}; "
                                   "choose an output folder outside your inputs")
        if _inside(folder, p):
            raise OverwriteRefused(f"refusing to clear {raw}: it is inside the {name} {p}; "
                                   "choose an output folder outside your inputs")
    for m in (".git", "pyproject.toml", "setup.py"):
        if (folder / m).exists():
            raise OverwriteRefused(f"refusing to clear {raw}: it contains {m}; choose another output folder")
    if folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir()) and not is_kit_folder(folder):
        raise OverwriteRefused(f"refusing to clear {raw}: recon-kit did not write it (no {MARKER} marker); "
                               "move its files away yourself or choose another output folder")


def clear(folder: str | os.PathLike[str], inputs: Mapping[str, str | os.PathLike[str] | None] = {}) -> None:
    """Empty ``folder`` after :func:`check_clearable`, keeping its lock file."""
    check_clearable(folder, inputs)
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()

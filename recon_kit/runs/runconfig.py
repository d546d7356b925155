"""A run's ``config.json``: the settings it trains with, and the history of changes made on resume.

Resuming with settings that differ from the saved ones is refused (:class:`SettingsChanged` lists the keys)
unless the user allows it; then the change is recorded under ``"_history"`` in config.json, which
:meth:`recon_kit.config.ReconConfig.load` ignores.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from recon_kit.config import ReconConfig, flatten, setting_matches
from recon_kit.io.fsio import atomic_write_text

__all__ = ["HISTORY_KEY", "SettingsChanged", "changed_keys", "write_run_config"]

HISTORY_KEY = "_history"


class SettingsChanged(ValueError):
    """A resumed run was given settings that differ from its config.json."""


def changed_keys(old: ReconConfig, new: ReconConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every setting that differs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not setting_matches(a.get(k), b.get(k))}


def write_run_config(run_dir: str | Path, cfg: ReconConfig, resume: bool = False, allow_changes: bool = False
                     ) -> dict[str, tuple[Any, Any]]:
    """Check ``cfg`` against the run's config.json when resuming, then write it (atomically) with its history.

    Returns the changed keys (empty for a new run or an unchanged resume).
    """
    path = Path(run_dir) / "config.json"
    history: list = []
    changes: dict = {}
    if resume and path.exists():
        saved = ReconConfig.load(path)
        try:
            history = list(json.loads(path.read_text(encoding="utf-8")).get(HISTORY_KEY, []))
        except (ValueError, AttributeError):
            history = []
        changes = changed_keys(saved, cfg)
        if changes and not allow_changes:
            listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in ((k, *v) for k, v in changes.items()))
            raise SettingsChanged(f"{path}: resuming with changed settings: {listed}; resume with the saved "
                                  "settings, or pass --allow-changes (allow_changes=True) to continue with the new ones")
        if changes:
            history.append({"utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                            "changed": {k: list(v) for k, v in changes.items()}})
    data = cfg.to_dict()
    if history:
        data[HISTORY_KEY] = history
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return changes

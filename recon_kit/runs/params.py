"""Parameter sets of a sweep and their run-folder names (grid_params, run_name), and SweepError.

Shared by the sequential sweep (:mod:`recon_kit.runs.sweep`) and the Ray engine (:mod:`recon_kit.runs.ray_engine`),
so that the engine can hand a sweep over to Ray without the two modules importing each other.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass
class _Planned:
    name: str
    params: dict[str, Any]
    status: str  # finished, failed, stopped, incomplete, pending

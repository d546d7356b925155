"""Divergence guard: notice a run that went bad within a step, and decide what to do about it.

A step is bad when its loss is not finite, when it exceeds ``factor`` times the running median of the last
``window`` good losses (after ``min_history`` of them), or when a parameter holds NaN/Inf. The trainer then
rolls back to its last good checkpoint and lowers the learning rates once (``lr_drop``); a second bad step
after that stops the run with :class:`DivergenceError`, naming the parameter and a fix.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["DivergenceError", "DivergenceGuard", "Verdict", "first_nonfinite", "largest_gradient"]


class DivergenceError(RuntimeError):
    """Training diverged and rolling back with a lower learning rate did not help."""


@dataclass
class Verdict:
    """Why a step is bad: ``reason`` for the log, ``parameter`` the one to blame (may be None)."""

    reason: str
    parameter: str | None = None


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """Name of the first tensor holding NaN or Inf, or None (one host sync).

    Judged from each tensor's sum, which is NaN/Inf when any entry is (or when the entries are so large that
    they overflow, which is divergence too); a sum is several times cheaper than ``isfinite().all()``.
    """
    named = list(named)
    if not named:
        return None
    flags = torch.isfinite(torch.stack([t.detach().float().sum() for _, t in named]))
    if bool(flags.all()):
        return None
    return named[int((~flags).nonzero()[0])][0]


def largest_gradient(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """Name of the parameter with the largest gradient norm (the likeliest culprit of an exploding loss)."""
    norms = [(float(p.grad.detach().float().norm()), n) for n, p in named if p.grad is not None]
    norms = [(v if math.isfinite(v) else math.inf, n) for v, n in norms]
    return max(norms)[1] if norms else None


class DivergenceGuard:
    """Running-median check of losses plus finiteness of parameters; state is the recent losses only."""

    def __init__(self, factor: float = 100.0, window: int = 50, min_history: int = 1):
        self.factor, self.min_history = factor, min_history
        self.recent: deque[float] = deque(maxlen=window)

    def reset(self, losses: Iterable[float] = ()) -> None:
        """Forget the loss history (new pass, rollback), optionally seeding it with known-good losses."""
        self.recent.clear()
        self.recent.extend(v for v in losses if math.isfinite(v))

    def check(self, loss: float, named_params: Iterable[tuple[str, torch.Tensor]] = ()) -> Verdict | None:
        """None when the step looks healthy (its loss joins the history), else the :class:`Verdict`."""
        named_params = list(named_params)
        if not math.isfinite(loss):
            return Verdict(f"loss is {loss}", first_nonfinite(named_params) or largest_gradient(named_params))
        bad = first_nonfinite(named_params)
        if bad is not None:
            return Verdict(f"parameter {bad} holds NaN/Inf", bad)
        if self.factor > 0 and len(self.recent) >= self.min_history:
            median = statistics.median(self.recent)
            if median > 0 and loss > self.factor * median:
                return Verdict(f"loss {loss:.4g} exceeds {self.factor:g} x its running median {median:.4g}",
                               largest_gradient(named_params))
        self.recent.append(loss)
        return None

"""Divergence guard: notice a run that went bad within a step, and decide what to do about it.

A step is bad when its loss is not finite, when it exceeds ``factor`` times the running median of the last
``window`` good losses (after ``min_history`` of them), or when a parameter holds NaN/Inf. The trainer then
rolls back to its last good checkpoint and lowers the learning rates once (``lr_drop``); a second bad step
after that stops the run with :class:`DivergenceError`, naming the parameter and a fix. A step that runs out of
device memory stops with :class:`OutOfDeviceMemory`, naming the settings that fit.

The trainer-facing helpers (:func:`guard_step`, :func:`remember_good`, :func:`roll_back`,
:func:`check_exportable`, :func:`load_latest_checkpoint`) live here so that :mod:`recon_kit.train.trainer` only
calls them; they take the trainer and touch only its public state.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recon_kit.config import ReconConfig

__all__ = ["CheckpointError", "DivergenceError", "DivergenceGuard", "OutOfDeviceMemory", "Verdict", "check_exportable",
           "guard_step", "first_nonfinite", "judgement_due", "largest_gradient", "load_latest_checkpoint", "out_of_memory",
           "remember_good", "roll_back", "trained_parameters"]

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """Training diverged and rolling back with a lower learning rate did not help."""


class OutOfDeviceMemory(RuntimeError):
    """A training step did not fit in the device's memory; the message says which settings to lower."""


def out_of_memory(trainer) -> OutOfDeviceMemory:
    """The one-line error for a step that ran out of device memory: the pass, step, size, batch and peak, the
    settings that use less memory per view (``view_chunk``, ``shade_chunk``) and how to continue the run."""
    cfg, name = trainer.cfg, trainer.pass_name
    H, W = trainer.views.rgb_linear.shape[1:3]
    held = ""
    if trainer.device.type == "cuda":
        _, total = torch.cuda.mem_get_info(trainer.device)
        held = (f", {torch.cuda.max_memory_allocated(trainer.device) / 2**30:.1f} GiB peak of the GPU's "
                f"{total / 2**30:.1f} GiB")
    chunk = "" if cfg.view_chunk == 1 else " --set view_chunk=1"
    shade = "" if cfg.shade_chunk else " --set shade_chunk=262144"
    lower = "lower data.resolution" if cfg.view_chunk == 1 else f"lower {name}.batch or data.resolution"
    fix = (f"use less memory per view with{chunk}{shade} (2048², batch 6 fits in 10.7 GiB with both), or {lower}"
           if chunk or shade else lower)
    return OutOfDeviceMemory(f"the GPU ran out of memory in {name} step {trainer.it} ({W}x{H}, batch "
                             f"{getattr(cfg, name).batch}{held}); {fix}; an interrupted run continues with "
                             "--resume --allow-changes")


class CheckpointError(RuntimeError):
    """No checkpoint of the run folder can be read."""


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
        self.unjudged: list[torch.Tensor] = []   # step totals still on the device (``guard_every`` > 1)

    def reset(self, losses: Iterable[float] = ()) -> None:
        """Forget the loss history (new pass, rollback), optionally seeding it with known-good losses."""
        self.recent.clear()
        self.unjudged.clear()
        self.recent.extend(v for v in losses if math.isfinite(v))

    def take_unjudged(self) -> list[float]:
        """The totals waiting for judgement, read back in one host sync, and forgotten."""
        totals = torch.stack([t.detach().float().reshape(()).to(self.unjudged[-1].device) for t in self.unjudged])
        self.unjudged.clear()
        return totals.tolist()

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


# ---- the trainer's side: check a step, keep a good state, roll back, refuse a NaN export, resume ------------
def trained_parameters(trainer: Any) -> list[tuple[str, torch.Tensor]]:
    """The current pass's trained tensors with dotted names (``dmtet.sdf``, ``textures.kd.data``, ...)."""
    mods = {**trainer.phase.modules(), "light": trainer.light}
    return [(f"{m}.{n}", p) for m, mod in mods.items() for n, p in mod.named_parameters()]


def guard_step(trainer: Any, losses: dict) -> dict | None:
    """Judge the step that produced ``losses``: None when healthy, else roll back (:func:`roll_back`) and return
    the losses to report for the undone step. With ``guard_every`` > 1 (one process) the totals wait on the
    device until :func:`judgement_due`, then are judged in step order.

    Under data parallelism the judgement is collective, so every rank rolls back (or stops) at the same step and
    the replicas stay identical: the loss judged is the global batch's (the mean over ranks, as one process would
    see it), and a step any rank judges bad is bad on all of them.
    """
    if trainer.world_size == 1:
        trainer.guard.unjudged.append(losses["total"])
        if not judgement_due(trainer):
            return None
        named = trained_parameters(trainer)
        totals = trainer.guard.take_unjudged()
        for i, total in enumerate(totals):  # in step order: the running median sees them as they came
            verdict = trainer.guard.check(total, named if i == len(totals) - 1 or not math.isfinite(total) else ())
            if verdict is not None:
                return roll_back(trainer, verdict)
        return None
    import torch.distributed as dist

    total = torch.as_tensor(losses["total"], dtype=torch.float32, device=trainer.device).reshape(1).clone()
    dist.all_reduce(total)
    verdict = trainer.guard.check(float(total) / trainer.world_size, trained_parameters(trainer))
    bad = torch.tensor([float(verdict is not None)], device=trainer.device)
    dist.all_reduce(bad)
    if bad.item() == 0:
        return None
    if verdict is None:  # another rank's replica went bad (it holds NaN/Inf this one does not)
        verdict = Verdict(f"{int(bad.item())} of {trainer.world_size} ranks judged the step bad")
    return roll_back(trainer, verdict)


def judgement_due(trainer: Any) -> bool:
    """Whether the step that just ran must be judged now: every ``guard_every`` steps, and at every step whose
    state or losses something keeps (the history, a snapshot, a checkpoint and the good state, the pass end).
    Between those the losses stay on the device, so the step makes no host sync for the guard."""
    cfg, n = trainer.cfg, trainer.it + 1   # the callbacks of this step see trainer.it == n
    periods = (cfg.guard_every, cfg.log_every, cfg.checkpoint_every, cfg.snapshot_every)
    return any(k and n % k == 0 for k in periods) or n >= getattr(cfg, trainer.pass_name).iterations


def remember_good(trainer: Any, first: bool = False) -> None:
    """Keep the state the guard rolls back to (taken with every checkpoint, and at the first step: ``first``,
    which keeps a state already taken)."""
    if first and trainer.last_good is not None:
        return
    trainer.last_good = copy.deepcopy(trainer.state_dict())


def roll_back(trainer: Any, verdict: Verdict) -> dict:
    """Restore the last good state with 10x lower learning rates (once); the step's losses to report.

    A second divergence, or one before any good state, raises :class:`DivergenceError` naming the fix.
    """
    where = f"{trainer.pass_name} iteration {trainer.it}"
    if trainer.rollbacks >= 1 or trainer.last_good is None:
        pc = getattr(trainer.cfg, trainer.pass_name)
        key = "lr_pos" if (verdict.parameter or "").startswith(("dmtet.", "fixed.")) else "lr_mat"
        lr, default = getattr(pc, key), getattr(getattr(ReconConfig(), trainer.pass_name), key)
        culprit = f"; parameter {verdict.parameter}" if verdict.parameter not in (None, *verdict.reason.split()) else ""
        raise DivergenceError(
            f"training diverged at {where} ({verdict.reason}{culprit}) even after a rollback with 10x lower "
            f"learning rates; lower {trainer.pass_name}.{key} (set to {lr:g}), e.g. --set "
            f"{trainer.pass_name}.{key}={min(default, lr / 10):g}, and train again with --overwrite")
    lr_scale, rollbacks = trainer.lr_scale * 0.1, trainer.rollbacks + 1
    trainer.load_state_dict(copy.deepcopy(trainer.last_good))
    trainer.lr_scale, trainer.rollbacks = lr_scale, rollbacks
    if trainer.run_dir is not None and (trainer.run_dir / "history.jsonl").exists():
        (trainer.run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trainer.history))
    trainer.guard.reset(h["total"] for h in trainer.history[-50:] if h.get("pass") == trainer.pass_name)
    log.warning("training diverged at %s (%s); rolled back to %s iteration %d and lowered the learning rates "
                "10x (x%g)", where, verdict.reason, trainer.pass_name, trainer.it, trainer.lr_scale)
    return {"total": torch.tensor(math.nan), "rolled_back": torch.tensor(1.0)}


def check_exportable(trainer: Any, mesh: Any, folder: Path) -> None:
    """Refuse to export a mesh or textures holding NaN/Inf (nothing NaN is ever exported)."""
    bad = first_nonfinite([("mesh vertices", mesh.v_pos), *trained_parameters(trainer)])
    if bad is not None:
        raise DivergenceError(f"not exporting to {folder}: {bad} holds NaN/Inf (the run diverged); lower the "
                              "pass-2 learning rates (--set pass2.lr_pos=..., pass2.lr_mat=...) and train again")


def load_latest_checkpoint(latest: Path, device: torch.device | str) -> tuple[Path, dict]:
    """The checkpoint ``latest.txt`` names; when it is empty or that file is unreadable, the newest readable one."""
    named = latest.read_text().strip()
    candidates = ([latest.parent / named] if named else []) + sorted(latest.parent.glob("pass*_*.pt"), reverse=True)
    for path in dict.fromkeys(candidates):
        try:
            state = torch.load(path, map_location=device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - a truncated or corrupt file: try the one before it
            log.warning("checkpoint %s is unreadable (%s: %s); trying an older one", path, type(err).__name__, err)
            continue
        return path, state
    raise CheckpointError(f"{latest.parent}: no readable checkpoint to resume from; start the run again with "
                          "--overwrite (or restore a checkpoint file there)")

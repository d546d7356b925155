"""What runs after a training step: a list of small :class:`Callback` objects registered on the trainer.

A callback is a function of ``(trainer, result)`` with a ``when(trainer)`` predicate (nerfstudio's
``TrainingCallback`` is the model). :func:`default_callbacks` are the trainer's own, in their order: the history
record, the guard's good state, the snapshot and the checkpoint. ``Trainer.add_callback`` appends more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from recon_kit.train import guard as rk_guard
from recon_kit.train.parallel import _mean_over_ranks

__all__ = ["Callback", "default_callbacks", "every", "at_checkpoint"]


@dataclass
class Callback:
    """``func(trainer, result)`` after each step for which ``when(trainer)`` is true (``trainer.it`` already
    counts the step). ``needs_run_dir``: skipped when the trainer writes nothing (no run folder, rank > 0)."""

    name: str
    func: Callable[[Any, Any], None]
    when: Callable[[Any], bool] = lambda trainer: True
    needs_run_dir: bool = False

    def __call__(self, trainer, result) -> None:
        if self.needs_run_dir and trainer.run_dir is None:
            return
        if self.when(trainer):
            self.func(trainer, result)


def every(field: str) -> Callable[[Any], bool]:
    """Predicate: the iteration is a multiple of ``cfg.<field>`` (0 turns it off)."""
    def when(trainer) -> bool:
        n = getattr(trainer.cfg, field)
        return bool(n) and trainer.it % n == 0
    return when


def at_checkpoint(trainer) -> bool:
    """A checkpoint is due: every ``cfg.checkpoint_every`` iterations and at the end of each pass."""
    return every("checkpoint_every")(trainer) or trainer.pass_end()


def record_history(trainer, result) -> None:
    """Append the step's losses (averaged over ranks), learning rates and time to the history (and its file)."""
    rec = {"pass": result.pass_name, "it": result.iteration, "global_it": trainer.global_iteration(),
           "time": round(trainer.timings[result.pass_name], 3),
           "lr_pos": trainer.opt_geo.param_groups[0]["lr"], "lr_mat": trainer.opt_mat.param_groups[0]["lr"]}
    rec.update(_mean_over_ranks(result.losses, trainer.world_size, trainer.device))
    trainer.history.append(rec)
    if trainer.run_dir is not None:
        with open(trainer.run_dir / "history.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def default_callbacks() -> list[Callback]:
    """History, the divergence guard's good state, snapshots and checkpoints (in this order)."""
    return [
        Callback("history", record_history, lambda tr: every("log_every")(tr) or tr.pass_end()),
        Callback("good_state", lambda tr, r: rk_guard.remember_good(tr), at_checkpoint),
        Callback("snapshot", lambda tr, r: tr.save_snapshot(), every("snapshot_every"), needs_run_dir=True),
        Callback("checkpoint", lambda tr, r: tr.save_checkpoint(), at_checkpoint, needs_run_dir=True),
    ]

"""Data-parallel training over ``torch.distributed``: one reconstruction, N processes (one per GPU).

Run it with torchrun (``docs/distributed.md``)::

    torchrun --standalone --nproc_per_node=2 -m recon_kit.cli train gpu-default \\
        --dataset-dir DATA --run-dir outputs/shoe_dp2 [--set key=value ...] [--resume]

(the CLI's ``train`` sees torchrun's environment and runs :func:`train_distributed`)

or from a notebook / the CLI (``recon-kit train ... --nproc 2``) with :func:`launch`, which starts that command as a
subprocess and streams its output.

What is replicated and what is reduced (the :class:`recon_kit.train.trainer.Trainer` does the per-step part):

* every rank holds the whole model, the optimisers and the dataset, and draws the same global batch from the
  seeded generator; rank ``r`` renders views ``[r*b/N, (r+1)*b/N)`` of it; the gradients are averaged with one
  flat all-reduce, so every rank takes the same optimiser step and the replicas stay identical;
* this module makes them identical to start with (rank 0's initial model is broadcast; on resume every rank loads
  the checkpoint file rank 0 chose), and at the pass switch rank 0 alone extracts, unwraps and bakes the mesh and
  broadcasts the pass-2 state (xatlas / baking are not guaranteed to be bitwise reproducible across processes, and
  a topology mismatch would break the flat all-reduce);
* only rank 0 owns the run folder: logs, history, snapshots, checkpoints, exports, metrics and
  ``distributed.json`` (timings and peak memory of every rank).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# The lent multi-GPU machines must not use NVLink multicast (NVLS); NCCL reads this when a communicator is made.
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")


import torch  # noqa: E402  (after the NCCL environment default)
import torch.distributed as dist  # noqa: E402

from recon_kit.config import resolve
from recon_kit.data.dataset import load_viewset
from recon_kit.runs.run import finish
from recon_kit.train.guard import remember_good
from recon_kit.train.parallel import (
    DistContext,
    _gather,
    _raise_if_any_failed,
    _reseed,
    assert_in_sync,
    barrier,
    broadcast_model,
    cleanup,
    init_from_env,
    sync_state_from_rank0,
)

log = logging.getLogger(__name__)


__all__ = ["build_trainer", "train_loop", "run_summary", "train_distributed", "torchrun_command", "launch"]


# ---- trainer ---------------------------------------------------------------------------------------------------
def _latest_checkpoint(run_dir: Path) -> Path | None:
    latest = run_dir / "checkpoints" / "latest.txt"
    return latest.parent / latest.read_text().strip() if latest.exists() else None


def build_trainer(ctx: DistContext, cfg, views, run_dir: str | Path | None, resume: bool = False,
                  overwrite: bool = False):
    """The :class:`recon_kit.train.trainer.Trainer` of this rank, identical on every rank (collective).

    Rank 0: ``new_trainer(cfg, views, run_dir, resume, overwrite)`` (creates / checks the run folder, resumes from
    its latest checkpoint, writes config.json). Other ranks: ``Trainer(cfg, views, None)``. Fresh run: rank 0's
    initial model is broadcast. Resume: rank 0 broadcasts the path of the checkpoint it loaded and every rank loads
    that same file (the run folder is on a filesystem every rank sees; if a rank cannot read it, rank 0's state is
    broadcast instead). Either way the replicas are then checked to be identical.
    """
    from recon_kit.runs.run import new_trainer
    from recon_kit.train.trainer import Trainer

    for name in ("pass1", "pass2"):
        batch = getattr(cfg, name).batch
        if batch % ctx.world_size:
            raise ValueError(f"{name}.batch={batch} must be a multiple of the number of processes ({ctx.world_size})")
    trainer, error, ckpt = None, None, None
    try:
        if ctx.is_main:
            trainer = new_trainer(cfg, views, run_dir, resume=resume, overwrite=overwrite)
            if resume and run_dir is not None:
                ckpt = _latest_checkpoint(Path(run_dir))
        else:
            trainer = Trainer(cfg, views, None)
    except Exception as err:  # noqa: BLE001 - reported to every rank below
        error = err
    _raise_if_any_failed(ctx, error)
    if not ctx.distributed:
        return trainer

    box = [str(ckpt) if ckpt is not None else None]
    dist.broadcast_object_list(box, src=0)
    path = box[0]
    if path is None:
        broadcast_model(ctx, trainer)
    else:
        ok = True
        if not ctx.is_main:
            try:
                trainer.load_state_dict(torch.load(path, map_location=trainer.device, weights_only=False))
            except (OSError, RuntimeError) as err:
                log.warning("rank %d cannot read %s (%s); taking rank 0's state instead", ctx.rank, path, err)
                ok = False
        if not all(_gather(ctx, ok)):
            sync_state_from_rank0(ctx, trainer)
        log.info("rank %d resumed from %s (%s iteration %d)", ctx.rank, Path(path).name, trainer.pass_name, trainer.it)
    assert_in_sync(ctx, trainer, "after construction")
    return trainer


def _switch_to_pass2(ctx: DistContext, trainer) -> None:
    """The pass switch under data parallelism: rank 0 extracts / unwraps / bakes, then broadcasts the state."""
    t0 = time.perf_counter()
    error = None
    if ctx.is_main:
        try:
            trainer.switch_to_pass2()
        except Exception as err:  # noqa: BLE001 - reported to every rank below
            error = err
    _raise_if_any_failed(ctx, error)
    sync_state_from_rank0(ctx, trainer)
    if not ctx.is_main:
        trainer.timings["bake"] += time.perf_counter() - t0  # the wait for rank 0's bake
        trainer.guard.reset()  # as rank 0 did after its bake: a rollback in pass 2 returns to the same state
        remember_good(trainer)
    assert_in_sync(ctx, trainer, "after the pass switch")


def train_loop(ctx: DistContext, trainer, iterations: int | None = None, progress: bool = True,
               callback: Callable | None = None):
    """Run ``iterations`` steps (default: to the end) on every rank (collective; call it on every rank with the
    same arguments). Use this instead of ``Trainer.run`` under torch.distributed: it does the pass switch on rank 0
    and broadcasts it, and reseeds ranks > 0 per step (:func:`rank_seed`)."""

    def before_step(tr) -> None:
        if ctx.distributed and tr.switch_due:
            _switch_to_pass2(ctx, tr)  # single process: Trainer.step() switches by itself
        _reseed(ctx, tr)

    trainer.run(iterations, progress=progress and ctx.is_main, callback=callback, before_step=before_step)
    return trainer


def _peak_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device": str(device), "peak_allocated_gib": None, "peak_reserved_gib": None}
    gib = 1024 ** 3
    return {"device": f"{device} ({torch.cuda.get_device_name(device)})",
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / gib, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / gib, 3)}


def run_summary(ctx: DistContext, trainer, wall: Mapping[str, float]) -> dict:
    """Collective: what ``distributed.json`` holds (timings per pass and per iteration, peak memory per rank)."""
    per_rank = _gather(ctx, {"rank": ctx.rank, "timings_s": {k: round(v, 3) for k, v in trainer.timings.items()},
                             **_peak_memory(trainer.device)})
    cfg = trainer.cfg
    its = {"pass1": cfg.pass1.iterations, "pass2": cfg.pass2.iterations}
    t = trainer.timings
    return {
        "world_size": ctx.world_size, "backend": ctx.backend, "device": str(trainer.device),
        "renderer": trainer.rast.name, "resolution": cfg.data.resolution,
        "batch": {"pass1": cfg.pass1.batch, "pass2": cfg.pass2.batch},
        "views_per_rank": {"pass1": cfg.pass1.batch // ctx.world_size, "pass2": cfg.pass2.batch // ctx.world_size},
        "iterations": its,
        "pass_s": {k: round(v, 3) for k, v in t.items()},
        "ms_per_it": {k: round(1000 * t[k] / its[k], 2) if its[k] else None for k in its},
        "wall_s": {k: round(v, 3) for k, v in wall.items()},
        "peak_gpu_gib": [r["peak_allocated_gib"] for r in per_rank],
        "per_rank": per_rank,
        "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
        "torch": torch.__version__,
    }


# ---- one process of a torchrun launch (``recon-kit train`` under torchrun) --------------------------------------
def train_distributed(dataset_dir: str | Path, preset: str | Path | None, run_dir: str | Path,
                      overrides: Mapping[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
                      progress: bool = True) -> int:
    """This process's share of a data-parallel training (what ``recon-kit train`` runs under torchrun): the same
    parameters as :func:`recon_kit.runs.run.train_from_config`; rank 0 writes the run folder."""
    t_start = time.perf_counter()
    preset = preset or ("gpu-default" if torch.cuda.is_available() else "cpu-small")
    cfg = resolve(preset, dict(overrides or {}))
    ctx = init_from_env(cfg.device)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"[rank {ctx.rank}] %(levelname)s %(name)s: %(message)s")
    try:
        log.info("data parallel: world_size=%d backend=%s device=%s batch=%d/%d", ctx.world_size, ctx.backend,
                 ctx.device, cfg.pass1.batch, cfg.pass2.batch)
        views = load_viewset(dataset_dir, resolution=cfg.data.resolution)
        trainer = build_trainer(ctx, cfg, views, Path(run_dir).resolve() if ctx.is_main else None,
                                resume=resume, overwrite=overwrite)
        barrier(ctx)
        t_train = time.perf_counter()
        train_loop(ctx, trainer, progress=progress)
        assert_in_sync(ctx, trainer, "at the end of training", strict=False)
        barrier(ctx)
        t_end = time.perf_counter()
        summary = run_summary(ctx, trainer, {"setup": t_train - t_start, "train": t_end - t_train})
        if ctx.is_main:
            from recon_kit.runs.folder import RunDir

            result = finish(trainer, dataset_dir)
            summary["wall_s"]["finish"] = round(time.perf_counter() - t_end, 3)
            RunDir(trainer.run_dir).write_json("distributed.json", summary)
            print(json.dumps({k: v for k, v in result.items() if not k.endswith("_views")}, indent=2, default=str))
            print(json.dumps({k: summary[k] for k in ("world_size", "pass_s", "ms_per_it", "peak_gpu_gib")}))
            print(f"run folder: {trainer.run_dir}")
        barrier(ctx)
    finally:
        cleanup()
    return 0


# ---- launching from a notebook or the CLI ------------------------------------------------------------------------
def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def torchrun_command(nproc: int, dataset: str | Path, preset: str | Path | None, run_dir: str | Path,
                     overrides: Mapping[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
                     progress: bool = True) -> list[str]:
    """The ``python -m torch.distributed.run --standalone --nproc_per_node=N -m recon_kit.cli train ...`` argv (the
    CLI's ``train`` in each process; without ``preset``: gpu-default on CUDA, cpu-small on the CPU, per process)."""
    if int(nproc) < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "recon_kit.cli", "train", str(preset) if preset is not None else "auto",
           "--dataset-dir", str(dataset), "--run-dir", str(run_dir)]
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={_value_text(value)}"]
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    if not progress:
        cmd.append("--no-progress")
    return cmd


def launch(nproc: int, dataset: str | Path, preset: str | Path | None, run_dir: str | Path,
           overrides: Mapping[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
           progress: bool = True, echo: Callable[[str], None] | None = print, check: bool = True,
           env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run data-parallel training with ``nproc`` processes through torchrun in a subprocess, streaming its output
    line by line to ``echo`` (``print``; ``None`` = quiet). Returns the CompletedProcess (``stdout`` = all output);
    raises RuntimeError with the last lines when it fails and ``check``. Interrupting it stops the workers."""
    cmd = torchrun_command(nproc, dataset, preset, run_dir, overrides, resume, overwrite, progress)
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("NCCL_NVLS_ENABLE", "0")
    full_env["PYTHONUNBUFFERED"] = "1"
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=full_env, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo is not None:
                echo(line.rstrip("\n"))
        rc = proc.wait()
    except BaseException:
        proc.terminate()  # torchrun forwards SIGTERM to its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    result = subprocess.CompletedProcess(cmd, rc, stdout="".join(lines))
    if check and rc != 0:
        tail = "".join(lines[-30:])
        raise RuntimeError(f"distributed training failed (exit status {rc}): {' '.join(cmd)}\n{tail}")
    return result


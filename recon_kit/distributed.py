"""Data-parallel training over ``torch.distributed``: one reconstruction, N processes (one per GPU).

Run it with torchrun (``docs/distributed.md``)::

    torchrun --standalone --nproc_per_node=2 -m recon_kit.distributed \\
        --dataset DATA --preset gpu-default --run-dir outputs/shoe_dp2 [--set key=value ...] [--resume]

or from a notebook / the CLI (``recon-kit train ... --nproc 2``) with :func:`launch`, which starts that command as a
subprocess and streams its output.

What is replicated and what is reduced (the :class:`recon_kit.train.Trainer` does the per-step part):

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

import argparse
import datetime as _dt
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The lent multi-GPU machines must not use NVLink multicast (NVLS); NCCL reads this when a communicator is made.
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import torch  # noqa: E402  (after the NCCL environment default)
import torch.distributed as dist  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MIN = 30.0  # collective timeout; rank 0 alone bakes / exports while the others wait
TIMEOUT_ENV = "RECON_KIT_DIST_TIMEOUT_MIN"

__all__ = ["DistContext", "init_from_env", "cleanup", "build_trainer", "train_loop", "broadcast_model",
           "sync_state_from_rank0", "fingerprint", "assert_in_sync", "rank_seed", "torchrun_command", "launch",
           "main"]


# ---- process group -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``world_size == 1`` means no process group (a plain single-process run)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_from_env(device: str = "auto", backend: str | None = None, timeout_min: float | None = None) -> DistContext:
    """Initialise the default process group from torchrun's environment and return this process's context.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and (through ``env://``) ``MASTER_ADDR`` / ``MASTER_PORT``. On
    CUDA (``device`` auto or cuda): NCCL, ``torch.cuda.set_device(LOCAL_RANK)`` and device ``cuda:LOCAL_RANK``; on
    CPU (no CUDA, or ``device="cpu"``): gloo. Without torchrun's variables it returns a single-process context and
    initialises nothing. An already initialised group is reused. ``NCCL_NVLS_ENABLE`` defaults to 0.
    """
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but CUDA is not available; use device='cpu' or 'auto'")
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK", rank if rank is not None else 0)
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        backend = dist.get_backend()
        use_cuda = backend == "nccl"
    elif world is None or rank is None:
        dev = torch.device(device if device.startswith("cuda:") else ("cuda" if use_cuda else "cpu"))
        return DistContext(0, 1, 0, dev, None)
    if world > 1 and device.startswith("cuda:"):
        raise ValueError(f"device={device!r}: under torchrun each process uses cuda:LOCAL_RANK; set device to "
                         "'auto' or 'cuda'")
    if use_cuda:
        n = torch.cuda.device_count()
        if local >= n:
            raise RuntimeError(f"LOCAL_RANK={local} but this machine has {n} CUDA device(s); "
                               f"use --nproc_per_node={n} or fewer")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, timeout_min or DEFAULT_TIMEOUT_MIN))
        kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "world_size": world, "rank": rank,
                                  "timeout": _dt.timedelta(minutes=minutes)}
        if backend == "nccl":
            kwargs["device_id"] = dev  # binds the communicator to this GPU (and silences barrier's guess)
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # an older torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
    return DistContext(rank, world, local, dev, backend)


def cleanup() -> None:
    """Destroy the default process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


def _gather(ctx: DistContext, obj: Any) -> list:
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _raise_if_any_failed(ctx: DistContext, error: BaseException | None) -> None:
    """Collective: if any rank failed, every rank raises (the first failure's message), so none waits forever."""
    msgs = _gather(ctx, None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if not failed:
        return
    if error is not None:
        raise error
    rank, msg = failed[0]
    raise RuntimeError(f"rank {rank} failed: {msg}")


# ---- replica state ---------------------------------------------------------------------------------------------
def _modules(trainer) -> list[torch.nn.Module]:
    if trainer.pass_idx == 0:
        return [trainer.dmtet, trainer.field, trainer.light]
    return [trainer.fixed, trainer.textures, trainer.light]


def _tensors(trainer) -> list[torch.Tensor]:
    return [t for m in _modules(trainer) for t in m.state_dict().values() if isinstance(t, torch.Tensor)]


@torch.no_grad()
def broadcast_model(ctx: DistContext, trainer, src: int = 0) -> None:
    """Overwrite every rank's parameters and buffers of the current pass (and the light) with rank ``src``'s, in
    place (one broadcast per tensor; shapes must already agree, as after construction from the same config)."""
    if not ctx.distributed:
        return
    for t in _tensors(trainer):
        if t.is_contiguous():
            dist.broadcast(t, src)
        else:
            tmp = t.contiguous()
            dist.broadcast(tmp, src)
            t.copy_(tmp)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def sync_state_from_rank0(ctx: DistContext, trainer) -> None:
    """Give every rank rank 0's whole training state (``Trainer.state_dict``: pass, iteration, model, optimisers,
    generators), pickled through ``broadcast_object_list``. Ranks keep their own ``history`` and ``timings``."""
    if not ctx.distributed:
        return
    box = [_to_cpu(trainer.state_dict()) if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    if not ctx.is_main:
        history, timings = trainer.history, dict(trainer.timings)
        trainer.load_state_dict(box[0])
        trainer.history, trainer.timings = history, timings


@torch.no_grad()
def fingerprint(trainer) -> list[float]:
    """A cheap summary of the replica (float64 sum and absolute sum of every tensor of the current pass)."""
    ts = _tensors(trainer)
    s = sum(float(t.double().sum()) for t in ts)
    a = sum(float(t.double().abs().sum()) for t in ts)
    return [float(trainer.pass_idx), float(trainer.it), float(sum(t.numel() for t in ts)), s, a]


def assert_in_sync(ctx: DistContext, trainer, where: str = "", strict: bool = True) -> bool:
    """Collective: check that every rank's replica has the same fingerprint; raise (or warn when not ``strict``)."""
    if not ctx.distributed:
        return True
    prints = _gather(ctx, fingerprint(trainer))
    if all(p == prints[0] for p in prints):
        return True
    msg = f"replicas differ {where}: " + "; ".join(f"rank {r}: {p}" for r, p in enumerate(prints))
    if strict:
        raise RuntimeError(msg)
    log.warning(msg)
    return False


def rank_seed(seed: int, rank: int, step: int) -> int:
    """Seed of rank ``rank``'s torch RNG at global step ``step`` (ranks > 0 only; rank 0 keeps the trainer's own
    checkpointed stream). A function of (seed, rank, step), so a resumed run draws exactly what an uninterrupted one
    draws, and the ranks' kd-smoothness jitter is decorrelated."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def _reseed(ctx: DistContext, trainer) -> None:
    if ctx.rank == 0:
        return
    s = rank_seed(trainer.cfg.seed, ctx.rank, trainer.global_iteration())
    torch.default_generator.manual_seed(s)
    if trainer.device.type == "cuda":
        torch.cuda.manual_seed(s)


# ---- trainer ---------------------------------------------------------------------------------------------------
def _latest_checkpoint(run_dir: Path) -> Path | None:
    latest = run_dir / "checkpoints" / "latest.txt"
    return latest.parent / latest.read_text().strip() if latest.exists() else None


def build_trainer(ctx: DistContext, cfg, views, run_dir: str | Path | None, resume: bool = False,
                  overwrite: bool = False):
    """The :class:`recon_kit.train.Trainer` of this rank, identical on every rank (collective).

    Rank 0: ``new_trainer(cfg, views, run_dir, resume, overwrite)`` (creates / checks the run folder, resumes from
    its latest checkpoint, writes config.json). Other ranks: ``Trainer(cfg, views, None)``. Fresh run: rank 0's
    initial model is broadcast. Resume: rank 0 broadcasts the path of the checkpoint it loaded and every rank loads
    that same file (the run folder is on a filesystem every rank sees; if a rank cannot read it, rank 0's state is
    broadcast instead). Either way the replicas are then checked to be identical.
    """
    from .train import Trainer, new_trainer

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
            with trainer._lock:
                trainer._switch_to_pass2()
        except Exception as err:  # noqa: BLE001 - reported to every rank below
            error = err
    _raise_if_any_failed(ctx, error)
    sync_state_from_rank0(ctx, trainer)
    if not ctx.is_main:
        trainer.timings["bake"] += time.perf_counter() - t0  # the wait for rank 0's bake
    assert_in_sync(ctx, trainer, "after the pass switch")


def train_loop(ctx: DistContext, trainer, iterations: int | None = None, progress: bool = True,
               callback: Callable | None = None):
    """Run ``iterations`` steps (default: to the end) on every rank (collective; call it on every rank with the
    same arguments). Use this instead of ``Trainer.run`` under torch.distributed: it does the pass switch on rank 0
    and broadcasts it, and reseeds ranks > 0 per step (:func:`rank_seed`)."""

    def before_step(tr) -> None:
        if ctx.distributed and tr.pass_idx == 0 and tr.it >= tr.cfg.pass1.iterations:
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


# ---- torchrun entry point ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m recon_kit.distributed",
        description="Data-parallel training of one reconstruction (one process per GPU; gloo on CPU).")
    p.add_argument("--dataset", required=True, help="prepared dataset folder (with transforms.json)")
    p.add_argument("--preset", default=None,
                   help="preset name or config JSON (default: gpu-default on CUDA, cpu-small on CPU)")
    p.add_argument("--run-dir", required=True, help="run folder (written by rank 0 only)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --run-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from .cli import _overrides
    from .config import resolve
    from .data import load_viewset
    from .train import finish

    a = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    preset = a.preset or ("gpu-default" if torch.cuda.is_available() else "cpu-small")
    cfg = resolve(preset, _overrides(a.set))
    ctx = init_from_env(cfg.device)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"[rank {ctx.rank}] %(levelname)s %(name)s: %(message)s")
    try:
        log.info("data parallel: world_size=%d backend=%s device=%s batch=%d/%d", ctx.world_size, ctx.backend,
                 ctx.device, cfg.pass1.batch, cfg.pass2.batch)
        views = load_viewset(a.dataset, resolution=cfg.data.resolution)
        trainer = build_trainer(ctx, cfg, views, Path(a.run_dir).resolve() if ctx.is_main else None,
                                resume=a.resume, overwrite=a.overwrite)
        barrier(ctx)
        t_train = time.perf_counter()
        train_loop(ctx, trainer, progress=not a.no_progress)
        assert_in_sync(ctx, trainer, "at the end of training", strict=False)
        barrier(ctx)
        t_end = time.perf_counter()
        summary = run_summary(ctx, trainer, {"setup": t_train - t_start, "train": t_end - t_train})
        if ctx.is_main:
            from .rundir import RunDir

            result = finish(trainer, a.dataset)
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
    """The ``python -m torch.distributed.run --standalone --nproc_per_node=N -m recon_kit.distributed ...`` argv."""
    if int(nproc) < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "recon_kit.distributed", "--dataset", str(dataset), "--run-dir", str(run_dir)]
    if preset is not None:
        cmd += ["--preset", str(preset)]
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


if __name__ == "__main__":
    sys.exit(main())

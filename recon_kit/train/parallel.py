"""Data-parallel strategy for torchrun: process group, gradient all-reduce, rank-0 broadcasts, sync checks."""

from __future__ import annotations


from dataclasses import dataclass

import numpy as np
import torch


import datetime as _dt
import os
from typing import Any
import logging
import torch.distributed as dist

log = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    """(world size, rank) of an initialised torch.distributed process group, else (1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _average_gradients(param_groups: list[dict], world_size: int) -> None:
    """All-reduce (mean) the gradients of every parameter, in one flat bucket per dtype/device."""
    import torch.distributed as dist

    grads = [p.grad for g in param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _mean_over_ranks(losses: dict, world_size: int, device: torch.device) -> dict:
    """Losses averaged over ranks (each rank holds the losses of its share of the batch), as floats (one read)."""
    keys = list(losses)
    flat = torch.stack([torch.as_tensor(losses[k], dtype=torch.float32, device=device).reshape(()) for k in keys])
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(flat)
    return dict(zip(keys, (flat / world_size).tolist()))


DEFAULT_TIMEOUT_MIN = 30.0  # collective timeout; rank 0 alone bakes / exports while the others wait


TIMEOUT_ENV = "RECON_KIT_DIST_TIMEOUT_MIN"


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
    return [*trainer.phase.modules().values(), trainer.light]


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

    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def _reseed(ctx: DistContext, trainer) -> None:
    if ctx.rank == 0:
        return
    s = rank_seed(trainer.cfg.seed, ctx.rank, trainer.global_iteration())
    torch.default_generator.manual_seed(s)
    if trainer.device.type == "cuda":
        torch.cuda.manual_seed(s)

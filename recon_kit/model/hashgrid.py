"""Multi-resolution hash-grid encoding (pure PyTorch, compiled gather/scatter) and the tinycudann probe."""

from __future__ import annotations


import functools
import logging
import importlib.util
import math
import subprocess
import sys
from collections.abc import Callable

import torch
from torch import nn

from recon_kit.render.compile_cache import use_compile_cache

log = logging.getLogger(__name__)


# Spatial-hash primes of Instant-NGP (the first is 1 so that neighbouring x stay in one cache line).
_PRIMES = (1, 2654435761, 805459861)


def _corner_lookup(x: torch.Tensor, res: torch.Tensor, factor: torch.Tensor, mask: torch.Tensor,
                   offset: torch.Tensor, n_dense: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat table rows [L,N,8] (int32) and trilinear weights [L,N,8] of the 8 cell corners on every level.

    ``x`` [N,3] must lie in [0,1]. Level-major layout: each level's lookups are contiguous, which keeps that
    level's table hot in cache. Per-axis terms ``t(c) = (c * factor) & mask`` are formed for the lower corner
    and ``t(c+1) = (t(c) + factor) & mask`` for the upper one, then combined over the 2x2x2 corners by a sum
    (dense levels: factor = strides, mask = -1) or an xor (hashed levels: factor = primes reduced mod the table
    size, so products stay below 2**31 in the dtype of ``factor``). The level's row offset goes into the z term;
    it only touches bits above the table mask, so it survives the xor.
    """
    n_levels, n = res.shape[0], x.shape[0]
    pos = x.unsqueeze(0) * res.view(-1, 1, 1)                                 # [L,N,3]
    cell = torch.minimum(pos.floor(), (res - 1.0).view(-1, 1, 1))
    frac = pos - cell
    fac, msk = factor.view(-1, 1, 3), mask.view(-1, 1, 1)
    t0 = (cell.to(factor.dtype) * fac) & msk
    t1 = (t0 + fac) & msk
    term = torch.stack([t0, t1], -1).int()                                    # [L,N,3,2]
    term[:, :, 2] += offset.view(-1, 1, 1)
    tx, ty, tz = term[:, :, 0], term[:, :, 1], term[:, :, 2]
    idx = torch.empty(n_levels, n, 2, 2, 2, dtype=torch.int32, device=x.device)
    d, h = slice(0, n_dense), slice(n_dense, n_levels)
    if n_dense > 0:
        torch.add(tx[d, :, :, None, None] + ty[d, :, None, :, None], tz[d, :, None, None, :], out=idx[d])
    if n_dense < n_levels:
        torch.bitwise_xor(tx[h, :, :, None, None] ^ ty[h, :, None, :, None], tz[h, :, None, None, :],
                          out=idx[h])
    wx = torch.stack([1.0 - frac, frac], -1)                                  # [L,N,3,2]
    w = wx[:, :, 0, :, None, None] * wx[:, :, 1, None, :, None] * wx[:, :, 2, None, None, :]
    return idx.view(n_levels, n, 8), w.view(n_levels, n, 8)


def _gather(x: torch.Tensor, table: torch.Tensor, res: torch.Tensor, factor: torch.Tensor, mask: torch.Tensor,
            offset: torch.Tensor, n_dense: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoded features [L,N,F] plus the rows and weights the backward needs (one flat ``index_select``).

    Kept level-major: fusing the [N, L*F] transpose in here made the compiled gather ~7x slower on an H100.
    """
    n_levels, _, n_feat = table.shape
    idx, w = _corner_lookup(x, res, factor, mask, offset, n_dense)
    rows = table.view(-1, n_feat).index_select(0, idx.view(-1)).view(n_levels, -1, 8, n_feat)
    return (rows * w.unsqueeze(-1)).sum(2), idx, w


def _scatter(idx: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Table gradient [n_rows, F] from feature gradients [L,N,F]: one ``index_add_`` of weight x grad."""
    n_feat = grad.shape[-1]
    src = (w.unsqueeze(-1) * grad.unsqueeze(2)).view(-1, n_feat)               # [L*N*8, F]
    if idx.device.type == "cpu":
        idx = idx.long()  # CPU index_add_ is several times faster with int64 indices
    return torch.zeros(n_rows, n_feat, dtype=src.dtype, device=src.device).index_add_(0, idx.view(-1), src)


class _HashGridFunction(torch.autograd.Function):
    """Trilinear hash-grid lookup with an ``index_add_`` backward; no gradient w.r.t. the positions.

    The backward needs each point's 8 corner rows and weights per level (64 bytes a point and level, ~1 KB a
    point at 16 levels). Up to ``chunk`` points they are kept from the forward; above it (``chunk`` > 0) only the
    positions are kept and both passes run ``chunk`` points at a time, the backward looking the corners up again:
    memory O(chunk) instead of O(points), one more lookup in the backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, res: torch.Tensor, factor: torch.Tensor,
                mask: torch.Tensor, offset: torch.Tensor, n_dense: int, grad_scale: float,
                gather: Callable, scatter: Callable, chunk: int = 0) -> torch.Tensor:
        n_levels, _, n_feat = table.shape
        lookup = (table, res, factor, mask, offset, n_dense)
        ctx.table_shape, ctx.grad_scale, ctx.gather, ctx.scatter = table.shape, grad_scale, gather, scatter
        ctx.chunk = chunk if 0 < chunk < x.shape[0] else 0
        if ctx.chunk:
            out = torch.cat([gather(x[s:s + chunk], *lookup)[0] for s in range(0, x.shape[0], chunk)], 1)
            ctx.save_for_backward(x, table, res, factor, mask, offset)   # references: no copies
            ctx.n_dense = n_dense
        else:
            out, idx, w = gather(x, *lookup)
            ctx.save_for_backward(idx, w)
        return out.permute(1, 0, 2).reshape(x.shape[0], n_levels * n_feat)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_table = None
        if ctx.needs_input_grad[1]:
            n_levels, size, n_feat = ctx.table_shape
            g = grad_out.reshape(-1, n_levels, n_feat).permute(1, 0, 2)        # [L,N,F]
            if ctx.grad_scale != 1.0:
                g = g * ctx.grad_scale
            if ctx.chunk:
                x, table, res, factor, mask, offset = ctx.saved_tensors
                grad_table = None
                for s in range(0, x.shape[0], ctx.chunk):
                    _, idx, w = ctx.gather(x[s:s + ctx.chunk], table, res, factor, mask, offset, ctx.n_dense)
                    part = ctx.scatter(idx, w, g[:, s:s + ctx.chunk], n_levels * size)
                    grad_table = part if grad_table is None else grad_table.add_(part)
            else:
                idx, w = ctx.saved_tensors
                grad_table = ctx.scatter(idx, w, g, n_levels * size)
            grad_table = grad_table.view(n_levels, size, n_feat)
        return None, grad_table, None, None, None, None, None, None, None, None, None


class HashGridEncoder(nn.Module):
    """Instant-NGP multiresolution hash encoding of points in [0,1]^3 -> [N, n_levels * n_features].

    Level ``l`` has ``res_l = floor(base_res * b**l)`` cells per axis with ``b = (max_res/base_res)**(1/(L-1))``
    (nvdiffrec: 16 -> 4096, b ~ 1.447). Levels whose ``(res+1)^3`` grid vertices fit in the table are indexed
    densely, finer ones through the spatial hash. All levels share one parameter ``table`` [L, T, F]
    (T = 2**log2_table), initialised U(-1e-4, 1e-4) like tiny-cuda-nn; fp32 throughout.

    Gradients flow to ``table`` only, not to the input positions (the material field never needs them).
    ``grad_scale`` multiplies the table gradient (nvdiffrec divides hash-grid grads by 8; with Adam this mostly
    moves the balance against eps, so the default leaves it at 1 and relies on per-group learning rates).

    ``compile`` (default: on CUDA only) runs the gather and scatter through ``torch.compile(dynamic=True)``,
    which fuses the ~20 elementwise index/weight ops into a few kernels (H100, 1M points: 4.8 vs 12 ms fwd+bwd).
    The first call compiles (~15 s) and warms up on 2**18 points (a 64-point warm-up left the gather tuned
    for tiny inputs: 9x slower at 1M points); if compilation fails the encoder logs a warning and stays eager.
    Calls on more than ``point_chunk`` points (default 2**21, above a 1024², batch-2 step's ~0.8M covered pixels;
    0 = never) keep ~12 bytes a point for the backward instead of ~1 KB, looking the corners up again there
    (2048², batch 6 is ~10M points: ~10 GB less per field evaluation).
    """

    def __init__(self, n_levels: int = 16, n_features: int = 2, log2_table: int = 19, base_res: int = 16,
                 max_res: int = 4096, grad_scale: float = 1.0, compile: bool | None = None,
                 device: torch.device | str | None = None, point_chunk: int = 1 << 21):
        super().__init__()
        self.compile = compile
        self.point_chunk = int(point_chunk)
        self._compiled: tuple[Callable, Callable] | None = None
        if n_levels < 1 or n_levels * 2 ** log2_table >= 2 ** 31 or max_res < base_res:
            raise ValueError("need n_levels >= 1, max_res >= base_res and n_levels * 2**log2_table < 2**31")
        self.n_levels, self.n_features, self.log2_table = n_levels, n_features, log2_table
        self.table_size = 2 ** log2_table
        self.grad_scale = float(grad_scale)
        scale = math.exp(math.log(max_res / base_res) / max(n_levels - 1, 1))
        self.per_level_scale = scale
        resolutions = [max(1, int(math.floor(base_res * scale ** l + 1e-6))) for l in range(n_levels)]
        dense = [(r + 1) ** 3 <= self.table_size for r in resolutions]  # a prefix: resolutions increase
        self.resolutions: tuple[int, ...] = tuple(resolutions)
        self.n_dense = int(sum(dense))
        factor = [[1, r + 1, (r + 1) ** 2] if dn else [p % self.table_size for p in _PRIMES]
                  for r, dn in zip(resolutions, dense)]
        mask = [-1 if dn else self.table_size - 1 for dn in dense]
        small = (max(resolutions) - 1) * (self.table_size - 1) < 2 ** 31
        index_dtype = torch.int32 if small else torch.int64
        self.register_buffer("res", torch.tensor(resolutions, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("factor", torch.tensor(factor, dtype=index_dtype, device=device), persistent=False)
        self.register_buffer("mask", torch.tensor(mask, dtype=index_dtype, device=device), persistent=False)
        self.register_buffer("offset", torch.arange(n_levels, dtype=torch.int32, device=device) * self.table_size,
                             persistent=False)
        table = torch.empty(n_levels, self.table_size, n_features, device=device).uniform_(-1e-4, 1e-4)
        self.table = nn.Parameter(table)

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features

    def corner_lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat rows into ``table.view(-1, F)`` [L,N,8] int32 and trilinear weights [L,N,8] for x [N,3]."""
        with torch.no_grad():
            return _corner_lookup(x.float().clamp(0.0, 1.0), self.res, self.factor, self.mask, self.offset,
                                  self.n_dense)

    def _kernels(self, device: torch.device) -> tuple[Callable, Callable]:
        """(gather, scatter): compiled ones where enabled and working, else the eager functions."""
        if not (self.compile if self.compile is not None else device.type == "cuda"):
            return _gather, _scatter
        if self._compiled is None:
            self._compiled = (_gather, _scatter)
            try:
                use_compile_cache()
                gather, scatter = torch.compile(_gather, dynamic=True), torch.compile(_scatter, dynamic=True)
                with torch.no_grad():  # warm up at a realistic size: Triton tunes launch configs on first use
                    out, idx, w = gather(torch.rand(1 << 18, 3, device=device), self.table, self.res, self.factor,
                                         self.mask, self.offset, self.n_dense)
                    scatter(idx, w, torch.ones_like(out), self.table.shape[0] * self.table.shape[1])
                self._compiled = (gather, scatter)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: stay eager
                log.warning("torch.compile of the hash grid failed (%s: %s); using the eager version",
                            type(exc).__name__, exc)
        return self._compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.detach().reshape(-1, 3).float().clamp(0.0, 1.0)
        gather, scatter = self._kernels(flat.device)
        out = _HashGridFunction.apply(flat, self.table, self.res, self.factor, self.mask, self.offset,
                                      self.n_dense, self.grad_scale, gather, scatter, self.point_chunk)
        return out.view(*lead, self.n_output_dims)

    def extra_repr(self) -> str:
        return (f"levels={self.n_levels}, features={self.n_features}, table=2^{self.log2_table}, "
                f"res={self.resolutions[0]}..{self.resolutions[-1]}, dense_levels={self.n_dense}")


_TCNN_PROBE = """
import tinycudann as tcnn
import torch
enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2,
                        "log2_hashmap_size": 19, "base_resolution": 16, "per_level_scale": 1.447})
x = torch.rand(4096, 3, device="cuda")
enc(x).float().sum().backward()
torch.cuda.synchronize()
"""


@functools.lru_cache(maxsize=None)
def tcnn_available(timeout: float = 180.0) -> bool:
    """True when tiny-cuda-nn imports AND an encoding runs forward+backward on CUDA in a subprocess.

    The probe runs out of process because tinycudann was seen to segfault on its first forward on an H100;
    a crash there must not take the caller (a notebook kernel) down. Cached per process.
    """
    if not torch.cuda.is_available() or importlib.util.find_spec("tinycudann") is None:
        return False
    try:
        proc = subprocess.run([sys.executable, "-c", _TCNN_PROBE], capture_output=True, timeout=timeout, text=True)
    except (subprocess.TimeoutExpired, OSError) as exc:
        log.warning("tiny-cuda-nn probe did not finish (%s); using the PyTorch hash grid", exc)
        return False
    if proc.returncode != 0:
        log.warning("tiny-cuda-nn probe failed with exit code %d; using the PyTorch hash grid. %s",
                    proc.returncode, proc.stderr.strip().splitlines()[-1:] or "")
        return False
    return True


class TcnnHashGridEncoder(nn.Module):
    """tiny-cuda-nn HashGrid with the same interface as :class:`HashGridEncoder` (fp32 output)."""

    def __init__(self, n_levels: int = 16, n_features: int = 2, log2_table: int = 19, base_res: int = 16,
                 max_res: int = 4096):
        super().__init__()
        import tinycudann as tcnn

        self.per_level_scale = math.exp(math.log(max_res / base_res) / max(n_levels - 1, 1))
        self.n_output_dims = n_levels * n_features
        self.encoding = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": n_levels, "n_features_per_level": n_features,
                                          "log2_hashmap_size": log2_table, "base_resolution": base_res,
                                          "per_level_scale": self.per_level_scale})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.encoding(x.reshape(-1, 3).clamp(0.0, 1.0)).float().view(*lead, self.n_output_dims)


def _default_device(device: torch.device | str | None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_encoder(kind: str = "auto", device: torch.device | str | None = None, **kwargs) -> nn.Module:
    """Hash-grid encoder: ``"torch"`` (:class:`HashGridEncoder`), ``"tcnn"``, or ``"auto"`` (tcnn when the probe
    passes and the device is CUDA, else torch). Logs which one was chosen and why."""
    if kind not in ("auto", "torch", "tcnn"):
        raise ValueError(f"unknown encoder kind {kind!r}; choose 'auto', 'torch' or 'tcnn'")
    device = _default_device(device)
    if kind == "tcnn" or (kind == "auto" and device.type == "cuda"):
        if device.type == "cuda" and tcnn_available():
            log.info("hash-grid encoder: tiny-cuda-nn")
            return TcnnHashGridEncoder(**{k: v for k, v in kwargs.items() if k not in ("grad_scale", "compile")}
                                       ).to(device)
        if kind == "tcnn":
            raise RuntimeError("tiny-cuda-nn was requested but is not usable here (needs CUDA and a passing probe)")
    enc = HashGridEncoder(device=device, **kwargs)
    log.info("hash-grid encoder: PyTorch (%s)", enc.extra_repr())
    return enc

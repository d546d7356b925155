"""Pass 2's rendering, losses and their backward replayed from one CUDA graph (config ``cuda_graph``).

A pass-2 step launches over a thousand small kernels and the host cannot launch them as fast as the GPU runs
them, so the GPU waits (``docs/host_syncs.md``). A CUDA graph launches them all at once. nvdiffrast's
rasteriser reads its buffer sizes back to the host, which a graph cannot hold, so a step runs in three parts:

1. eager: the cameras, the vertex positions, the rasteriser (``rast``, ``rast_db``) and the light's
   pre-integrated maps (a few dozen launches);
2. the graph, on static copies of those tensors: G-buffer, textures, shading, the per-view losses and their
   backward, down to the gradients of the copies and of the textures;
3. eager: those gradients go back through the rasteriser, the cameras, the vertex offsets and the light
   (``torch.autograd.backward``), with the view-independent regularisers; then the optimiser step.

The covered pixels get a fixed capacity (:func:`~recon_kit.render.renderer.compact_indices`), 1.05 x the
count of the step that records the graph (the padding rows are shaded for nothing, so the margin is small: a
pass-2 mesh and its cameras barely move); a step that covers more records it again (``recordings``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.profiler import record_function

from recon_kit.losses import smoothness_ramp
from recon_kit.mesh import Mesh
from recon_kit.render.renderer import clip_positions
from recon_kit.render.shading import ShadingMaps

log = logging.getLogger(__name__)

__all__ = ["GraphedViews"]

_CAMERA_KEYS = ("mvp", "w2c", "campos")


class _FixedLight:
    """A light whose :meth:`maps` are given tensors (the graph's static copies of the learned light's maps)."""

    def __init__(self, maps: ShadingMaps) -> None:
        self._maps = maps

    def maps(self) -> ShadingMaps:
        return self._maps


class GraphedViews:
    """Pass 2's per-view losses and backward as a CUDA graph (``capture=False``: the same three-part step
    without the graph, which is what the CPU tests compare with the plain step)."""

    def __init__(self, trainer: Any, capture: bool = True, slack: float = 1.05) -> None:
        self.trainer, self.capture, self.slack = trainer, capture, slack
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capacity, self.recordings, self._key = 0, 0, None

    @classmethod
    def for_trainer(cls, trainer: Any) -> "GraphedViews | None":
        """The trainer's graphed step in pass 2 when ``cuda_graph`` allows it: ``auto`` where it can run (else
        the plain step, with a log line saying why), ``on`` or a one-line error naming what is missing."""
        cfg = trainer.cfg
        if cfg.cuda_graph == "off":
            return None
        needs = [(trainer.device.type == "cuda", f"a CUDA device (this run is on {trainer.device})"),
                 (trainer.rast.name == "nvdiffrast", f"the nvdiffrast rasteriser (backend is {trainer.rast.name})"),
                 (trainer.world_size == 1, f"one process (this run has {trainer.world_size})"),
                 (cfg.view_chunk == 0 or cfg.view_chunk >= cfg.pass2.batch,
                  f"a step's views rendered at once (view_chunk {cfg.view_chunk} < pass2.batch {cfg.pass2.batch})")]
        missing = "; ".join(why for ok, why in needs if not ok)
        if missing and cfg.cuda_graph == "on":
            raise ValueError(f"cuda_graph=on needs {missing}: set cuda_graph=auto (the graph where it can run) "
                             "or off")
        if missing:
            log.info("cuda_graph=auto: pass 2 runs without the CUDA graph, which needs %s", missing)
            return None
        return cls(trainer) if trainer.phase.final else None

    def step(self, mesh: Mesh, sel: torch.Tensor, bg: torch.Tensor, t: float) -> dict[str, torch.Tensor] | None:
        """One pass-2 step on views ``sel`` over backgrounds ``bg``: gradients and the optimiser step; returns the
        step's losses (device tensors, as the plain step's), or None when no view covers a pixel (the plain
        step then runs: a graph needs at least one covered pixel to repeat in its padding rows)."""
        tr = self.trainer
        tr._zero_grad()
        cams = tr._cameras(sel)
        with record_function("rk.rasterize"):
            tri = mesh.t_pos_idx.int()
            rast, rast_db = tr.rast.rasterize(clip_positions(mesh.v_pos, cams["mvp"]), tri, tuple(bg.shape[1:3]))
            covered = int((rast[..., 3] > 0).sum())   # nvdiffrast has just waited for the GPU: a short read
        if covered == 0:
            return None
        maps = tr.light.maps()
        eager = {"v_pos": mesh.v_pos, **{k: cams[k] for k in _CAMERA_KEYS}, "rast": rast, "rast_db": rast_db,
                 "spec_flat": maps.spec_flat, "diff_flat": maps.diff_flat}
        # the loss weights (live in the training panel) decide which terms the graph holds: a change records it
        key = (tuple(bg.shape), tuple(eager["v_pos"].shape), tuple(maps.spec_flat.shape), repr(tr.cfg.loss))
        if self._key != key or covered > self.capacity:
            self._record(mesh, maps, eager, sel, bg, t, covered, key)
        with torch.no_grad():
            for k, v in eager.items():
                self.static[k].copy_(v)
            self.static["sel"].copy_(sel)
            self.static["bg"].copy_(bg)
            self.static["ramp"].fill_(smoothness_ramp(tr.it))
        with record_function("rk.graph"):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.out = self._forward_backward()
        values, grads = self.out
        for p, g in zip(self.params, grads[len(self.wrt):]):
            if g is not None:
                p.grad = g    # the graph's output, read by this step's optimiser step before the next replay
        terms = tr._step_terms(t)
        roots = [(eager[k], g) for k, g in zip(self.wrt, grads) if g is not None]
        terms_total = sum(terms.values()) if terms else None
        if terms_total is not None and terms_total.requires_grad:
            roots.append((terms_total, None))
        with record_function("rk.backward"):
            if roots:
                torch.autograd.backward([r for r, _ in roots], [g for _, g in roots])
        with record_function("rk.optimizer_step"):
            tr._optimizer_step()
        values = values.clone()   # the next replay overwrites the graph's outputs
        logged = dict(zip(self.names, values[1:].unbind()))
        logged.update({k: v.detach() for k, v in terms.items()})
        logged["total"] = values[0] + (terms_total.detach() if terms_total is not None else 0.0)
        return logged

    def _record(self, mesh: Mesh, maps: ShadingMaps, eager: dict, sel: torch.Tensor, bg: torch.Tensor, t: float,
                covered: int, key: tuple) -> None:
        """Static copies of the step's inputs at a capacity for ``covered`` pixels, and (``capture``) the graph."""
        self.graph = self.out = None
        n_pixels = bg.shape[0] * bg.shape[1] * bg.shape[2]
        self.capacity = min(n_pixels, -(-int(covered * self.slack + 1) // 16384) * 16384)
        self._key, self.recordings, self.t = key, self.recordings + 1, t
        self.topology = (mesh.t_pos_idx, mesh.v_tex, mesh.t_tex_idx)
        self.maps_layout = (maps.sizes, maps.offsets, maps.num_levels, maps.diffuse_res)
        self.static = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in eager.items()}
        self.static.update(sel=sel.clone(), bg=bg.clone(), ramp=torch.zeros((), device=bg.device))
        self.wrt = [k for k, v in eager.items() if v.requires_grad]     # the copies whose gradients the graph returns
        self.params = [p for opt in self.trainer._optimizers() for g in opt.param_groups for p in g["params"]
                       if p.requires_grad]
        log.info("pass 2: %s the step's views with a capacity of %d covered pixels (%d now)",
                 "recording a CUDA graph of" if self.capture else "running", self.capacity, covered)
        if not self.capture:
            return
        try:
            self._capture()
        except (torch.cuda.OutOfMemoryError, getattr(torch, "AcceleratorError", torch.cuda.OutOfMemoryError)):
            raise                        # not the graph's fault: the same step would fail without it
        except RuntimeError as exc:      # e.g. an operation a graph cannot hold: same step, without the graph
            log.warning("pass 2: recording the CUDA graph failed (%s); training goes on without it "
                        "(set cuda_graph=off to skip the attempt)", str(exc).splitlines()[0] if str(exc) else exc)
            self.graph, self.out, self.capture = None, None, False

    def _capture(self) -> None:
        """Warm up on a side stream (compiles the shading, fills the caches), then record the graph. Only this
        thread's calls are checked during the capture: a live view may render from another thread."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.out = self._forward_backward()

    def _forward_backward(self) -> tuple[torch.Tensor, tuple]:
        """The graphed part: losses of the static inputs and their gradients (inputs first, then ``params``).

        Python numbers are fixed at recording: the pass fraction ``t`` (pass 2's depth decay does not depend
        on it) and the loss weights (the recording key holds them); the smoothness ramp is a static tensor. The
        kd smoothness term's random offsets come from the graph's own draws, so a run's numbers differ from the
        same run without the graph (as they do between any two runs of nvdiffrast's random backgrounds)."""
        tr, s = self.trainer, self.static
        layout = self.maps_layout
        light = _FixedLight(ShadingMaps(s["spec_flat"], s["diff_flat"], *layout))
        losses = tr._view_losses(Mesh(s["v_pos"], *self.topology), s["sel"], {k: s[k] for k in _CAMERA_KEYS},
                                 s["bg"], self.t, ramp=s["ramp"], light=light, raster=(s["rast"], s["rast_db"]),
                                 capacity=self.capacity)
        self.names = list(losses)
        total = sum(losses.values())
        grads = torch.autograd.grad(total, [s[k] for k in self.wrt] + self.params, allow_unused=True)
        return torch.stack([total.detach(), *(v.detach() for v in losses.values())]), grads

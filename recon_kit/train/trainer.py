"""The two-pass reconstruction as a step-wise, resumable :class:`Trainer`.

Pass 1 optimises a DMTet surface with a hash-grid material field and a learned environment light. At the
switch the surface is extracted, cleaned, UV-unwrapped with xatlas and the field is baked into kd / ks /
normal textures (with gutters). Pass 2 optimises the vertex positions of that fixed-topology mesh, the
textures and the light. The passes are :mod:`recon_kit.train.phases` behind one interface, so the trainer has
no per-pass branches; what follows a step (history, snapshots, checkpoints) is a list of
:mod:`recon_kit.train.callbacks`. ``Trainer.step()`` runs one iteration of whichever pass is current, so a
widget, a script or a test can run, pause and inspect it; ``run()`` loops with a progress bar; checkpoints make
a killed run resume to the same result.
"""

from __future__ import annotations


import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from recon_kit import evaluate as rk_evaluate
from recon_kit.io import meshfile
from recon_kit.model import dmtet as rk_dmtet
from recon_kit.model.flexicubes import FlexiCubes
from recon_kit.model.fusion import fuse_viewset, initial_occupancy
from recon_kit.model import materials
from recon_kit.model.camera_refine import CameraRefiner
from recon_kit.cameras import stack_matrices
from recon_kit.config import ReconConfig
from recon_kit.data.dataset import ViewSet
from recon_kit.color import linear_to_srgb
from recon_kit.render.envlight import EnvLight
from recon_kit.render import MeshRenderer, get_rasterizer, make_background
from recon_kit.io.fsio import atomic_write_text, torch_save_atomic
from recon_kit.train import guard as rk_guard
from recon_kit.train.callbacks import Callback, default_callbacks
from recon_kit.train.parallel import _average_gradients, _world
from recon_kit.train.graphed import GraphedViews
from recon_kit.train.phases import PASS_NAMES, Pass1, Phase, bake_to_pass2, phase_from_state
from recon_kit.losses import color_loss, depth_loss, edge_weights, smoothness_ramp


log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but CUDA is not available; use device='cpu' or 'auto'")
    return torch.device(name)


def lr_factor(it: int, warmup: int, decay: float) -> float:
    """nvdiffrec's schedule: linear warm-up, then 10^(-decay * (it - warmup))."""
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    return 10.0 ** (-decay * (it - warmup))


@dataclass
class StepResult:
    pass_name: str
    iteration: int
    losses: dict


class Trainer:
    """Two-pass reconstruction of ``views`` with config ``cfg``; writes into ``run_dir`` when given.

    Thread-safety: ``step()`` must be called from one thread at a time (the widget panel runs it in a
    background thread); ``cfg`` fields that matter per step (learning rates, loss weights) are read at every
    step, so changing them from another thread takes effect at the next step.
    """

    def __init__(self, cfg: ReconConfig, views: ViewSet, run_dir: str | Path | None = None,
                 device: str | torch.device | None = None, rasterizer=None) -> None:
        self.cfg = cfg
        self.device = pick_device(str(device or cfg.device))
        res = cfg.data.resolution
        self.views = (views.resized(res, res) if views.rgb_linear.shape[1:3] != (res, res) else views).to(self.device)
        # Camera matrices of every training view, built once: a step only indexes them (no host work).
        self._view_mats = stack_matrices(self.views.cameras, device=self.device)
        self._interior, self._color_w = edge_weights(self.views, cfg.loss.edge_px * res / 1024)
        self.cam_refiner = None
        if cfg.cameras.refine:
            distance = float(np.mean([np.linalg.norm(c.position) for c in self.views.cameras]))
            self.cam_refiner = CameraRefiner(self._view_mats, distance=distance).to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rast = rasterizer or get_rasterizer(cfg.backend, self.device)
        self._compile = {"auto": None, "on": True, "off": False}[cfg.compile]   # None: on CUDA only
        self.renderer = MeshRenderer(self.rast, compile=self._compile, shade_chunk=cfg.shade_chunk)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        # Random backgrounds are drawn where they are used: megapixels of host noise copied every step cost more
        # than the rest of the step's host work.
        self.bg_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        torch.manual_seed(cfg.seed)
        self.it = 0
        self.history: list[dict] = []
        self.timings: dict[str, float] = {"pass1": 0.0, "bake": 0.0, "pass2": 0.0}
        self._order: list[int] = []
        self._lock = threading.Lock()
        self.guard = rk_guard.DivergenceGuard(cfg.guard_factor)   # rollback + lower LR once, then DivergenceError
        self.lr_scale, self.rollbacks, self.last_good = 1.0, 0, None
        self.run_lock = None  # the run folder's lock, set by recon_kit.runs.run.new_trainer
        self.world_size, self.rank = _world()
        if self.rank != 0:
            self.run_dir = None  # only rank 0 writes logs, snapshots, checkpoints and exports
        for p in (cfg.pass1, cfg.pass2):
            if p.batch % self.world_size:
                raise ValueError(f"batch {p.batch} must be a multiple of the number of processes ({self.world_size})")
        self.callbacks: list[Callback] = default_callbacks()
        self._build_pass1()
        log.info("trainer: device=%s backend=%s encoder=%s views=%d res=%d", self.device, self.rast.name,
                 type(self.field.encoder).__name__, len(self.views), res)

    # ---- model construction -------------------------------------------------------------------------
    def _build_pass1(self) -> None:
        g, m, cfg = self.cfg.geometry, self.cfg.material, self.cfg
        if g.mesh_scale == "auto":
            from recon_kit.autoscale import fit_mesh_scale

            fit = fit_mesh_scale(self.views.cameras, self.views.mask)
            log.info("%s", fit)
            g.mesh_scale = fit.mesh_scale
        res, init = rk_dmtet.kuhn_res_for(g.grid_res), "random" if g.init == "random" else "sphere"
        if g.method == "flexicubes":   # same lattice, same checkpoint key ("dmtet") and interface as DMTet
            dmtet = FlexiCubes(res, g.mesh_scale, init=init, device=self.device).to(self.device)
        else:
            grid = rk_dmtet.TetGrid.generate(res, device=self.device)
            dmtet = rk_dmtet.DMTet(grid, g.mesh_scale, init=init, generator=None).to(self.device)
        if g.init == "random":
            dmtet.init_sdf("random", generator=self.generator)
        fused = None
        if cfg.loss.depth_prior > 0:
            if self.views.depth is None:
                raise ValueError("loss.depth_prior needs depth maps and this dataset has none; prepare the capture "
                                 "with its depth_renders/, or set loss.depth_prior=0")
            fused = fuse_viewset(self.views, g.mesh_scale, res=g.hull_res)
        occupancy = initial_occupancy(g, self.views, self.device, fused=fused)
        if occupancy is not None:
            dmtet.init_sdf_from_occupancy(occupancy, truncation=3.0)
        lo, hi = dmtet.aabb()
        field = materials.MaterialField(
            torch.stack([lo, hi]), encoder=m.encoder, hidden=m.mlp_width, kd_min=m.kd_min, kd_max=m.kd_max,
            ks_min=m.ks_min, ks_max=m.ks_max, device=self.device, n_levels=m.hash_levels,
            n_features=m.hash_features, log2_table=m.hash_log2_size, base_res=m.hash_base_res,
            max_res=m.hash_max_res, compile=self._compile)
        self.light = EnvLight(cfg.light.env_res).to(self.device)
        prior = fused.sign_targets(dmtet.v0 * dmtet.mesh_scale).to(self.device) if fused is not None else None
        self.pass1: Pass1 = Pass1(dmtet, field, sign_prior=prior)
        self.phase: Phase = self.pass1
        self._make_optimizers()

    def _make_optimizers(self) -> None:
        geo, mat = self.phase.parameter_groups()
        if self.phase.learns_light(self.cfg):
            mat += list(self.light.parameters())
        self.opt_geo = torch.optim.Adam(geo, lr=self._pass_cfg.lr_pos)
        self.opt_mat = torch.optim.Adam(mat, lr=self._pass_cfg.lr_mat)
        self.opt_cam = (torch.optim.Adam(self.cam_refiner.parameters(), lr=self.cfg.cameras.lr)
                        if self.cam_refiner is not None else None)
        self.graphed = GraphedViews.for_trainer(self)

    # ---- the current phase and its modules (the names notebooks, tests and tools use) ----------------------
    @property
    def _pass_cfg(self):
        return self.phase.config(self.cfg)

    @property
    def pass_idx(self) -> int:
        return self.phase.index

    @property
    def pass_name(self) -> str:
        return self.phase.name

    @property
    def dmtet(self):
        return self.pass1.dmtet

    @property
    def field(self):
        return self.pass1.field

    @property
    def fixed(self):
        return getattr(self.phase, "fixed", None)

    @property
    def textures(self):
        return getattr(self.phase, "textures", None)

    @property
    def done(self) -> bool:
        return self.phase.final and self.pass_end()

    @property
    def switch_due(self) -> bool:
        """The current pass has run its iterations and a next one follows (``step()`` will switch)."""
        return not self.phase.final and self.pass_end()

    def pass_end(self) -> bool:
        return self.it >= self._pass_cfg.iterations

    def total_iterations(self) -> int:
        return sum(getattr(self.cfg, name).iterations for name in PASS_NAMES)

    def global_iteration(self) -> int:
        return self.it + sum(getattr(self.cfg, name).iterations for name in PASS_NAMES[:self.phase.index])

    def add_callback(self, callback: Callback) -> None:
        """Run ``callback`` after every step, after the trainer's own (history, good state, snapshot, checkpoint)."""
        self.callbacks.append(callback)

    # ---- one iteration ---------------------------------------------------------------------------
    def current_mesh(self):
        return self.phase.mesh()

    def _next_batch(self, batch: int) -> torch.Tensor:
        idx = []
        while len(idx) < batch:
            if not self._order:
                self._order = torch.randperm(len(self.views), generator=self.generator).tolist()
            idx.append(self._order.pop())
        return torch.tensor(idx).pin_memory() if self.device.type == "cuda" else torch.tensor(idx)  # async copy

    def step(self) -> StepResult:
        """One optimisation step of the current pass (switching to pass 2, with the bake, when pass 1 ends)."""
        with self._lock:
            if self.switch_due:
                self._switch_to_pass2()
            if self.done:
                raise StopIteration("training is finished")
            t0 = time.perf_counter()
            rk_guard.remember_good(self, first=True)  # the state to roll back to before the first checkpoint
            try:
                losses = self._step()
            except torch.cuda.OutOfMemoryError as exc:
                raise rk_guard.out_of_memory(self) from exc
            except Exception as exc:
                if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise RuntimeError(f"torch.compile failed in a training step ({type(exc).__name__}: {exc}); "
                                       "train without it: config compile='off' (CLI: --set compile=off)") from exc
                raise
            self.timings[self.pass_name] += time.perf_counter() - t0
            rolled_back = rk_guard.guard_step(self, losses)  # None, or the losses of a step undone by a rollback
            if rolled_back is not None:
                return StepResult(self.pass_name, self.it, rolled_back)
            result = StepResult(self.pass_name, self.it, losses)
            self.it += 1
            for callback in self.callbacks:
                callback(self, result)
            return result

    def _step(self) -> dict:
        cfg, pc = self.cfg, self._pass_cfg
        t = self.it / max(1, pc.iterations)
        factor = lr_factor(self.it, pc.warmup, pc.lr_decay)
        cam_lr = self.phase.camera_lr(cfg, t)
        for opt, base in ((self.opt_geo, pc.lr_pos), (self.opt_mat, pc.lr_mat), (self.opt_cam, cam_lr)):
            for group in (opt.param_groups if opt is not None else ()):
                group["lr"] = base * factor * self.lr_scale
        idx = self._next_batch(pc.batch)              # the global batch: identical on every rank
        H, W = self.views.rgb_linear.shape[1:3]
        bg = make_background(cfg.data.train_background, (len(idx), H, W), self.device, generator=self.bg_generator)
        if self.world_size > 1:                       # each rank renders its share of the views
            share = len(idx) // self.world_size
            idx, bg = idx[self.rank * share:(self.rank + 1) * share], bg[self.rank * share:(self.rank + 1) * share]
        sel = idx.to(self.device, non_blocking=True)  # pinned: the step's one upload does not stall the queue

        with record_function("rk.extract"):
            mesh = self.current_mesh()
        if mesh.num_faces == 0:
            log.warning("%s iteration %d: the mesh has no faces; only the regulariser is applied", self.pass_name, self.it)
            loss = self.phase.empty_mesh_loss()
            self._zero_grad()
            loss.backward()
            self._optimizer_step()
            return {"total": loss.detach(), "empty_mesh": torch.tensor(1.0)}
        graphed = self.graphed.step(mesh, sel, bg, t) if self.graphed is not None and self.phase.final else None
        if graphed is not None:   # cuda_graph: pass 2's views replayed from a graph (None: no pixel covered)
            return graphed
        self._zero_grad()
        n, size = len(sel), (cfg.view_chunk or len(sel))
        starts = list(range(0, n, size))
        shared = mesh.v_pos
        if len(starts) > 1 and shared.requires_grad:
            # the chunks render a detached copy of the vertices, so each chunk's graph is freed by its own
            # backward (no retain_graph, which compiled shading forbids); the vertices' gradient, summed over
            # the chunks, goes through the extraction once at the end
            mesh = mesh.with_positions(shared.detach().requires_grad_())
        detached = mesh.v_pos is not shared
        logged: dict[str, torch.Tensor] = {}
        for start in starts:
            part = sel[start:start + size]
            losses = self._view_losses(mesh, part, self._cameras(part), bg[start:start + size], t)
            if len(starts) > 1:                       # a chunk's share of the step's views
                weight = len(part) / n
                losses = {k: v * weight for k, v in losses.items()}
            if start == starts[-1] and not detached:
                losses.update(self._step_terms(t))    # once per step, with the last chunk
            total = sum(losses.values())
            with record_function("rk.backward"):
                total.backward()
            losses["total"] = total
            for k, v in losses.items():
                logged[k] = v.detach() if k not in logged else logged[k] + v.detach()
        if detached:
            self._backward_shared(t, shared, mesh.v_pos.grad, logged)
        with record_function("rk.optimizer_step"):
            self._optimizer_step()
        return logged

    def _backward_shared(self, t: float, v_pos: torch.Tensor, v_grad: torch.Tensor | None, logged: dict) -> None:
        """After view chunks: the view-independent terms and the chunks' summed vertex gradient in one backward
        (FlexiCubes' regulariser shares the extraction's graph with the vertices, so they go through it together)."""
        terms = self._step_terms(t)
        roots, grads = [], []
        if terms:
            terms_total = sum(terms.values())
            logged.update({k: v.detach() for k, v in terms.items()})
            logged["total"] = logged["total"] + terms_total.detach()
            if terms_total.requires_grad:
                roots.append(terms_total)
                grads.append(None)
        if v_grad is not None:
            roots.append(v_pos)
            grads.append(v_grad)
        if roots:
            with record_function("rk.backward"):
                torch.autograd.backward(roots, grads)

    def _cameras(self, sel: torch.Tensor) -> dict:
        """``mvp``, ``w2c``, ``campos`` of views ``sel``: the refined cameras, or the dataset's."""
        if self.cam_refiner is not None:
            return self.cam_refiner(sel)
        return {k: v.index_select(0, sel) for k, v in self._view_mats.items()}

    def _step_terms(self, t: float) -> dict:
        """The losses that do not depend on the views: light, camera and geometry regularisers."""
        cfg, lw = self.cfg, self.cfg.loss
        terms = {}
        if lw.light_reg > 0 and cfg.light.learn_light:
            terms["light_reg"] = lw.light_reg * self.light.regularizer()
        if self.cam_refiner is not None:
            terms["camera_reg"] = cfg.cameras.reg * self.cam_refiner.regularizer()
        terms.update(self.phase.regularizers(t, cfg))
        return terms

    def _view_losses(self, mesh, sel: torch.Tensor, cams: dict, bg: torch.Tensor, t: float, ramp=None, light=None,
                     **raster) -> dict:
        """The per-pixel losses of the views ``sel`` (means over those views) rendered from ``cams``. ``ramp`` (a
        tensor), ``light`` and ``raster`` (:func:`~recon_kit.render.renderer.render_mesh`): the graphed step's."""
        cfg, lw = self.cfg, self.cfg.loss
        H, W = bg.shape[1:3]
        mask = self.views.mask.index_select(0, sel)[..., None]
        color_w = self._color_w.index_select(0, sel)[..., None]
        target = self.views.rgb_linear.index_select(0, sel) * mask + bg * (1 - mask)
        out = self.renderer.render(mesh, cams, (H, W), self.phase.material_fn(), light or self.light, bg,
                                   **raster)
        losses = {
            "coverage": lw.coverage * F.mse_loss(out["alpha"], mask),
            "color": color_loss(out["rgb_linear"] * color_w, target * color_w, lw.color),
        }
        ramp = smoothness_ramp(self.it) if ramp is None else ramp
        gmask = out["mask"][..., 0]
        if lw.kd_smooth > 0:
            losses["kd_smooth"] = lw.kd_smooth * ramp * self.phase.kd_smoothness(self.rast, out, gmask)
        if lw.occlusion > 0:
            losses["occlusion"] = lw.occlusion * ramp * (out["ks"][..., 0] * gmask).mean()
        if lw.depth > 0 and cfg.data.use_depth and self.views.depth is not None:
            depth_ref = self.views.depth.index_select(0, sel)
            valid = (gmask > 0) & (depth_ref > 0) & self._interior.index_select(0, sel)
            decay = self.phase.depth_decay(t, lw.depth_end)
            losses["depth"] = (lw.depth * decay * depth_loss(out["depth"][..., 0], depth_ref, valid)
                               / cfg.geometry.mesh_scale)
        return losses

    def _optimizers(self) -> list:
        return [o for o in (self.opt_geo, self.opt_mat, self.opt_cam) if o is not None]

    def _zero_grad(self) -> None:
        for opt in self._optimizers():
            opt.zero_grad(set_to_none=True)

    def _optimizer_step(self) -> None:
        """Average the gradients over ranks (data parallel), step every optimiser, clamp the light and geometry."""
        opts = self._optimizers()
        if self.world_size > 1:
            _average_gradients([g for opt in opts for g in opt.param_groups], self.world_size)
        for opt in opts:
            opt.step()
        with torch.no_grad():
            self.light.clamp_()
            self.phase.clamp_()

    # ---- pass switch: extract, clean, unwrap, bake --------------------------------------------------
    @torch.no_grad()
    def switch_to_pass2(self) -> None:
        """End pass 1 now: extract, clean, unwrap and bake its result, then start pass 2 (thread-safe; ``step()``
        does this on its own when pass 1's iterations are done)."""
        with self._lock:
            self._switch_to_pass2()

    def _switch_to_pass2(self) -> None:
        t0 = time.perf_counter()
        self.phase, self.it = bake_to_pass2(self.phase, self.rast, self.cfg, self.device, self.views.cameras), 0
        self._make_optimizers()
        self.timings["bake"] += time.perf_counter() - t0
        log.info("bake: %d faces, %d^2 textures in %.1f s", self.fixed.mesh().num_faces, self.cfg.material.texture_res,
                 self.timings["bake"])
        self.guard.reset()
        rk_guard.remember_good(self)
        if self.run_dir is not None:
            self.save_checkpoint()

    # ---- running -------------------------------------------------------------------------------------
    def run(self, iterations: int | None = None, progress: bool | str = True,
            callback: Callable[["Trainer", StepResult], None] | None = None,
            should_stop: Callable[[], bool] | None = None,
            before_step: Callable[["Trainer"], None] | None = None) -> "Trainer":
        """Run ``iterations`` steps (default: to the end of both passes) with a tqdm progress bar.

        ``before_step(trainer)`` runs before each step (the distributed loop does its collective pass switch
        and reseeding there); ``callback(trainer, result)`` after it. ``progress="text"``: a plain-text bar even
        in a kernel (papermill streams it; tqdm.auto would draw a widget nobody sees).
        """
        if progress == "text":
            from tqdm.std import tqdm
        else:
            from tqdm.auto import tqdm

        remaining = self.total_iterations() - self.global_iteration()
        n = remaining if iterations is None else min(iterations, remaining)
        target = self.global_iteration() + n
        with tqdm(total=n, disable=not progress, desc=self.pass_name, leave=True) as bar:  # closed before an error
            while self.global_iteration() < target:  # not range(n): a divergence rollback moves the iteration back
                if should_stop is not None and should_stop():
                    break
                if before_step is not None:
                    before_step(self)
                result = self.step()
                bar.set_description(result.pass_name)
                if self.it % self.cfg.log_every == 0:
                    bar.set_postfix(loss=f"{float(result.losses['total']):.4f}")
                bar.update(1)
                if callback is not None:
                    callback(self, result)
        return self

    # ---- previews, snapshots ---------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, views: ViewSet, background: str | None = None, bsdf: str = "pbr") -> dict:
        """Render the current model for ``views`` (any resolution) over a plain background. Eager shading: these
        occasional renders are not worth compiling another (gradient-free) graph for."""
        out = MeshRenderer(self.rast, compile=False).render_views(
            self.current_mesh(), views.cameras, self.phase.material_fn(), self.light,
            background or self.cfg.data.val_background, bsdf=bsdf, batch=1)   # one view at a time: any resolution
        return {k: out[k] for k in ("rgb_linear", "alpha", "depth")}

    @torch.no_grad()
    def preview(self, view: int = 0, size: int | None = None) -> np.ndarray:
        """``render | reference`` of one training view as sRGB uint8, for widgets and animations."""
        sub = self.views.subset([view])
        if size is not None and size != sub.rgb_linear.shape[2]:
            sub = sub.resized(size, size)
        rgb = self.render_views(sub)["rgb_linear"][0]
        bg = 1.0 if self.cfg.data.val_background == "white" else 0.0
        ref = sub.rgb_linear[0] * sub.mask[0, ..., None] + bg * (1 - sub.mask[0, ..., None])
        both = torch.cat([rgb, ref], 1).clamp(0, 1)
        return (linear_to_srgb(both) * 255 + 0.5).byte().cpu().numpy()

    def save_snapshot(self) -> Path:
        import imageio.v3 as iio

        folder = self.run_dir / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.pass_name}_{self.it:06d}.png"
        iio.imwrite(path, self.preview(0, size=min(256, self.cfg.data.resolution)))
        return path

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"pass_idx": self.pass_idx, "it": self.it, "cfg": self.cfg.to_dict(), "history": self.history,
                 "timings": self.timings, "order": list(self._order), "light": self.light.state_dict(),
                 "opt_geo": self.opt_geo.state_dict(), "opt_mat": self.opt_mat.state_dict(),
                 "generator": self.generator.get_state(), "bg_generator": self.bg_generator.get_state(),
                 "torch_rng": torch.get_rng_state(),
                 "guard": {"lr_scale": self.lr_scale, "rollbacks": self.rollbacks}}
        if self.cam_refiner is not None:
            state["cam_refiner"], state["opt_cam"] = self.cam_refiner.state_dict(), self.opt_cam.state_dict()
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        state.update(self.phase.state_dict())   # dmtet + field, or fixed + textures (the keys since wave 1)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.phase, self.it = phase_from_state(state, self.pass1, self.device), state["it"]
        self.light.load_state_dict(state["light"])
        self._make_optimizers()
        self.opt_geo.load_state_dict(state["opt_geo"])
        self.opt_mat.load_state_dict(state["opt_mat"])
        if self.cam_refiner is not None and "cam_refiner" in state:
            self.cam_refiner.load_state_dict(state["cam_refiner"])
            self.opt_cam.load_state_dict(state["opt_cam"])
        # RNG states are CPU byte tensors; a checkpoint loaded with map_location="cuda" holds them on the GPU
        self.generator.set_state(state["generator"].cpu())
        if "bg_generator" in state:
            self.bg_generator.set_state(state["bg_generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.history = list(state["history"])
        self.timings = dict(state["timings"])
        self._order = list(state["order"])
        guard = state.get("guard", {})
        self.lr_scale, self.rollbacks = guard.get("lr_scale", 1.0), guard.get("rollbacks", 0)

    def save_checkpoint(self) -> Path:
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.pass_name}_{self.it:06d}.pt"
        torch_save_atomic(self.state_dict(), path)   # temp name + rename: a kill or a full disk leaves no .tmp
        atomic_write_text(folder / "latest.txt", path.name)
        return path

    def resume(self) -> bool:
        """Load the latest checkpoint of ``run_dir``; returns False when there is none."""
        latest = self.run_dir / "checkpoints" / "latest.txt" if self.run_dir else None
        if latest is None or not latest.exists():
            return False
        path, state = rk_guard.load_latest_checkpoint(latest, self.device)  # an unreadable one: the one before
        self.load_state_dict(state)
        if self.run_dir is not None and (self.run_dir / "history.jsonl").exists():
            keep = [json.dumps(r) for r in self.history]
            (self.run_dir / "history.jsonl").write_text("".join(k + "\n" for k in keep))
        log.info("resumed from %s (%s iteration %d)", path.name, self.pass_name, self.it)
        return True

    # ---- outputs -------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, folder: str | Path | None = None, overwrite: bool = True) -> dict:
        """Write the mesh folder (OBJ/MTL/PNG/probe.hdr, nvdiffrec's layout), ``model.glb`` and a zip."""

        mesh, kd, ks, nrm = self.phase.export_parts()
        folder = Path(folder) if folder is not None else self.run_dir / "mesh"
        rk_guard.check_exportable(self, mesh, folder)
        probe = self.light.to_latlong(256)
        paths = meshfile.write_obj_folder(folder, mesh, kd, ks, nrm, probe, overwrite=overwrite)
        glb = meshfile.write_glb(folder / "model.glb", mesh, kd, ks, nrm)
        zip_path = meshfile.bundle_zip(folder, folder.parent / "mesh.zip")
        return {"folder": folder, "glb": glb, "zip": zip_path, **({"files": paths} if paths else {})}

    def refined_views(self) -> ViewSet:
        """The training views under the learned camera corrections (as given when refinement is off)."""
        if self.cam_refiner is None:
            return self.views
        return dataclasses.replace(self.views, cameras=self.cam_refiner.cameras(self.views.cameras))

    @torch.no_grad()
    def evaluate(self, views: ViewSet | None = None, split: str = "train") -> dict:
        """PSNR / SSIM (whole image and inside the mask) and silhouette IoU per view, as nvdiffrec reports
        PSNR: sRGB, clamped, over the validation background; with depth maps, the depth residual (the depth
        loss over the mask interior). Training views are rendered under the learned camera corrections."""

        views = views if views is not None else self.refined_views()
        out = self.render_views(views)
        bg = 1.0 if self.cfg.data.val_background == "white" else 0.0
        views = views.to(self.device)
        rows = []
        for i in range(len(views)):
            m = views.mask[i, ..., None]
            ref = linear_to_srgb((views.rgb_linear[i] * m + bg * (1 - m)).clamp(0, 1))
            pred = linear_to_srgb(out["rgb_linear"][i].clamp(0, 1))
            mk = views.mask[i] > 0.5
            rows.append({"view": views.names[i], "psnr": rk_evaluate.psnr(pred, ref), "psnr_masked": rk_evaluate.psnr(pred, ref, mk),
                         "ssim": rk_evaluate.ssim(pred, ref),  # on the render device: float64 SSIM at 1024^2 takes ~20 s on a CPU
                         "iou": rk_evaluate.silhouette_iou(out["alpha"][i, ..., 0].cpu().numpy() > 0.5, mk.cpu().numpy())})
        if views.depth is not None:
            interior, _ = edge_weights(views, self.cfg.loss.edge_px * views.rgb_linear.shape[2] / 1024)
            for i, r in enumerate(rows):
                valid = (out["alpha"][i, ..., 0] > 0.5) & (views.depth[i] > 0) & interior[i]
                r["depth_residual"] = float(depth_loss(out["depth"][i:i + 1, ..., 0], views.depth[i:i + 1],
                                                       valid[None]) / self.cfg.geometry.mesh_scale)
        keys = ("psnr", "psnr_masked", "ssim", "iou") + (("depth_residual",) if views.depth is not None else ())
        summary = {f"{split}_{k}": float(np.mean([r[k] for r in rows])) for k in keys}
        summary[f"{split}_views"] = rows
        return summary

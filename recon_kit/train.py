"""The two-pass reconstruction as a step-wise, resumable :class:`Trainer`.

Pass 1 optimises a DMTet surface with a hash-grid material field and a learned environment light. At the
switch the surface is extracted, cleaned, UV-unwrapped with xatlas and the field is baked into kd / ks /
normal textures (with gutters). Pass 2 optimises the vertex positions of that fixed-topology mesh, the
textures and the light. ``Trainer.step()`` runs one iteration of whichever pass is current, so a widget, a
script or a test can run, pause and inspect it; ``run()`` loops with a progress bar; checkpoints make a
killed run resume to the same result.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from . import bake, geometry, hull, materials
from .cameras import stack_matrices
from .config import ReconConfig, resolve
from .data import DataError, ViewSet, linear_to_srgb, load_viewset
from .light import EnvLight
from .render import get_rasterizer, make_background, render_mesh
from .render.pipeline import frame_from_normal

log = logging.getLogger(__name__)

PASS_NAMES = ("pass1", "pass2")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but CUDA is not available; use device='cpu' or 'auto'")
    return torch.device(name)


def tonemap_srgb_log(x: torch.Tensor) -> torch.Tensor:
    """nvdiffrec's tonemap for the log-L1 loss: sRGB(log(x + 1)) of linear HDR colour."""
    return linear_to_srgb(torch.log(x.clamp(0, 65535) + 1))


def color_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "logl1":
        return (tonemap_srgb_log(pred) - tonemap_srgb_log(target)).abs().mean()
    if kind == "l1":
        return (pred - target).abs().mean()
    return ((pred - target) ** 2).mean()


def depth_loss(pred: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale/shift-invariant depth loss: per view, fit ``pred ~ a * ref + b`` by least squares over pixels where
    both have depth (the capture's depth encoding is unknown, 8-bit and possibly inverted), then the mean
    absolute residual. The fit is detached so it acts as a fixed per-view calibration at each step."""
    w = valid.flatten(1).float()
    x, y = ref.flatten(1), pred.flatten(1)
    n = w.sum(1).clamp_min(1.0)
    with torch.no_grad():
        mx, my = (w * x).sum(1) / n, (w * y).sum(1) / n
        vx = (w * (x - mx[:, None]) ** 2).sum(1) / n
        cxy = (w * (x - mx[:, None]) * (y - my[:, None])).sum(1) / n
        a = cxy / vx.clamp_min(1e-12)
        b = my - a * mx
    resid = (y - (a[:, None] * x + b[:, None])).abs() * w
    return (resid.sum(1) / n).mean()


def lr_factor(it: int, warmup: int, decay: float) -> float:
    """nvdiffrec's schedule: linear warm-up, then 10^(-decay * (it - warmup))."""
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    return 10.0 ** (-decay * (it - warmup))


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
    """Losses averaged over ranks (each rank holds the losses of its share of the batch), as floats."""
    if world_size == 1:
        return {k: float(v) for k, v in losses.items()}
    import torch.distributed as dist

    keys = list(losses)
    flat = torch.stack([torch.as_tensor(losses[k], dtype=torch.float32, device=device).reshape(()) for k in keys])
    dist.all_reduce(flat)
    return dict(zip(keys, (flat / world_size).tolist()))


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
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rast = rasterizer or get_rasterizer(cfg.backend, self.device)
        self._compile = {"auto": None, "on": True, "off": False}[cfg.compile]   # None: on CUDA only
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        # Random backgrounds are drawn where they are used: megapixels of host noise copied every step cost more
        # than the rest of the step's host work.
        self.bg_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        torch.manual_seed(cfg.seed)
        self.pass_idx = 0
        self.it = 0
        self.history: list[dict] = []
        self.timings: dict[str, float] = {"pass1": 0.0, "bake": 0.0, "pass2": 0.0}
        self._order: list[int] = []
        self._lock = threading.Lock()
        self.world_size, self.rank = _world()
        if self.rank != 0:
            self.run_dir = None  # only rank 0 writes logs, snapshots, checkpoints and exports
        for p in (cfg.pass1, cfg.pass2):
            if p.batch % self.world_size:
                raise ValueError(f"batch {p.batch} must be a multiple of the number of processes ({self.world_size})")
        self._build_pass1()
        log.info("trainer: device=%s backend=%s encoder=%s views=%d res=%d", self.device, self.rast.name,
                 type(self.field.encoder).__name__, len(self.views), res)

    # ---- model construction -------------------------------------------------------------------------
    def _build_pass1(self) -> None:
        g, m, cfg = self.cfg.geometry, self.cfg.material, self.cfg
        grid = geometry.TetGrid.generate(geometry.kuhn_res_for(g.grid_res), device=self.device)
        self.dmtet = geometry.DMTet(grid, g.mesh_scale, init="random" if g.init == "random" else "sphere",
                                    generator=None).to(self.device)
        if g.init == "random":
            self.dmtet.init_sdf("random", generator=self.generator)
        if g.init == "depth" and self.views.depth is None:
            log.warning("geometry.init='depth' needs depth maps and this dataset has none; starting from the visual "
                        "hull instead (prepare the capture with its depth_renders/, or set geometry.init='hull')")
        if g.init == "depth" and self.views.depth is not None:
            from .fusion import fuse_viewset

            fused = fuse_viewset(self.views, g.mesh_scale, res=g.hull_res)
            self.dmtet.init_sdf_from_occupancy(fused.occupancy_fn, truncation=3.0)
        elif g.init in ("hull", "depth"):
            carved = hull.carve(self.views.cameras, self.views.mask, bounds=g.mesh_scale, res=g.hull_res,
                                device=self.device)
            self.dmtet.init_sdf_from_occupancy(carved.occupancy_fn, truncation=3.0)
        lo, hi = self.dmtet.aabb()
        self.field = materials.MaterialField(
            torch.stack([lo, hi]), encoder=m.encoder, hidden=m.mlp_width, kd_min=m.kd_min, kd_max=m.kd_max,
            ks_min=m.ks_min, ks_max=m.ks_max, device=self.device, n_levels=m.hash_levels,
            n_features=m.hash_features, log2_table=m.hash_log2_size, base_res=m.hash_base_res,
            max_res=m.hash_max_res, compile=self._compile)
        self.light = EnvLight(cfg.light.env_res).to(self.device)
        self.fixed = self.textures = None
        self._make_optimizers()

    def _make_optimizers(self) -> None:
        if self.pass_idx == 0:
            geo = list(self.dmtet.parameters())
            mat = list(self.field.parameters())
        else:
            geo = list(self.fixed.parameters())
            mat = list(self.textures.parameters())
        learn_light = self.cfg.light.learn_light and not (self.pass_idx == 1 and self.cfg.light.lock_light_pass2)
        if learn_light:
            mat += list(self.light.parameters())
        self.opt_geo = torch.optim.Adam(geo, lr=self._pass_cfg.lr_pos)
        self.opt_mat = torch.optim.Adam(mat, lr=self._pass_cfg.lr_mat)

    @property
    def _pass_cfg(self):
        return self.cfg.pass1 if self.pass_idx == 0 else self.cfg.pass2

    @property
    def pass_name(self) -> str:
        return PASS_NAMES[self.pass_idx]

    @property
    def done(self) -> bool:
        return self.pass_idx == 1 and self.it >= self.cfg.pass2.iterations

    def total_iterations(self) -> int:
        return self.cfg.pass1.iterations + self.cfg.pass2.iterations

    def global_iteration(self) -> int:
        return self.it + (self.cfg.pass1.iterations if self.pass_idx == 1 else 0)

    # ---- one iteration ---------------------------------------------------------------------------
    def current_mesh(self):
        return self.dmtet.extract() if self.pass_idx == 0 else self.fixed.mesh()

    def _material_fn(self):
        if self.pass_idx == 0:
            field = self.field
            return lambda gb: field(gb.pos, gb.mask[..., 0], pixels=gb.pixels())
        tex, rast = self.textures, self.rast
        return lambda gb: tex(rast, gb.uv, gb.uv_da)

    def _next_batch(self, batch: int) -> torch.Tensor:
        idx = []
        while len(idx) < batch:
            if not self._order:
                self._order = torch.randperm(len(self.views), generator=self.generator).tolist()
            idx.append(self._order.pop())
        return torch.tensor(idx)

    def step(self) -> StepResult:
        """One optimisation step of the current pass (switching to pass 2, with the bake, when pass 1 ends)."""
        with self._lock:
            if self.pass_idx == 0 and self.it >= self.cfg.pass1.iterations:
                self._switch_to_pass2()
            if self.done:
                raise StopIteration("training is finished")
            t0 = time.perf_counter()
            try:
                losses = self._step()
            except Exception as exc:
                if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise RuntimeError(f"torch.compile failed in a training step ({type(exc).__name__}: {exc}); "
                                       "train without it: config compile='off' (CLI: --set compile=off)") from exc
                raise
            self.timings[self.pass_name] += time.perf_counter() - t0
            result = StepResult(self.pass_name, self.it, losses)
            self.it += 1
            self._after_step(result)
            return result

    def _step(self) -> dict:
        cfg, pc, lw = self.cfg, self._pass_cfg, self.cfg.loss
        t = self.it / max(1, pc.iterations)
        factor = lr_factor(self.it, pc.warmup, pc.lr_decay)
        for opt, base in ((self.opt_geo, pc.lr_pos), (self.opt_mat, pc.lr_mat)):
            for group in opt.param_groups:
                group["lr"] = base * factor
        idx = self._next_batch(pc.batch)              # the global batch: identical on every rank
        H, W = self.views.rgb_linear.shape[1:3]
        bg = make_background(cfg.data.train_background, (len(idx), H, W), self.device, generator=self.bg_generator)
        if self.world_size > 1:                       # each rank renders its share of the views
            share = len(idx) // self.world_size
            idx, bg = idx[self.rank * share:(self.rank + 1) * share], bg[self.rank * share:(self.rank + 1) * share]
        sub = self.views.subset(idx.tolist())
        sel = idx.to(self.device)
        cams = {k: v.index_select(0, sel) for k, v in self._view_mats.items()}
        mask = sub.mask[..., None]
        target = sub.rgb_linear * mask + bg * (1 - mask)

        with record_function("rk.extract"):
            mesh = self.current_mesh()
        if mesh.num_faces == 0:
            log.warning("pass 1 iteration %d: the SDF has no zero crossing; only the regulariser is applied", self.it)
            loss = self.dmtet.sdf_reg_loss() + (self.dmtet.sdf - 0.1).abs().mean()
            self._backward_step(loss)
            return {"total": loss.detach(), "empty_mesh": torch.tensor(1.0)}

        out = render_mesh(self.rast, mesh, cams, (H, W), self._material_fn(), self.light, bg, compile=self._compile)
        losses = {
            "coverage": lw.coverage * F.mse_loss(out["alpha"], mask),
            "color": color_loss(out["rgb_linear"] * mask, target * mask, lw.color),
        }
        ramp = min(1.0, self.it / 500.0)
        gmask = out["mask"][..., 0]
        if lw.kd_smooth > 0:
            if self.pass_idx == 0:
                kd_s = self.field.kd_smoothness(out["gbuffer"].pos, gmask, kd=out["kd"], pixels=out["gbuffer"].pixels())
            else:
                gb = out["gbuffer"]
                kd_s = self.textures.kd_smoothness(self.rast, gb.uv, gmask, uv_da=gb.uv_da, kd=out["kd"])
            losses["kd_smooth"] = lw.kd_smooth * ramp * kd_s
        if lw.occlusion > 0:
            losses["occlusion"] = lw.occlusion * ramp * (out["ks"][..., 0] * gmask).mean()
        if lw.light_reg > 0 and self.cfg.light.learn_light:
            losses["light_reg"] = lw.light_reg * self.light.regularizer()
        if lw.depth > 0 and cfg.data.use_depth and sub.depth is not None:
            valid = (gmask > 0) & (sub.depth > 0)
            losses["depth"] = lw.depth * depth_loss(out["depth"][..., 0], sub.depth, valid) / cfg.geometry.mesh_scale
        if self.pass_idx == 0:
            losses["sdf_reg"] = geometry.sdf_reg_weight(t, cfg.geometry.sdf_regularizer) * self.dmtet.sdf_reg_loss()
        else:
            losses["laplace"] = self.fixed.laplacian(t, cfg.geometry.laplace_scale)
        total = sum(losses.values())
        with record_function("rk.backward_step"):
            self._backward_step(total)
        losses = {k: v.detach() for k, v in losses.items()}
        losses["total"] = total.detach()
        return losses

    def _backward_step(self, loss: torch.Tensor) -> None:
        self.opt_geo.zero_grad(set_to_none=True)
        self.opt_mat.zero_grad(set_to_none=True)
        loss.backward()
        if self.world_size > 1:
            _average_gradients(self.opt_geo.param_groups + self.opt_mat.param_groups, self.world_size)
        self.opt_geo.step()
        self.opt_mat.step()
        with torch.no_grad():
            self.light.clamp_()
            if self.textures is not None:
                self.textures.clamp_()

    def _after_step(self, result: StepResult) -> None:
        cfg = self.cfg
        if self.it % cfg.log_every == 0 or self._pass_end():
            rec = {"pass": result.pass_name, "it": result.iteration, "global_it": self.global_iteration(),
                   "time": round(self.timings[result.pass_name], 3),
                   "lr_pos": self.opt_geo.param_groups[0]["lr"], "lr_mat": self.opt_mat.param_groups[0]["lr"]}
            rec.update(_mean_over_ranks(result.losses, self.world_size, self.device))
            self.history.append(rec)
            if self.run_dir is not None:
                with open(self.run_dir / "history.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
        if self.run_dir is None:
            return
        if cfg.snapshot_every and self.it % cfg.snapshot_every == 0:
            self.save_snapshot()
        if (cfg.checkpoint_every and self.it % cfg.checkpoint_every == 0) or self._pass_end():
            self.save_checkpoint()

    def _pass_end(self) -> bool:
        return self.it >= self._pass_cfg.iterations

    # ---- pass switch: extract, clean, unwrap, bake --------------------------------------------------
    @torch.no_grad()
    def _switch_to_pass2(self) -> None:
        t0 = time.perf_counter()
        mesh = geometry.clean_mesh(self.dmtet.extract(), target_faces=self.cfg.geometry.max_faces)
        if mesh.num_faces == 0:
            raise RuntimeError("pass 1 produced an empty mesh; check the masks, mesh_scale and poses "
                               "(notebook 02) or start from the visual hull (geometry.init='hull')")
        mesh = bake.uv_unwrap(mesh)
        textures = bake.bake_field(self.rast, mesh, self._bake_fn(mesh), texture_res=self.cfg.material.texture_res)
        m = self.cfg.material
        self.textures = materials.TexturedMaterial.from_arrays(
            textures["kd"], textures["ks"], textures["normal"], kd_min=m.kd_min, kd_max=m.kd_max,
            ks_min=m.ks_min, ks_max=m.ks_max, device=self.device)
        self.fixed = geometry.FixedMesh(mesh).to(self.device)
        self.pass_idx, self.it = 1, 0
        self._make_optimizers()
        self.timings["bake"] += time.perf_counter() - t0
        log.info("bake: %d faces, %d^2 textures in %.1f s", mesh.num_faces, self.cfg.material.texture_res,
                 self.timings["bake"])
        if self.run_dir is not None:
            self.save_checkpoint()

    def _bake_fn(self, mesh) -> Callable:
        """Field lookup for baking; re-expresses the tangent-space normal in the new UV tangent frame.

        Pass 1 perturbs normals in a frame derived from the surface normal alone; pass 2 uses UV tangents.
        Converting at bake time keeps the learned detail (nvdiffrec copies the values across frames).
        """
        field = self.field

        def fn(pos: torch.Tensor, normal: torch.Tensor | None = None, tangent: torch.Tensor | None = None) -> dict:
            out = field(pos)
            if normal is None or tangent is None:
                return out
            n = F.normalize(normal, dim=-1, eps=1e-8)
            t1 = F.normalize(frame_from_normal(n), dim=-1, eps=1e-8)
            b1 = F.normalize(torch.cross(t1, n, dim=-1), dim=-1, eps=1e-8)
            p = out["normal"]
            world = F.normalize(t1 * p[..., 0:1] - b1 * p[..., 1:2] + n * p[..., 2:3].clamp_min(0), dim=-1, eps=1e-8)
            t2 = F.normalize(tangent - (tangent * n).sum(-1, keepdim=True) * n, dim=-1, eps=1e-8)
            b2 = F.normalize(torch.cross(t2, n, dim=-1), dim=-1, eps=1e-8)
            out["normal"] = torch.stack([(world * t2).sum(-1), -(world * b2).sum(-1), (world * n).sum(-1).clamp_min(0)], -1)
            return out
        return fn

    # ---- running -------------------------------------------------------------------------------------
    def run(self, iterations: int | None = None, progress: bool = True,
            callback: Callable[["Trainer", StepResult], None] | None = None,
            should_stop: Callable[[], bool] | None = None,
            before_step: Callable[["Trainer"], None] | None = None) -> "Trainer":
        """Run ``iterations`` steps (default: to the end of both passes) with a tqdm progress bar.

        ``before_step(trainer)`` runs before each step (the distributed loop does its collective pass switch
        and reseeding there); ``callback(trainer, result)`` after it.
        """
        from tqdm.auto import tqdm

        remaining = self.total_iterations() - self.global_iteration()
        n = remaining if iterations is None else min(iterations, remaining)
        bar = tqdm(total=n, disable=not progress, desc=self.pass_name, leave=True)
        for _ in range(n):
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
        bar.close()
        return self

    # ---- previews, snapshots ---------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, views: ViewSet, background: str | None = None, bsdf: str = "pbr") -> dict:
        """Render the current model for ``views`` (any resolution) over a plain background. Eager shading: these
        occasional renders are not worth compiling another (gradient-free) graph for."""
        views = views.to(self.device)
        H, W = views.rgb_linear.shape[1:3]
        out_rgb, out_alpha, out_depth = [], [], []
        mesh = self.current_mesh()
        for i in range(len(views)):
            cams = stack_matrices([views.cameras[i]], device=self.device)
            bg = make_background(background or self.cfg.data.val_background, (1, H, W), self.device)
            if mesh.num_faces == 0:
                out_rgb.append(bg), out_alpha.append(torch.zeros(1, H, W, 1, device=self.device))
                out_depth.append(torch.zeros(1, H, W, 1, device=self.device))
                continue
            out = render_mesh(self.rast, mesh, cams, (H, W), self._material_fn(), self.light, bg, bsdf=bsdf,
                              compile=False)
            out_rgb.append(out["rgb_linear"]), out_alpha.append(out["alpha"]), out_depth.append(out["depth"])
        return {"rgb_linear": torch.cat(out_rgb), "alpha": torch.cat(out_alpha), "depth": torch.cat(out_depth)}

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
                 "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.pass_idx == 0:
            state["dmtet"], state["field"] = self.dmtet.state_dict(), self.field.state_dict()
        else:
            state["fixed"], state["textures"] = self.fixed.state_dict(), self.textures.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.pass_idx, self.it = state["pass_idx"], state["it"]
        if self.pass_idx == 0:
            self.dmtet.load_state_dict(state["dmtet"])
            self.field.load_state_dict(state["field"])
        else:
            from .mesh import Mesh

            fx = state["fixed"]
            mesh = Mesh(fx["v_init"], fx["t_pos_idx"], fx.get("v_tex"), fx.get("t_tex_idx"))
            self.fixed = geometry.FixedMesh(mesh).to(self.device)
            self.fixed.load_state_dict(fx)
            tx = state["textures"]
            self.textures = materials.TexturedMaterial.from_arrays(
                tx["kd.data"][0], tx["ks.data"][0], tx["normal.data"][0], device=self.device)
            self.textures.load_state_dict(tx)
        self.light.load_state_dict(state["light"])
        self._make_optimizers()
        self.opt_geo.load_state_dict(state["opt_geo"])
        self.opt_mat.load_state_dict(state["opt_mat"])
        self.generator.set_state(state["generator"])
        if "bg_generator" in state:
            self.bg_generator.set_state(state["bg_generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = list(state["history"])
        self.timings = dict(state["timings"])
        self._order = list(state["order"])

    def save_checkpoint(self) -> Path:
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.pass_name}_{self.it:06d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)
        (folder / "latest.txt").write_text(path.name)
        return path

    def resume(self) -> bool:
        """Load the latest checkpoint of ``run_dir``; returns False when there is none."""
        latest = self.run_dir / "checkpoints" / "latest.txt" if self.run_dir else None
        if latest is None or not latest.exists():
            return False
        path = latest.parent / latest.read_text().strip()
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
        if self.run_dir is not None and (self.run_dir / "history.jsonl").exists():
            keep = [json.dumps(r) for r in self.history]
            (self.run_dir / "history.jsonl").write_text("".join(k + "\n" for k in keep))
        log.info("resumed from %s (%s iteration %d)", path.name, self.pass_name, self.it)
        return True

    # ---- outputs -------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, folder: str | Path | None = None, overwrite: bool = True) -> dict:
        """Write the mesh folder (OBJ/MTL/PNG/probe.hdr, nvdiffrec's layout), ``model.glb`` and a zip."""
        from . import export

        if self.pass_idx == 0:
            raise RuntimeError("export needs pass 2 (textures); run the trainer to the end first")
        folder = Path(folder) if folder is not None else self.run_dir / "mesh"
        mesh = self.fixed.mesh()
        kd, ks, nrm = (t.to_numpy() for t in (self.textures.kd, self.textures.ks, self.textures.normal))
        probe = self.light.to_latlong(256)
        paths = export.write_obj_folder(folder, mesh, kd, ks, nrm, probe, overwrite=overwrite)
        glb = export.write_glb(folder / "model.glb", mesh, kd, ks, nrm)
        zip_path = export.bundle_zip(folder, folder.parent / "mesh.zip")
        return {"folder": folder, "glb": glb, "zip": zip_path, **({"files": paths} if paths else {})}

    @torch.no_grad()
    def evaluate(self, views: ViewSet | None = None, split: str = "train") -> dict:
        """PSNR / SSIM (whole image and inside the mask) and silhouette IoU per view, as nvdiffrec reports
        PSNR: sRGB, clamped, over the validation background."""
        from . import metrics

        views = views if views is not None else self.views
        out = self.render_views(views)
        bg = 1.0 if self.cfg.data.val_background == "white" else 0.0
        views = views.to(self.device)
        rows = []
        for i in range(len(views)):
            m = views.mask[i, ..., None]
            ref = linear_to_srgb((views.rgb_linear[i] * m + bg * (1 - m)).clamp(0, 1)).cpu().numpy()
            pred = linear_to_srgb(out["rgb_linear"][i].clamp(0, 1)).cpu().numpy()
            mk = views.mask[i].cpu().numpy() > 0.5
            rows.append({"view": views.names[i], "psnr": metrics.psnr(pred, ref), "psnr_masked": metrics.psnr(pred, ref, mk),
                         "ssim": metrics.ssim(pred, ref), "iou": metrics.silhouette_iou(out["alpha"][i, ..., 0].cpu().numpy() > 0.5, mk)})
        summary = {f"{split}_{k}": float(np.mean([r[k] for r in rows])) for k in ("psnr", "psnr_masked", "ssim", "iou")}
        summary[f"{split}_views"] = rows
        return summary


def new_trainer(cfg: ReconConfig, views: ViewSet, run_dir: str | Path | None, resume: bool = False,
                overwrite: bool = False) -> Trainer:
    """A trainer writing into ``run_dir`` (created now; never silently overwritten), resumed when asked."""
    from .rundir import RunDir

    if run_dir is None:
        return Trainer(cfg, views, None)
    rd = RunDir.at(run_dir, overwrite=overwrite, resume=resume)
    trainer = Trainer(cfg, views, rd.dir)
    if resume and trainer.resume():
        saved = ReconConfig.load(rd.dir / "config.json") if (rd.dir / "config.json").exists() else None
        if saved is not None and saved.to_dict() != cfg.to_dict():
            log.warning("resuming %s with a config that differs from its config.json", rd.dir)
    cfg.save(rd.dir / "config.json")
    return trainer


def train_from_config(config: str | Path | ReconConfig | None, dataset_dir: str | Path, run_dir: str | Path,
                      overrides: dict | None = None, resume: bool = False, overwrite: bool = False,
                      progress: bool = True) -> dict:
    """Scripted run (the CLI's ``train``): load data, train both passes, export, evaluate, write metrics.json."""
    cfg = resolve(config, overrides)
    views = load_viewset(dataset_dir, resolution=cfg.data.resolution)
    trainer = new_trainer(cfg, views, run_dir, resume=resume, overwrite=overwrite)
    trainer.run(progress=progress)
    return finish(trainer, dataset_dir)


def finish(trainer: Trainer, dataset_dir: str | Path) -> dict:
    """Export, evaluate on the training views (and held-out views when the dataset has them), write metrics."""
    from .metrics import write_metrics_json

    exported = trainer.export()
    if trainer.run_dir is not None:  # training.gif (+ .mp4) from the snapshots, before metrics.json marks the run done
        try:
            from .animation import training_animation

            animation = training_animation(trainer.run_dir)
            if animation is not None:
                exported["animation"] = animation
        except Exception as err:  # noqa: BLE001 - a convenience output never fails a finished run
            import warnings

            warnings.warn(f"training animation not written: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
    result = {"iterations": {"pass1": trainer.cfg.pass1.iterations, "pass2": trainer.cfg.pass2.iterations},
              "timings_s": dict(trainer.timings), "device": str(trainer.device), "backend": trainer.rast.name,
              "final_loss": trainer.history[-1]["total"] if trainer.history else math.nan,
              "faces": trainer.fixed.mesh().num_faces}
    result.update(trainer.evaluate(split="train"))
    result["dataset_dir"] = str(Path(dataset_dir).resolve())
    try:  # held-out views, when the dataset (or its <res>/ folder) has transforms_test.json
        test_views = load_viewset(dataset_dir, resolution=trainer.cfg.data.resolution, split="test")
    except DataError:
        test_views = None
    if test_views is not None:
        result.update(trainer.evaluate(test_views, split="test"))
    if trainer.run_dir is not None:
        write_metrics_json(trainer.run_dir / "metrics.json", result)
    result["exported"] = {k: str(v) for k, v in exported.items() if k != "files"}
    return result


def metrics_table(run_dir: str | Path):
    """The run's metrics.json as a table (one row per scalar; per-view lists are left out)."""
    from .metrics import metrics_dataframe, read_metrics_json

    return metrics_dataframe(read_metrics_json(Path(run_dir) / "metrics.json"))

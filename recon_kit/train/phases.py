"""The two training phases behind one interface, and the pass switch between them.

A :class:`Phase` owns what one pass optimises: its modules (named as in the checkpoints), their parameter
groups, the material function the renderer calls, the current mesh and the pass-specific regularisers. The
:class:`~recon_kit.train.trainer.Trainer` only talks to this interface, so it has no per-pass branches.
:func:`bake_to_pass2` is the pass switch: a finished :class:`Pass1` becomes a :class:`Pass2` through the bake.
"""

from __future__ import annotations

import abc
import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from recon_kit import bake
from recon_kit import mesh as rk_mesh
from recon_kit.cameras import Camera
from recon_kit.config import ReconConfig
from recon_kit.mesh import Mesh
from recon_kit.model import dmtet as rk_dmtet
from recon_kit.model import fixed_mesh
from recon_kit.model import materials
from recon_kit.render.renderer import frame_from_normal
from recon_kit.render.visibility import visible_faces

log = logging.getLogger(__name__)

__all__ = ["PASS_NAMES", "Pass1", "Pass2", "Phase", "bake_to_pass2", "phase_from_state"]

PASS_NAMES = ("pass1", "pass2")


class Phase(abc.ABC):
    """What one pass trains. ``index``/``name`` place it in the run; ``final`` is True for the last pass."""

    index: int
    final: bool

    @property
    def name(self) -> str:
        return PASS_NAMES[self.index]

    def config(self, cfg: ReconConfig):
        """This pass's section of the config (iterations, batch, learning rates)."""
        return getattr(cfg, self.name)

    @abc.abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]:
        """The trained modules by the names their state dicts have in a checkpoint (geometry first)."""

    def parameter_groups(self) -> tuple[list, list]:
        """(geometry parameters, material parameters): the two optimisers' groups, without the light."""
        geo, mat = self.modules().values()
        return list(geo.parameters()), list(mat.parameters())

    def learns_light(self, cfg: ReconConfig) -> bool:
        return cfg.light.learn_light

    def camera_lr(self, cfg: ReconConfig, t: float) -> float:
        """Camera-refinement learning rate at pass fraction ``t``."""
        return cfg.cameras.lr

    @abc.abstractmethod
    def mesh(self) -> Mesh:
        """The current surface."""

    @abc.abstractmethod
    def material_fn(self) -> Callable:
        """The renderer material (``material(gbuffer, rasterizer) -> {kd, ks, normal}``)."""

    @abc.abstractmethod
    def kd_smoothness(self, rast, out: dict, gmask: torch.Tensor) -> torch.Tensor:
        """The kd smoothness loss of a render ``out`` (covered pixels ``gmask``)."""

    @abc.abstractmethod
    def depth_decay(self, t: float, depth_end: float) -> float:
        """Factor of the depth loss at pass fraction ``t``."""

    @abc.abstractmethod
    def regularizers(self, t: float, cfg: ReconConfig) -> dict[str, torch.Tensor]:
        """The pass's geometry regulariser(s), named as in the history."""

    def empty_mesh_loss(self) -> torch.Tensor:
        """The loss of a step whose mesh has no faces (only pass 1's SDF can lose its surface)."""
        raise RuntimeError(f"{self.name}: the mesh has no faces")

    def clamp_(self) -> None:
        """Project the parameters back into their valid range after an optimiser step."""

    def state_dict(self) -> dict:
        return {k: m.state_dict() for k, m in self.modules().items()}

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state[k])

    def export_parts(self):
        """(mesh, kd, ks, normal textures as arrays) for the exporters; only a textured pass has them."""
        raise RuntimeError("export needs pass 2 (textures); run the trainer to the end first")


class Pass1(Phase):
    """DMTet or FlexiCubes surface (``geometry.method``; either one is ``dmtet`` here and in checkpoints) +
    hash-grid material field."""

    index, final = 0, False

    def __init__(self, dmtet: rk_dmtet.LatticeSDF, field: materials.MaterialField,
                 sign_prior: torch.Tensor | None = None) -> None:
        """``sign_prior``: per lattice vertex +1 / -1 / 0 (inside / outside / free) from the fused depth maps
        (:meth:`recon_kit.model.fusion.FusedDepth.sign_targets`), for ``loss.depth_prior``."""
        self.dmtet, self.field = dmtet, field
        self._prior_idx = self._prior_sign = None
        if sign_prior is not None and bool(sign_prior.any()):
            self._prior_idx = torch.nonzero(sign_prior).reshape(-1)   # once: a step indexes without host syncs
            self._prior_sign = sign_prior.index_select(0, self._prior_idx)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"dmtet": self.dmtet, "field": self.field}

    def camera_lr(self, cfg: ReconConfig, t: float) -> float:
        return 0.0 if t < cfg.cameras.start else cfg.cameras.lr

    def mesh(self) -> Mesh:
        return self.dmtet.extract()

    def material_fn(self) -> Callable:
        return self.field.material

    def kd_smoothness(self, rast, out: dict, gmask: torch.Tensor) -> torch.Tensor:
        gb = out["gbuffer"]
        return self.field.kd_smoothness(gb.pos, gmask, kd=out["kd"], pixels=gb.pixels())

    def depth_decay(self, t: float, depth_end: float) -> float:
        return 1.0 - (1.0 - depth_end) * t

    def regularizers(self, t: float, cfg: ReconConfig) -> dict[str, torch.Tensor]:
        regs = {"sdf_reg": rk_dmtet.sdf_reg_weight(t, cfg.geometry.sdf_regularizer) * self.dmtet.sdf_reg_loss()}
        regs.update(self.dmtet.extra_losses())   # FlexiCubes: L_dev and its weights' magnitude
        if self._prior_idx is not None and cfg.loss.depth_prior > 0:
            # sdf > 0 inside, in grid cells: a constrained vertex on the wrong side (or within 0.1 cell) pays
            sdf = self.dmtet.sdf.reshape(-1).index_select(0, self._prior_idx)
            regs["depth_prior"] = (cfg.loss.depth_prior * self.depth_decay(t, cfg.loss.depth_end)
                                   * torch.relu(0.1 - self._prior_sign * sdf).mean())
        return regs

    def empty_mesh_loss(self) -> torch.Tensor:
        return self.dmtet.sdf_reg_loss() + (self.dmtet.sdf - 0.1).abs().mean()


class Pass2(Phase):
    """Fixed-topology UV mesh (vertex offsets) + kd / ks / normal textures."""

    index, final = 1, True

    def __init__(self, fixed: fixed_mesh.FixedMesh, textures: materials.TexturedMaterial) -> None:
        self.fixed, self.textures = fixed, textures

    @classmethod
    def from_state(cls, state: dict, device) -> "Pass2":
        """Rebuild pass 2 from a checkpoint's ``fixed`` and ``textures`` state dicts."""
        fx, tx = state["fixed"], state["textures"]
        mesh = Mesh(fx["v_init"], fx["t_pos_idx"], fx.get("v_tex"), fx.get("t_tex_idx"))
        phase = cls(fixed_mesh.FixedMesh(mesh).to(device), materials.TexturedMaterial.from_arrays(
            tx["kd.data"][0], tx["ks.data"][0], tx["normal.data"][0], device=device))
        phase.load_state_dict(state)
        return phase

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"fixed": self.fixed, "textures": self.textures}

    def learns_light(self, cfg: ReconConfig) -> bool:
        return cfg.light.learn_light and not cfg.light.lock_light_pass2

    def mesh(self) -> Mesh:
        return self.fixed.mesh()

    def material_fn(self) -> Callable:
        return self.textures.material

    def kd_smoothness(self, rast, out: dict, gmask: torch.Tensor) -> torch.Tensor:
        gb = out["gbuffer"]
        return self.textures.kd_smoothness(rast, gb.uv, gmask, uv_da=gb.uv_da, kd=out["kd"])

    def depth_decay(self, t: float, depth_end: float) -> float:
        return depth_end

    def regularizers(self, t: float, cfg: ReconConfig) -> dict[str, torch.Tensor]:
        return {"laplace": self.fixed.laplacian(t, cfg.geometry.laplace_scale, cfg.geometry.laplace_floor)}

    def clamp_(self) -> None:
        self.textures.clamp_()

    def export_parts(self):
        kd, ks, nrm = (t.to_numpy() for t in (self.textures.kd, self.textures.ks, self.textures.normal))
        return self.fixed.mesh(), kd, ks, nrm


def phase_from_state(state: dict, pass1: Pass1, device) -> Phase:
    """The phase a checkpoint holds (keys ``dmtet``/``field`` or ``fixed``/``textures``, as written since
    wave 1): pass 1's state is loaded into ``pass1``, pass 2 is rebuilt."""
    if state["pass_idx"] == 0:
        pass1.load_state_dict(state)
        return pass1
    return Pass2.from_state(state, device)


@torch.no_grad()
def bake_to_pass2(pass1: Pass1, rast, cfg: ReconConfig, device, cameras: Sequence[Camera] = ()) -> Pass2:
    """The pass switch: extract and clean pass 1's surface (floaters; with ``geometry.cull_views``, the faces no
    view from around it or from ``cameras`` shows), UV-unwrap it, bake the field into textures."""
    mesh = rk_mesh.clean_mesh(pass1.dmtet.extract())
    if cfg.geometry.cull_views > 0 and mesh.num_faces > 0:
        res = min(512, max(256, cfg.data.resolution))
        seen = visible_faces(rast, mesh, cfg.geometry.cull_views, res, cameras)
        n_before, mesh = mesh.num_faces, rk_mesh.keep_faces(mesh, seen, fill=2)
        log.info("pass switch: %d of %d faces hidden from every view dropped", n_before - mesh.num_faces, n_before)
    mesh = rk_mesh.simplify(mesh, cfg.geometry.unwrap_target())
    if mesh.num_faces == 0:
        raise RuntimeError("pass 1 produced an empty mesh; check the masks, mesh_scale and poses "
                           "(notebook 02) or start from the visual hull (rk_dmtet.init='hull')")
    mesh = bake.uv_unwrap(mesh)
    textures = bake.bake_field(rast, mesh, _bake_fn(pass1.field), texture_res=cfg.material.texture_res)
    m = cfg.material
    tex = materials.TexturedMaterial.from_arrays(
        textures["kd"], textures["ks"], textures["normal"], kd_min=m.kd_min, kd_max=m.kd_max,
        ks_min=m.ks_min, ks_max=m.ks_max, device=device)
    return Pass2(fixed_mesh.FixedMesh(mesh).to(device), tex)


def _bake_fn(field) -> Callable:
    """Field lookup for baking; re-expresses the tangent-space normal in the new UV tangent frame.

    Pass 1 perturbs normals in a frame derived from the surface normal alone; pass 2 uses UV tangents.
    Converting at bake time keeps the learned detail (nvdiffrec copies the values across frames).
    """

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

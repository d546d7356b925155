"""Pass 2 geometry: a fixed triangle mesh with learnable vertex offsets."""

from __future__ import annotations


import torch
from torch import nn

from recon_kit.mesh import Mesh, laplacian_loss, unique_edges


class FixedMesh(nn.Module):
    """Pass-2 geometry: a fixed-topology mesh whose vertices move by a trainable ``offset`` from ``v_init``."""

    def __init__(self, mesh: Mesh) -> None:
        super().__init__()
        self.register_buffer("v_init", mesh.v_pos.detach().float().clone())
        self.register_buffer("t_pos_idx", mesh.t_pos_idx.detach().long().clone())
        self.register_buffer("v_tex", None if mesh.v_tex is None else mesh.v_tex.detach().float().clone())
        self.register_buffer("t_tex_idx", None if mesh.t_tex_idx is None else mesh.t_tex_idx.detach().long().clone())
        self.offset = nn.Parameter(torch.zeros_like(self.v_init))
        self.register_buffer("edges", unique_edges(self.t_pos_idx), persistent=False)  # the topology never changes

    def mesh(self) -> Mesh:
        """Current mesh: ``v_init + offset`` with the stored faces and UVs."""
        return Mesh(self.v_init + self.offset, self.t_pos_idx, self.v_tex, self.t_tex_idx)

    def laplacian(self, t: float, scale: float, floor: float = 0.0) -> torch.Tensor:
        """Relative Laplacian (on ``offset``), weighted ``scale * max(floor, 1 - t)`` at pass-2 progress ``t``
        (``floor = 0``: nvdiffrec's pass 2)."""
        weight = float(scale) * max(float(floor), 1.0 - float(t))
        return weight * laplacian_loss(self.v_init + self.offset, self.t_pos_idx, v_ref=self.v_init, edges=self.edges)

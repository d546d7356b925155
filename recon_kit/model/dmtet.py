"""Pass-1 geometry: tetrahedral grids, marching tets, DMTet (pass 2's mesh: :mod:`recon_kit.model.fixed_mesh`;
mesh clean-up: :mod:`recon_kit.mesh`). :class:`LatticeSDF` is what DMTet shares with
:class:`recon_kit.model.flexicubes.FlexiCubes` (``geometry.method``): the SDF and deformation on the lattice, their
initialisation, the sign-flip regulariser.

Conventions
  * SDF sign follows nvdiffrec: ``sdf > 0`` is INSIDE (occupied); the surface sits where the sign changes.
  * Extracted triangles are counter-clockwise seen from outside (normals point from occupied to empty space).
  * Grid vertices live in the unit cube ``[-0.5, 0.5]^3``; :class:`DMTet` scales them by ``mesh_scale``.

Grid sizes versus nvdiffrec
  nvdiffrec ships Quartet tet grids named by a resolution: its "64" has 37k vertices / 192k tets and its
  "128" ~277k vertices / 1.53M tets. We build our own grid instead: a res^3 cube lattice, each cube split
  into 6 tetrahedra around its main diagonal (Kuhn/Freudenthal split), giving ``(res+1)^3`` vertices and
  ``6 res^3`` tets. So Kuhn 32 (35,937 verts, 196,608 tets) ~ nvdiffrec 64 and Kuhn 64 (274,625 verts,
  1,572,864 tets) ~ nvdiffrec 128. Configs state ``grid_res`` in nvdiffrec's units; :func:`kuhn_res_for`
  maps it (``nvdiffrec_res // 2``) and :func:`nvdiffrec_equivalent` goes the other way.

Deformation bound
  Grid vertices move by at most half a lattice cell: ``v = v0 * mesh_scale + 0.5 * (mesh_scale / res) *
  tanh(deform)``. With ``mesh_scale = 1`` and the resolution mapping above this equals nvdiffrec's
  ``1 / grid_res``; unlike nvdiffrec we scale the bound with ``mesh_scale`` so it stays half a cell.
"""

from __future__ import annotations


import functools
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recon_kit.mesh import Mesh


# Local tet edges (vertex pairs); marching-tets tables below index this list.
TET_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


# Marching-tets triangle table for positively oriented tets (det[v1-v0, v2-v0, v3-v0] > 0). Row = case
# index sum_i (sdf_i > 0) << i; entries are local edge ids (two triangles at most, -1 = none), wound so that
# normals point from occupied to empty corners. Derived from a reference tet; tests/test_geometry.py checks it.
TRI_TABLE: tuple[tuple[int, ...], ...] = (
    (-1, -1, -1, -1, -1, -1),
    (2, 0, 1, -1, -1, -1),
    (3, 0, 4, -1, -1, -1),
    (3, 1, 2, 3, 2, 4),
    (5, 1, 3, -1, -1, -1),
    (2, 0, 3, 2, 3, 5),
    (1, 0, 4, 1, 4, 5),
    (5, 2, 4, -1, -1, -1),
    (4, 2, 5, -1, -1, -1),
    (4, 0, 1, 4, 1, 5),
    (3, 0, 2, 3, 2, 5),
    (3, 1, 5, -1, -1, -1),
    (2, 1, 3, 2, 3, 4),
    (4, 0, 3, -1, -1, -1),
    (1, 0, 2, -1, -1, -1),
    (-1, -1, -1, -1, -1, -1),
)


NUM_TRIANGLES: tuple[int, ...] = (0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0)


class GridSizes(NamedTuple):
    kuhn_res: int
    vertices: int
    tets: int
    nvdiffrec_res: int


def kuhn_res_for(nvdiffrec_res: int) -> int:
    """Kuhn lattice resolution whose grid matches nvdiffrec's ``dmtet_grid`` size (``nvdiffrec_res // 2``).

    nvdiffrec 64 (37k verts, 192k tets) -> Kuhn 32 (36k, 197k); nvdiffrec 128 (277k, 1.53M) -> Kuhn 64 (275k, 1.57M).
    """
    if nvdiffrec_res < 2:
        raise ValueError(f"nvdiffrec grid resolution must be >= 2, got {nvdiffrec_res}")
    return int(nvdiffrec_res) // 2


def nvdiffrec_equivalent(res: int) -> GridSizes:
    """Sizes of the Kuhn grid of resolution ``res`` and the nvdiffrec grid name of similar size (``2 * res``).

    A Kuhn grid has ``(res+1)^3`` vertices and ``6 res^3`` tets; nvdiffrec's "64" has 37k/192k and its "128"
    ~277k/1.53M, so Kuhn 32 ~ nvdiffrec 64 and Kuhn 64 ~ nvdiffrec 128.
    """
    return GridSizes(int(res), (res + 1) ** 3, 6 * res ** 3, 2 * int(res))


def tet_edge_topology(tets: torch.Tensor, num_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique undirected edges [E,2] (sorted pairs) of any tet mesh and each tet's 6 edge ids [M,6].

    Generic (sort-based) path, used for grids not built by :meth:`TetGrid.generate`.
    """
    pairs = tets[:, torch.tensor(TET_EDGES, device=tets.device)]  # [M,6,2]
    lo, hi = pairs.min(-1).values, pairs.max(-1).values
    keys, inverse = torch.unique(lo * num_vertices + hi, return_inverse=True)
    edges = torch.stack([keys // num_vertices, keys % num_vertices], -1)
    return edges, inverse.reshape(-1, 6)


@dataclass(eq=False)
class TetGrid:
    """A tetrahedral grid: ``vertices`` [N,3] float32 in [-0.5,0.5]^3, ``tets`` [M,4] int64 (positively oriented).

    ``unique_edges`` [E,2] and ``tet_edges`` [M,6] (ids into ``unique_edges``, in :data:`TET_EDGES` order) are
    topology-only and computed once; ``res`` is the number of lattice cells per axis.
    """

    vertices: torch.Tensor
    tets: torch.Tensor
    res: int
    unique_edges: torch.Tensor | None = None
    tet_edges: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.unique_edges is None or self.tet_edges is None:
            self.unique_edges, self.tet_edges = tet_edge_topology(self.tets, self.num_vertices)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_tets(self) -> int:
        return int(self.tets.shape[0])

    @property
    def is_lattice(self) -> bool:
        """True for a (res+1)^3 lattice as generate() builds (vertex ``(i*(res+1) + j)*(res+1) + k`` at (i, j, k))."""
        return self.num_vertices == (self.res + 1) ** 3

    def to(self, device) -> "TetGrid":
        return TetGrid(self.vertices.to(device), self.tets.to(device), self.res,
                       self.unique_edges.to(device), self.tet_edges.to(device))

    @staticmethod
    def generate(res: int, device=None) -> "TetGrid":
        """Kuhn/Freudenthal split of a res^3 lattice over [-0.5,0.5]^3: 6 tets per cube around its (0,0,0)-(1,1,1)
        diagonal. Every cube is split the same way, so shared cube faces get the same two triangles (watertight).
        """
        if res < 1:
            raise ValueError(f"res must be >= 1, got {res}")
        n, L = int(res), int(res) + 1
        axis = torch.arange(L, device=device, dtype=torch.float32) / n - 0.5
        gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
        vertices = torch.stack([gx, gy, gz], -1).reshape(-1, 3)

        cells = torch.arange(n, device=device, dtype=torch.int64)
        ci, cj, ck = torch.meshgrid(cells, cells, cells, indexing="ij")
        base = ((ci * L + cj) * L + ck).reshape(-1)  # lattice id of each cube's (0,0,0) corner

        step = (L * L, L, 1)  # id offset of a unit step along x, y, z
        local, lo_off, dir_code = [], [], []
        direction = {}  # id offset of an edge direction in {0,1}^3 \ 0 -> its code 0..6
        for d in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]:
            direction[sum(a * s for a, s in zip(d, step))] = len(direction)
        for perm, parity in (((0, 1, 2), 1), ((1, 2, 0), 1), ((2, 0, 1), 1),
                             ((0, 2, 1), -1), ((2, 1, 0), -1), ((1, 0, 2), -1)):
            chain = [0, step[perm[0]], step[perm[0]] + step[perm[1]], L * L + L + 1]
            if parity < 0:  # odd permutation: swap the last two corners to keep positive orientation
                chain[2], chain[3] = chain[3], chain[2]
            local.append(chain)
            for a, b in TET_EDGES:  # all corners on a Kuhn chain are comparable, so hi - lo is a direction
                lo, hi = min(chain[a], chain[b]), max(chain[a], chain[b])
                lo_off.append(lo)
                dir_code.append(direction[hi - lo])
        local_t = torch.tensor(local, device=device, dtype=torch.int64)  # [6,4]
        tets = (base[:, None, None] + local_t[None]).reshape(-1, 4)

        # Edge key = direction * N + lower endpoint: a dense key space of 7N, compacted with a cumsum (no sort).
        N = L ** 3
        keys = (torch.tensor(dir_code, device=device) * N + torch.tensor(lo_off, device=device))[None] + base[:, None]
        keys = keys.reshape(-1, 6)  # [M,6], cube-major then tet then edge, matching `tets`
        present = torch.zeros(7 * N, dtype=torch.bool, device=device)
        present[keys.reshape(-1)] = True
        dense = torch.cumsum(present, 0) - 1
        tet_edges = dense[keys]
        used = torch.nonzero(present).squeeze(1)
        offsets = torch.tensor(sorted(direction, key=direction.get), device=device, dtype=torch.int64)
        lo_v = used % N
        unique_edges = torch.stack([lo_v, lo_v + offsets[used // N]], -1)
        return TetGrid(vertices, tets, n, unique_edges, tet_edges)


@functools.lru_cache(maxsize=None)
def _case_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:data:`TRI_TABLE` and :data:`NUM_TRIANGLES` on ``device``, made once per device (constants: a copy to the
    GPU on every extract would wait for the GPU)."""
    return (torch.tensor(TRI_TABLE, device=device, dtype=torch.int64),
            torch.tensor(NUM_TRIANGLES, device=device, dtype=torch.int64))


def true_indices(*masks: torch.Tensor) -> list[torch.Tensor]:
    """``torch.nonzero(mask).squeeze(1)`` of each 1-D mask, ascending, with one host read for all of them.

    ``nonzero`` waits for the GPU once per call; here only the counts are read back (one sync), and each mask is
    compacted on the device by a stable partition: entry ``i`` goes to its rank among the True entries, or after
    them to its rank among the False ones, so every slot is written once.
    """
    counts = torch.stack([m.sum() for m in masks]).tolist()
    out = []
    for mask, k in zip(masks, counts):
        n = mask.shape[0]
        order = torch.arange(n, device=mask.device)
        rank = torch.cumsum(mask, 0)                                 # True entries up to and including i
        slot = torch.where(mask, rank - 1, k + order - rank)
        out.append(torch.empty(n, dtype=torch.int64, device=mask.device).scatter_(0, slot, order)[:k])
    return out


def marching_tets(pos: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor,
                  unique_edges: torch.Tensor | None = None,
                  tet_edges: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Extract the ``sdf = 0`` surface of a tet mesh: vertices [K,3] (differentiable in ``pos`` and ``sdf``)
    and faces [F,3] int64, counter-clockwise seen from outside (``sdf > 0`` is inside).

    One vertex per sign-changing edge, at ``(p_a*(-s_b) + p_b*s_a) / (s_a - s_b)``, shared by all tets around
    that edge, so closed surfaces come out watertight. Pass the grid's precomputed ``unique_edges``/``tet_edges``
    to skip the per-call edge sort. Tets must be positively oriented. One host sync (the sizes of the output).
    """
    dev = pos.device
    with torch.no_grad():
        if unique_edges is None or tet_edges is None:
            unique_edges, tet_edges = tet_edge_topology(tets, int(pos.shape[0]))
        occ = sdf > 0
        occ_u8 = occ.to(torch.uint8)
        corners = occ_u8[tets]
        case = (corners[:, 0] | (corners[:, 1] << 1) | (corners[:, 2] << 2) | (corners[:, 3] << 3)).long()
        tri_table, num_triangles = _case_tables(dev)
        inside = (case > 0) & (case < 15)
        crossing = occ[unique_edges[:, 0]] != occ[unique_edges[:, 1]]
        valid, cross, two = true_indices(inside, crossing, inside & (num_triangles[case] == 2))
        vid = torch.cumsum(crossing, 0) - 1            # output vertex id of each grid edge (garbage where none)

        def triangles(tet_ids: torch.Tensor, cols: slice) -> torch.Tensor:
            return vid[tet_edges[tet_ids]].gather(1, tri_table[case[tet_ids], cols])

        faces = torch.cat([triangles(valid, slice(0, 3)), triangles(two, slice(3, 6))], 0)
        cross_edges = unique_edges[cross]

    a, b = cross_edges[:, 0], cross_edges[:, 1]
    s_a, s_b = sdf[a][:, None], sdf[b][:, None]
    verts = (pos[a] * (-s_b) + pos[b] * s_a) / (s_a - s_b)
    return verts, faces


def sdf_reg_weight(t: float, s0: float = 0.2) -> float:
    """nvdiffrec's SDF-regulariser weight: linear decay from ``s0`` to 0.01 over the first 25 % of the pass."""
    return s0 - (s0 - 0.01) * min(1.0, 4.0 * float(t))


class LatticeSDF(nn.Module):
    """What DMTet and FlexiCubes share: per-vertex ``sdf`` [N] (> 0 inside) and ``deform`` [N,3] on grid vertices
    ``v0`` in the unit cube, scaled by ``mesh_scale``, with ``res`` lattice cells per axis and the grid's
    ``unique_edges`` [E,2] for the sign-flip regulariser. Subclasses register ``v0``/``unique_edges`` (via
    :meth:`_setup`) and implement ``extract()``; both parameters keep the names they have in checkpoints."""

    sdf_reg_weight = staticmethod(sdf_reg_weight)

    def _setup(self, vertices: torch.Tensor, unique_edges: torch.Tensor, res: int, mesh_scale: float) -> None:
        self.res = int(res)
        self.mesh_scale = float(mesh_scale)
        self.register_buffer("v0", vertices.float(), persistent=False)
        self.register_buffer("unique_edges", unique_edges.long(), persistent=False)
        self.sdf = nn.Parameter(torch.zeros(vertices.shape[0], device=vertices.device))
        self.deform = nn.Parameter(torch.zeros(vertices.shape[0], 3, device=vertices.device))

    @property
    def cell_size(self) -> float:
        """World-space lattice spacing ``mesh_scale / res``."""
        return self.mesh_scale / self.res

    def aabb(self) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space box holding every (deformed) grid vertex, e.g. to normalise a volumetric material."""
        half = 0.5 * self.mesh_scale + 0.5 * self.cell_size
        lo = torch.full((3,), -half, device=self.v0.device)
        return lo, -lo

    def grid_positions(self) -> torch.Tensor:
        """Deformed world positions [N,3]: ``v0 * mesh_scale + 0.5 * cell_size * tanh(deform)``."""
        return self.v0 * self.mesh_scale + 0.5 * self.cell_size * torch.tanh(self.deform)

    def _reset_shape(self) -> None:
        """Zero what an SDF (re)initialisation discards besides the SDF: the deformation (and subclass weights)."""
        self.deform.zero_()

    @torch.no_grad()
    def init_sdf(self, kind: str = "random", radius: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        """Reset ``sdf`` (and zero ``deform``): "random" = U(0,1) - 0.1 as nvdiffrec; "sphere" = radius - |x|
        in world units (default radius a quarter of ``mesh_scale``)."""
        self._reset_shape()
        if kind == "random":
            u = torch.rand(self.sdf.shape, generator=generator, device=generator.device if generator else "cpu")
            self.sdf.copy_(u - 0.1)
        elif kind == "sphere":
            r = 0.25 * self.mesh_scale if radius is None else float(radius)
            self.sdf.copy_(r - (self.v0 * self.mesh_scale).norm(dim=-1))
        else:
            raise ValueError(f"unknown sdf init {kind!r}; use 'random' or 'sphere'")

    @torch.no_grad()
    def init_sdf_from_occupancy(self, occ_fn: Callable[[torch.Tensor], torch.Tensor], threshold: float = 0.5,
                                truncation: float | None = None) -> None:
        """Set ``sdf`` to the signed distance (in grid cells, > 0 inside) of ``occ_fn(points) >= threshold``.

        Only the zero set matters to the extraction; cell units give values of order 1, like nvdiffrec's
        U(0,1) - 0.1 init, so its learning rate (0.03) moves the surface by a fraction of a cell per step
        (world units on a fine grid made every step flip signs and spawn floaters).

        ``occ_fn`` maps world points [N,3] to occupancy in [0,1] (e.g. the visual hull). It is sampled at the
        undeformed lattice, then a Euclidean distance transform on the (res+1)^3 volume gives a smooth signed
        value with the surface half-way between inside and outside samples. ``truncation`` (in cells) clamps it.
        Also zeroes ``deform``.
        """
        from scipy.ndimage import distance_transform_edt

        if self.v0.shape[0] != (self.res + 1) ** 3:
            raise ValueError("init_sdf_from_occupancy needs a lattice grid (TetGrid.generate, cube_lattice)")
        self._reset_shape()
        pts = self.v0 * self.mesh_scale
        occ = torch.as_tensor(occ_fn(pts)).reshape(-1).float()
        if occ.shape[0] != pts.shape[0]:
            raise ValueError(f"occ_fn returned {occ.shape[0]} values for {pts.shape[0]} points")
        inside = (occ >= threshold).cpu().numpy()
        if inside.all() or not inside.any():
            warnings.warn("occupancy is constant over the grid; the extracted surface will be empty")
            self.sdf.fill_(1.0 if inside.all() else -1.0)
            return
        L = self.res + 1
        vol = inside.reshape(L, L, L)
        d_in = distance_transform_edt(vol)  # inside samples: distance to the nearest outside sample
        d_out = distance_transform_edt(~vol)
        signed = np.where(vol, d_in - 0.5, -(d_out - 0.5))
        if truncation is not None:
            signed = np.clip(signed, -truncation, truncation)
        self.sdf.copy_(torch.from_numpy(signed.reshape(-1)).to(self.sdf))

    def sdf_reg_loss(self) -> torch.Tensor:
        """nvdiffrec's sign-flip regulariser: over grid edges whose SDF signs differ,
        mean of BCEWithLogits(s_i, H(s_j)) + BCEWithLogits(s_j, H(s_i)). Discourages spurious floaters.
        Taken as a weighted mean over all grid edges (weight 1 where the signs differ), so its shapes do not
        depend on the data: no host synchronisation (docs/host_syncs.md); 0 when no sign changes."""
        s_i, s_j = self.sdf[self.unique_edges[:, 0]], self.sdf[self.unique_edges[:, 1]]
        with torch.no_grad():
            h_i, h_j = (s_i > 0).float(), (s_j > 0).float()
            w = (h_i != h_j).float()
        bce = (F.binary_cross_entropy_with_logits(s_i, h_j, reduction="none")
               + F.binary_cross_entropy_with_logits(s_j, h_i, reduction="none"))
        return (bce * w).sum() / w.sum().clamp_min(1.0)

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Method-specific regularisers, weighted, by their history names (none for DMTet)."""
        return {}


class DMTet(LatticeSDF):
    """Deformable marching tets (pass-1 geometry): per-vertex ``sdf`` [N] and ``deform`` [N,3] on a tet grid.

    ``grid`` is a :class:`TetGrid` or a Kuhn resolution (map nvdiffrec's ``dmtet_grid`` with :func:`kuhn_res_for`).
    The grid spans ``[-mesh_scale/2, mesh_scale/2]^3``; vertices move at most half a cell (module docstring).
    Topology buffers are not saved in the state dict (regenerated from ``res``).
    """

    def __init__(self, grid: TetGrid | int, mesh_scale: float = 2.1, init: str = "random",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(grid, int):
            grid = TetGrid.generate(grid)
        self._setup(grid.vertices, grid.unique_edges, grid.res, mesh_scale)
        self.register_buffer("tets", grid.tets.long(), persistent=False)
        self.register_buffer("tet_edges", grid.tet_edges.long(), persistent=False)
        self.init_sdf(init, generator=generator)

    def extract(self) -> Mesh:
        """Marching-tets mesh of the current SDF and deformation (no UVs), differentiable in both."""
        verts, faces = marching_tets(self.grid_positions(), self.sdf, self.tets, self.unique_edges, self.tet_edges)
        return Mesh(verts, faces)

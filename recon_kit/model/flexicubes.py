"""FlexiCubes pass-1 geometry (``geometry.method: flexicubes``): a differentiable dual marching cubes.

Follows "Flexible Isosurface Extraction for Gradient-Based Mesh Optimization" (Shen et al., SIGGRAPH 2023);
written for the kit from the paper, with Kaolin's Apache-2.0 FlexiCubes read as a reference.

The grid
  A lattice of ``res^3`` cubes over ``[-0.5, 0.5]^3`` scaled by ``mesh_scale``: the same ``(res+1)^3`` vertices,
  ``sdf`` (> 0 inside), ``deform`` (at most half a cell) and vertex numbering as :class:`~recon_kit.model.dmtet.DMTet`'s
  Kuhn grid, so ``geometry.grid_res`` maps the same way (``res = grid_res // 2``: nvdiffrec 128 -> 64^3 cubes,
  275k vertices, like DMTet's grid). Each cube also learns 21 weights (paper §4): ``beta`` (12, one per edge),
  ``alpha`` (8, one per corner) and ``gamma`` (1), stored raw in ``weights`` [res^3, 21] and mapped to
  ``1 + 0.99 tanh(.)`` (beta, alpha) and ``0.005 + 0.99 sigmoid(.)`` (gamma), all zero at the start.

The surface
  * In a cube whose corners change sign, each sign-changing edge ``(a, b)`` has a crossing where the
    alpha-weighted SDF vanishes: ``u = (p_b a_a s_a - p_a a_b s_b) / (a_a s_a - a_b s_b)``.
  * The crossed edges of a cube fall into groups, one per surface patch (the dual-marching-cubes table); each
    group gives one dual vertex, the beta-weighted mean of its crossings.
  * Each sign-changing grid edge inside the grid is shared by 4 cubes; their 4 dual vertices make a quad, wound
    counter-clockwise seen from outside (normals point from ``sdf > 0`` to ``sdf <= 0``, as DMTet).
  * Quads are split into triangles by gamma. With gradients on (training) each quad becomes 4 triangles around
    a centre vertex, the mean of the two diagonals' midpoints weighted by ``gamma_0 gamma_2`` and
    ``gamma_1 gamma_3`` (the paper's differentiable split); without gradients (previews, the bake) it becomes 2
    triangles along the diagonal with the larger gamma product.

The case table
  Built at import from first principles (:func:`dual_groups`), not copied: on each cube face the crossings are
  paired into contour segments; a face with 4 crossings (diagonal corners alike) connects its two inside
  corners (the segments cut off the outside corners), so thin solid parts touching across a face stay one piece.
  The groups are the cycles these segments form around the cube. Both cubes of a face see the same pairing,
  so a closed SDF inside the grid gives a closed, consistently wound mesh. In 36 cases one group passes through
  both segments of an ambiguous face (:func:`problem_face`); when the cubes on both sides of that face are such
  cases, the edge between their dual vertices would join 4 quads, so both cubes use the face's other pairing
  instead, which splits that group in two (the paper's C16/C19 fix, derived here the same way as the table).

Regularisers
  ``sdf_reg_loss`` is DMTet's sign-flip loss over the lattice edges. :meth:`FlexiCubes.extra_losses` adds the
  paper's L_dev (eq. 8: mean absolute deviation of the distances from each dual vertex to its group's plain
  SDF crossings, in units of ``mesh_scale``) with weight 0.5 and ``|beta, alpha|`` with weight 0.1, as the
  reference's optimisation example.
"""

from __future__ import annotations

import torch
from torch import nn

from recon_kit.mesh import Mesh
from recon_kit.model.dmtet import LatticeSDF

__all__ = ["CUBE_EDGES", "FlexiCubes", "cube_lattice", "dual_groups", "problem_face"]

DEV_WEIGHT = 0.5      # weight of L_dev (its mean over dual vertices)
WEIGHT_REG = 0.1      # weight of the mean |beta, alpha| (raw, before tanh)


def _corner(dx: int, dy: int, dz: int) -> int:
    """Local corner id of the offset (dx, dy, dz): bits x, y, z = 4, 2, 1 (the lattice's vertex order)."""
    return 4 * dx + 2 * dy + dz


def _bit(c: int, axis: int) -> int:
    return (c >> (2 - axis)) & 1


def _cube_edges() -> tuple[tuple[int, int, int], ...]:
    """The 12 cube edges as (lower corner, upper corner, axis), ordered by axis then lower corner."""
    out = []
    for axis in range(3):
        for c in range(8):
            if not _bit(c, axis):
                out.append((c, c | (4 >> axis), axis))
    return tuple(out)


CUBE_EDGES = _cube_edges()
_EDGE_ID = {(a, b): i for i, (a, b, _) in enumerate(CUBE_EDGES)} | {(b, a): i for i, (a, b, _) in enumerate(CUBE_EDGES)}


def _slot(edge: int) -> int:
    """Place 0..3 of the cube around its edge, counter-clockwise about the edge's axis (right-hand rule).

    With (b, c) the other axes in cyclic order, the cube lies on the +b side of the edge when the edge sits at
    its lower b face (bit 0), and the order around +axis is (-b,-c), (+b,-c), (+b,+c), (-b,+c).
    """
    a, _, axis = CUBE_EDGES[edge]
    db, dc = _bit(a, (axis + 1) % 3), _bit(a, (axis + 2) % 3)
    return {(1, 1): 0, (0, 1): 1, (0, 0): 2, (1, 0): 3}[(db, dc)]


def _faces() -> list[list[int]]:
    """The 6 cube faces as their 4 corners in cyclic order."""
    faces = []
    for axis in range(3):
        b, c = (axis + 1) % 3, (axis + 2) % 3
        for side in (0, 1):
            ring = []
            for ob, oc in ((0, 0), (1, 0), (1, 1), (0, 1)):
                off = [0, 0, 0]
                off[axis], off[b], off[c] = side, ob, oc
                ring.append(_corner(*off))
            faces.append(ring)
    return faces


def _face_edges(ring: list[int]) -> list[int]:
    return [_EDGE_ID[(ring[k], ring[(k + 1) % 4])] for k in range(4)]  # edge k joins corners k and k+1


def dual_groups(case: int, flip_face: int = -1) -> list[list[int]]:
    """Groups of crossed cube edges (ids into :data:`CUBE_EDGES`) that share one dual vertex, for the corner
    occupancy ``case`` (bit ``c`` set: corner ``c`` is inside). Ambiguous faces connect their inside corners,
    except face ``flip_face`` (index into the 6 faces, axis-major, lower side first), which separates them."""
    inside = [(case >> c) & 1 for c in range(8)]
    crossed = [i for i, (a, b, _) in enumerate(CUBE_EDGES) if inside[a] != inside[b]]
    parent = {e: e for e in crossed}

    def find(e: int) -> int:
        while parent[e] != e:
            e = parent[e]
        return e

    for f, ring in enumerate(_faces()):
        edges = _face_edges(ring)
        hit = [k for k in range(4) if edges[k] in parent]
        if len(hit) == 2:
            pairs = [(edges[hit[0]], edges[hit[1]])]
        elif len(hit) == 4:  # cut off each outside corner k (edges k-1 and k), or each inside one on flip_face
            cut = 1 if f == flip_face else 0
            pairs = [(edges[k - 1], edges[k]) for k in range(4) if inside[ring[k]] == cut]
        else:
            pairs = []
        for e1, e2 in pairs:
            parent[find(e1)] = find(e2)
    groups: dict[int, list[int]] = {}
    for e in crossed:
        groups.setdefault(find(e), []).append(e)
    return sorted(groups.values())


def problem_face(case: int) -> int:
    """The ambiguous face whose two contour segments both belong to one group of ``case`` (-1: none). When the
    cubes on both sides of such a face have it, the edge between their dual vertices would join 4 quads; both
    cubes then take that face's other pairing (``flip_face``), which splits the group (paper, C16/C19)."""
    group_of = {e: g for g, es in enumerate(dual_groups(case)) for e in es}
    for f, ring in enumerate(_faces()):
        edges = _face_edges(ring)
        if all(e in group_of for e in edges) and len({group_of[e] for e in edges}) == 1:
            return f
    return -1


def _tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[256,2,12] group index of each edge (-1: not crossed) and [256,2] number of groups, without and with the
    problem face flipped, and [256] the problem face (-1: none)."""
    group = torch.full((256, 2, 12), -1, dtype=torch.int64)
    count = torch.zeros(256, 2, dtype=torch.int64)
    problem = torch.tensor([problem_face(case) for case in range(256)])
    for case in range(256):
        for flip in (0, 1):
            gs = dual_groups(case, int(problem[case]) if flip else -1)
            count[case, flip] = len(gs)
            for g, edges in enumerate(gs):
                group[case, flip, edges] = g
    return group, count, problem


EDGE_GROUP, NUM_GROUPS, PROBLEM_FACE = _tables()


def cube_lattice(res: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vertices [(res+1)^3, 3] in [-0.5, 0.5]^3 (id ``(i*(res+1) + j)*(res+1) + k``, as TetGrid.generate), cubes
    [res^3, 8] (corner ``4dx + 2dy + dz``) and the lattice's axis-aligned edges [3 res (res+1)^2, 2]."""
    if res < 1:
        raise ValueError(f"res must be >= 1, got {res}")
    n, L = int(res), int(res) + 1
    axis = torch.arange(L, device=device, dtype=torch.float32) / n - 0.5
    vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    ids = torch.arange(L ** 3, device=device).reshape(L, L, L)
    offsets = torch.tensor([dx * L * L + dy * L + dz for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)],
                           device=device)
    cubes = ids[:n, :n, :n].reshape(-1, 1) + offsets
    lows = (ids[:n], ids[:, :n], ids[:, :, :n])
    edges = torch.cat([torch.stack([lo.reshape(-1), lo.reshape(-1) + step], -1)
                       for lo, step in zip(lows, (L * L, L, 1))])
    return vertices, cubes, edges


class FlexiCubes(LatticeSDF):
    """FlexiCubes (pass-1 geometry), interchangeable with :class:`~recon_kit.model.dmtet.DMTet`: ``res`` cubes per
    axis (map ``geometry.grid_res`` with :func:`~recon_kit.model.dmtet.kuhn_res_for`), ``sdf``, ``deform`` and
    the per-cube ``weights`` [res^3, 21] (beta 0:12, alpha 12:20, gamma 20) are the parameters; topology buffers
    are not saved in the state dict (regenerated from ``res``)."""

    def __init__(self, res: int, mesh_scale: float = 2.1, init: str = "random",
                 generator: torch.Generator | None = None, device=None) -> None:
        super().__init__()
        vertices, cubes, edges = cube_lattice(int(res), device=device)
        self._setup(vertices, edges, res, mesh_scale)
        self.register_buffer("cubes", cubes, persistent=False)
        self.register_buffer("edge_group", EDGE_GROUP.to(device), persistent=False)
        self.register_buffer("num_groups", NUM_GROUPS.to(device), persistent=False)
        self.register_buffer("problem_face", PROBLEM_FACE.to(device), persistent=False)
        ends = torch.tensor([(a, b) for a, b, _ in CUBE_EDGES], device=device)
        self.register_buffer("edge_ends", ends, persistent=False)
        self.register_buffer("edge_axis", torch.tensor([ax for *_, ax in CUBE_EDGES], device=device), persistent=False)
        self.register_buffer("edge_slot", torch.tensor([_slot(e) for e in range(12)], device=device), persistent=False)
        self.weights = nn.Parameter(torch.zeros(cubes.shape[0], 21, device=vertices.device))
        self._last_dev: torch.Tensor | None = None
        self.init_sdf(init, generator=generator)

    def _reset_shape(self) -> None:
        super()._reset_shape()
        self.weights.zero_()

    def _flips(self, case: torch.Tensor) -> torch.Tensor:
        """[res^3] 1 where a cube and its neighbour across its problem face both have that face (see
        :func:`problem_face`), else 0."""
        face = self.problem_face[case]
        cube = torch.nonzero(face >= 0).squeeze(1)
        face = face[cube]
        axis, side = face // 2, face % 2
        n = self.res
        ijk = torch.stack([cube // (n * n), cube // n % n, cube % n], 1)
        ijk = ijk.scatter_add(1, axis[:, None], (2 * side - 1)[:, None])      # the neighbour across the face
        inside = ((ijk >= 0) & (ijk < n)).all(1)
        cube, face, ijk = cube[inside], face[inside], ijk[inside]
        other = (ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]
        both = self.problem_face[case[other]] == (face ^ 1)                     # the same face, seen from there
        flip = torch.zeros_like(case)
        flip[cube[both]] = 1
        return flip

    def _dual_vertices(self, pos: torch.Tensor):
        """Dual vertices [D,3], each one's gamma [D], the (cube, edge) crossings' global edge keys, slots and dual
        ids, and L_dev (per dual vertex). Empty tensors when no cube changes sign."""
        sdf, dev = self.sdf, pos.device
        with torch.no_grad():
            occ = sdf > 0
            case = (occ[self.cubes].long() << torch.arange(8, device=dev)).sum(1)
            flip = self._flips(case)
            active = torch.nonzero((case > 0) & (case < 255)).squeeze(1)
            case, flip = case[active], flip[active]
            groups = self.edge_group[case, flip]                # [A,12]
            n_groups = self.num_groups[case, flip]
            first = torch.cumsum(n_groups, 0) - n_groups       # first dual id of each active cube
            ci, le = torch.nonzero(groups >= 0).unbind(1)       # crossings: active cube, local edge
            dual = first[ci] + groups[ci, le]
            corners = self.cubes[active[ci]]
            ca, cb = self.edge_ends[le, 0], self.edge_ends[le, 1]
            a, b = corners.gather(1, ca[:, None])[:, 0], corners.gather(1, cb[:, None])[:, 0]
            key = self.edge_axis[le] * sdf.shape[0] + a        # the grid edge: axis and lower end
            n_dual = int(n_groups.sum())
        w = self.weights.index_select(0, active)
        alpha = 1 + 0.99 * torch.tanh(w[:, 12:20])
        beta = 1 + 0.99 * torch.tanh(w[:, :12])
        gamma = 0.005 + 0.99 * torch.sigmoid(w[:, 20])
        s_a, s_b = sdf.index_select(0, a)[:, None], sdf.index_select(0, b)[:, None]
        p_a, p_b = pos.index_select(0, a), pos.index_select(0, b)
        alpha = alpha.reshape(-1)
        w_a = s_a * alpha.index_select(0, ci * 8 + ca)[:, None]
        w_b = s_b * alpha.index_select(0, ci * 8 + cb)[:, None]
        u = (p_b * w_a - p_a * w_b) / (w_a - w_b)
        be = beta.reshape(-1).index_select(0, ci * 12 + le)[:, None]
        num = torch.zeros(n_dual, 3, device=dev, dtype=pos.dtype).index_add(0, dual, u * be)
        den = torch.zeros(n_dual, 1, device=dev, dtype=pos.dtype).index_add(0, dual, be)
        vd = num / den
        # L_dev: spread of the distances from each dual vertex to its group's plain (unweighted) crossings
        dist = ((p_b * s_a - p_a * s_b) / (s_a - s_b) - vd.index_select(0, dual)).norm(dim=-1)
        count = torch.zeros(n_dual, device=dev).index_add(0, dual, torch.ones_like(dist))
        mean = torch.zeros(n_dual, device=dev, dtype=dist.dtype).index_add(0, dual, dist) / count
        l_dev = (dist - mean.index_select(0, dual)).abs()
        gamma_d = torch.repeat_interleave(gamma, n_groups)
        return vd, gamma_d, key, self.edge_slot[le], dual, l_dev

    def extract(self, training: bool | None = None) -> Mesh:
        """FlexiCubes mesh of the current SDF, deformation and weights (no UVs), differentiable in all three.

        ``training`` (default: whether gradients are on) picks the 4-triangle split; otherwise 2 triangles per
        quad along gamma's diagonal (module docstring)."""
        training = torch.is_grad_enabled() if training is None else training
        pos = self.grid_positions()
        vd, gamma, key, slot, dual, l_dev = self._dual_vertices(pos)
        if training:
            self._last_dev = l_dev
        with torch.no_grad():
            keys, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
            quads = torch.full((keys.shape[0], 4), -1, dtype=torch.int64, device=pos.device)
            quads[inverse, slot] = dual
            inner = counts == 4                                # edges on the grid's border have < 4 cubes
            quads, lower = quads[inner], keys[inner] % self.sdf.shape[0]
            # slots run counter-clockwise about +axis: right when the lower end is inside (normal along +axis)
            outside_low = ~(self.sdf[lower] > 0)
            quads[outside_low] = quads[outside_low].flip(1)
        if quads.shape[0] == 0:
            return Mesh(pos.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64, device=pos.device))
        g = gamma.index_select(0, quads.reshape(-1)).reshape(-1, 4)
        g02, g13 = g[:, 0] * g[:, 2], g[:, 1] * g[:, 3]
        q0, q1, q2, q3 = quads.unbind(1)
        if training:
            v = vd.index_select(0, quads.reshape(-1)).reshape(-1, 4, 3)
            mid = (((v[:, 0] + v[:, 2]) * g02[:, None] + (v[:, 1] + v[:, 3]) * g13[:, None])
                   / (2 * (g02 + g13))[:, None])
            c = torch.arange(quads.shape[0], device=pos.device) + vd.shape[0]
            faces = torch.cat([torch.stack([q0, q1, c], 1), torch.stack([q1, q2, c], 1),
                               torch.stack([q2, q3, c], 1), torch.stack([q3, q0, c], 1)])
            verts = torch.cat([vd, mid])
        else:
            along02 = (g02 > g13)[:, None]
            faces = torch.cat([torch.where(along02, torch.stack([q0, q1, q2], 1), torch.stack([q1, q2, q3], 1)),
                               torch.where(along02, torch.stack([q0, q2, q3], 1), torch.stack([q1, q3, q0], 1))])
            verts = vd
        with torch.no_grad():  # drop dual vertices of border cubes that no quad uses
            used = torch.zeros(verts.shape[0], dtype=torch.bool, device=pos.device)
            used[faces.reshape(-1)] = True
            remap = torch.cumsum(used, 0) - 1
        return Mesh(verts.index_select(0, torch.nonzero(used).squeeze(1)), remap[faces])

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """The paper's L_dev (of the last extract() with gradients; in units of ``mesh_scale``) and the weight
        magnitude, weighted as the reference's example (module docstring)."""
        if self._last_dev is None:
            self.extract(training=True)
        dev = self._last_dev
        l_dev = dev.mean() / self.mesh_scale if dev.numel() else self.sdf.sum() * 0.0
        return {"flexi_dev": DEV_WEIGHT * l_dev, "flexi_weights": WEIGHT_REG * self.weights[:, :20].abs().mean()}

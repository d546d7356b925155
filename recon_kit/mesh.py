"""Triangle meshes as plain tensors, and the per-vertex quantities rendering needs.

A :class:`Mesh` holds positions ``v_pos`` [V,3] and triangles ``t_pos_idx`` [F,3] (int64, counter-clockwise
seen from outside), and optionally UVs with their own index stream (``v_tex`` [T,2], ``t_tex_idx`` [F,3]) as
OBJ files and xatlas produce. UVs follow the texture-tensor convention of nvdiffrast and glTF: (0, 0) is the
first texel (top-left of the image, row 0). OBJ files store ``1 - v``; :func:`load_mesh` and the OBJ writer flip it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import warnings


@dataclass
class Mesh:
    v_pos: torch.Tensor
    t_pos_idx: torch.Tensor
    v_tex: torch.Tensor | None = None
    t_tex_idx: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.v_pos.ndim != 2 or self.v_pos.shape[-1] != 3:
            raise ValueError(f"v_pos must be [V,3], got {tuple(self.v_pos.shape)}")
        if self.t_pos_idx.ndim != 2 or self.t_pos_idx.shape[-1] != 3:
            raise ValueError(f"t_pos_idx must be [F,3], got {tuple(self.t_pos_idx.shape)}")

    @property
    def device(self) -> torch.device:
        return self.v_pos.device

    @property
    def has_uv(self) -> bool:
        return self.v_tex is not None and self.t_tex_idx is not None

    def to(self, device) -> "Mesh":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Mesh(mv(self.v_pos), mv(self.t_pos_idx), mv(self.v_tex), mv(self.t_tex_idx))

    def with_positions(self, v_pos: torch.Tensor) -> "Mesh":
        return replace(self, v_pos=v_pos)

    def aabb(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.v_pos.min(0).values, self.v_pos.max(0).values

    @property
    def num_vertices(self) -> int:
        return int(self.v_pos.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.t_pos_idx.shape[0])


def face_normals(v_pos: torch.Tensor, tri: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Per-face normals [F,3] (area-weighted when ``normalize`` is False)."""
    v0, v1, v2 = v_pos[tri[:, 0]], v_pos[tri[:, 1]], v_pos[tri[:, 2]]
    n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    return F.normalize(n, dim=-1) if normalize else n


def _unit_axis(like: torch.Tensor, axis: int) -> torch.Tensor:
    """A tensor shaped like ``like`` [...,3] holding the unit vector of ``axis``, made on its device (no
    host-to-device copy, which would wait for the GPU inside a training step)."""
    out = torch.zeros_like(like)
    out[..., axis] = 1.0
    return out


def vertex_normals(v_pos: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals [V,3]; isolated or degenerate vertices get +z."""
    fn = face_normals(v_pos, tri, normalize=False)
    vn = torch.zeros_like(v_pos).index_add_(0, tri.reshape(-1), fn.repeat_interleave(3, 0))
    length = vn.norm(dim=-1, keepdim=True)
    fallback = _unit_axis(vn, 2)
    return torch.where(length > 1e-20, vn / length.clamp_min(1e-20), fallback)


def vertex_tangents(v_pos: torch.Tensor, tri: torch.Tensor, v_tex: torch.Tensor, t_tex_idx: torch.Tensor,
                    v_nrm: torch.Tensor) -> torch.Tensor:
    """Per-position-vertex tangents [V,3] from UV gradients, orthogonalised against ``v_nrm``.

    The tangent points along +u. Accumulated per position vertex (not per UV vertex), so seams share a frame.
    """
    p0, p1, p2 = v_pos[tri[:, 0]], v_pos[tri[:, 1]], v_pos[tri[:, 2]]
    t0, t1, t2 = v_tex[t_tex_idx[:, 0]], v_tex[t_tex_idx[:, 1]], v_tex[t_tex_idx[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    d1, d2 = t1 - t0, t2 - t0
    denom = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    tang = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / denom[:, None]
    acc = torch.zeros_like(v_pos).index_add_(0, tri.reshape(-1), tang.repeat_interleave(3, 0))
    acc = acc - (acc * v_nrm).sum(-1, keepdim=True) * v_nrm
    fallback = torch.linalg.cross(v_nrm, _unit_axis(v_nrm, 1))
    fallback = torch.where(fallback.norm(dim=-1, keepdim=True) > 1e-6, fallback, _unit_axis(v_nrm, 0))
    acc = torch.where(acc.norm(dim=-1, keepdim=True) > 1e-12, acc, fallback)
    return F.normalize(acc, dim=-1)


def unique_edges(tri: torch.Tensor) -> torch.Tensor:
    """Undirected unique edges [E,2] (sorted pairs) of a triangle list."""
    e = torch.cat([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]], 0)
    return torch.unique(torch.sort(e, dim=1).values, dim=0)


def laplacian_loss(v_pos: torch.Tensor, tri: torch.Tensor, v_ref: torch.Tensor | None = None,
                   edges: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform ("umbrella") Laplacian energy, mean over vertices of |mean(neighbours) - v|^2.

    With ``v_ref`` the energy is taken on the displacement ``v_pos - v_ref`` (nvdiffrec's "relative" mode),
    which keeps detail already present while damping new high-frequency noise. ``edges``: ``unique_edges(tri)``
    when the caller keeps it (a fixed topology; the sort behind it waits for the GPU).
    """
    x = v_pos if v_ref is None else v_pos - v_ref
    edges = unique_edges(tri) if edges is None else edges
    i, j = torch.cat([edges[:, 0], edges[:, 1]]), torch.cat([edges[:, 1], edges[:, 0]])
    deg = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype).index_add_(0, i, torch.ones_like(i, dtype=x.dtype))
    nsum = torch.zeros_like(x).index_add_(0, i, x[j])
    delta = nsum / deg.clamp_min(1)[:, None] - x
    return (delta ** 2).sum(-1).mean()


def normalize_to_unit(v_pos: torch.Tensor, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Centre the bounding box at the origin and scale so the largest half-extent is ``radius``.

    Returns the new positions, the centre that was subtracted and the scale that was applied.
    """
    lo, hi = v_pos.min(0).values, v_pos.max(0).values
    centre = 0.5 * (lo + hi)
    scale = radius / float((0.5 * (hi - lo)).max())
    return (v_pos - centre) * scale, centre, scale


def load_mesh(path: str | Path, device=None) -> tuple[Mesh, np.ndarray | None]:
    """Load an OBJ/GLB/PLY with trimesh; returns the mesh and its base-colour image (sRGB uint8) if any.

    Multi-part scenes are concatenated. UVs are kept per vertex (trimesh splits seams), so ``t_tex_idx``
    equals ``t_pos_idx``.
    """
    import trimesh

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mesh file {path} does not exist")
    loaded = trimesh.load(str(path), process=False)
    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.dump()) if hasattr(loaded, "dump") else list(loaded.geometry.values())
        if not geoms:
            raise ValueError(f"{path}: the file holds no triangle geometry")
        tm = geoms[0] if len(geoms) == 1 else trimesh.util.concatenate(geoms)
    else:
        tm = loaded
    v = torch.tensor(np.asarray(tm.vertices), dtype=torch.float32, device=device)
    f = torch.tensor(np.asarray(tm.faces), dtype=torch.int64, device=device)
    uv, image = None, None
    visual = getattr(tm, "visual", None)
    if visual is not None and getattr(visual, "uv", None) is not None and len(visual.uv) == len(tm.vertices):
        uv_obj = np.asarray(visual.uv, dtype=np.float32)  # trimesh reports OBJ-style v (0 at the bottom)
        uv = torch.tensor(np.stack([uv_obj[:, 0], 1.0 - uv_obj[:, 1]], -1), device=device)
        mat = getattr(visual, "material", None)
        img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        if img is not None:
            image = np.asarray(img.convert("RGB"))
    mesh = Mesh(v, f, uv, f.clone() if uv is not None else None)
    return mesh, image


def _reindex(idx: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Used-entry mask [count] and ``idx`` renumbered to the used entries only (a cumsum, no sort)."""
    used = torch.zeros(count, dtype=torch.bool, device=idx.device)
    used[idx.reshape(-1)] = True
    return used, (torch.cumsum(used, 0) - 1)[idx]


def _compact(mesh: Mesh, face_keep: torch.Tensor | None = None) -> Mesh:
    """Keep the selected faces and drop unreferenced vertices (and UVs)."""
    f = mesh.t_pos_idx if face_keep is None else mesh.t_pos_idx[face_keep]
    used, f_new = _reindex(f, mesh.num_vertices)
    v_tex, t_tex_idx = mesh.v_tex, mesh.t_tex_idx
    if mesh.has_uv:
        ft = t_tex_idx if face_keep is None else t_tex_idx[face_keep]
        used_t, t_tex_idx = _reindex(ft, v_tex.shape[0])
        v_tex = v_tex[used_t]
    return Mesh(mesh.v_pos[used], f_new, v_tex, t_tex_idx)


def keep_faces(mesh: Mesh, keep: torch.Tensor, fill: int = 0) -> Mesh:
    """The faces marked in ``keep`` ``[F]`` (bool) without the vertices (and UVs) no kept face uses.

    ``fill`` rounds first add every dropped face with at least two kept edge neighbours: pinholes and notches
    of one or two faces in a kept surface close, while a dropped region with a smooth border stays dropped."""
    keep = keep.to(mesh.device, torch.bool)
    if fill > 0:
        tri = mesh.t_pos_idx
        e = torch.sort(tri[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), dim=1).values
        _, edge_id = torch.unique(e, dim=0, return_inverse=True)          # [3F]: each face side's edge
        for _ in range(fill):
            kept_sides = keep.repeat_interleave(3).to(torch.int32)
            per_edge = torch.zeros(int(edge_id.max()) + 1, dtype=torch.int32, device=mesh.device)
            per_edge.index_add_(0, edge_id, kept_sides)
            neighbours = (per_edge[edge_id] - kept_sides).reshape(-1, 3).sum(1)   # kept faces across each side
            keep = keep | (neighbours >= 2)
    return _compact(mesh, keep)


def remove_small_components(mesh: Mesh, min_faces_fraction: float = 0.01) -> Mesh:
    """Drop vertex-connected components with fewer than ``min_faces_fraction`` of all faces (floaters).

    The largest component is always kept.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if mesh.num_faces == 0:
        return mesh
    f = mesh.t_pos_idx.cpu().numpy()
    i = np.concatenate([f[:, 0], f[:, 1]])
    j = np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(i.shape[0], dtype=np.int8), (i, j)), shape=(mesh.num_vertices,) * 2)
    _, labels = connected_components(graph, directed=False)
    face_label = labels[f[:, 0]]
    counts = np.bincount(face_label)
    keep = (counts[face_label] >= min_faces_fraction * f.shape[0]) | (face_label == counts.argmax())
    return _compact(mesh, torch.from_numpy(keep).to(mesh.device))


def merge_close_vertices(mesh: Mesh, tol: float | None = None) -> Mesh:
    """Weld vertices closer than ``tol`` (default 1e-6 x bbox diagonal), then drop degenerate and duplicate faces.

    Marching tets emits coincident vertices where the SDF is exactly zero at a grid vertex; UV unwrapping
    wants them welded. UV indices are kept as they are (only filtered with their faces).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if mesh.num_faces == 0:
        return mesh
    v = mesh.v_pos.detach().cpu().double().numpy()
    if tol is None:
        tol = 1e-6 * float(np.linalg.norm(v.max(0) - v.min(0))) or 1e-12
    pairs = cKDTree(v).query_pairs(tol, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(len(v),) * 2)
    _, labels = connected_components(graph, directed=False)
    _, rep = np.unique(labels, return_index=True)  # first vertex of each cluster
    f = labels[mesh.t_pos_idx.cpu().numpy()]
    nondegenerate = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    first = np.zeros(len(f), dtype=bool)
    first[np.unique(np.sort(f, axis=1), axis=0, return_index=True)[1]] = True
    keep = torch.from_numpy(nondegenerate & first).to(mesh.device)
    welded = Mesh(mesh.v_pos[torch.from_numpy(rep).to(mesh.device)], torch.from_numpy(f).to(mesh.device),
                  mesh.v_tex, mesh.t_tex_idx)
    return _compact(welded, keep)


def simplify(mesh: Mesh, target_faces: int, aggression: int | None = None) -> Mesh:
    """Quadric-error decimation to about ``target_faces`` faces (the ``fast-simplification`` package, which
    trimesh's ``simplify_quadric_decimation`` wraps). UVs are dropped. Without the package, or when the mesh
    is already small enough, the mesh is returned unchanged (with a warning in the first case)."""
    if mesh.num_faces <= target_faces:
        return mesh
    try:
        from fast_simplification import simplify as fs_simplify
    except ImportError:
        warnings.warn("fast-simplification is not installed; simplify() returns the mesh unchanged")
        return mesh
    kwargs = {} if aggression is None else {"agg": int(aggression)}
    v, f = fs_simplify(mesh.v_pos.detach().cpu().numpy().astype(np.float32),
                       mesh.t_pos_idx.cpu().numpy().astype(np.int64), target_count=int(target_faces), **kwargs)
    out = Mesh(torch.as_tensor(np.asarray(v), dtype=torch.float32, device=mesh.device),
               torch.as_tensor(np.asarray(f), dtype=torch.int64, device=mesh.device))
    return _compact(out)


def clean_mesh(mesh: Mesh, min_faces_fraction: float = 0.01, target_faces: int | None = None) -> Mesh:
    """Pre-unwrap clean-up: weld coincident vertices, drop small components, optionally decimate."""
    out = remove_small_components(merge_close_vertices(mesh), min_faces_fraction)
    return out if target_faces is None else simplify(out, target_faces)

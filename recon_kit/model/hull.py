"""Visual-hull carving from silhouettes, and rendering the hull back into views.

The hull is sampled on the nodes of a regular ``res^3`` grid spanning an axis-aligned box (the reconstruction
volume). A node is kept when no view that sees it (projects inside the image, in front of the camera) places
it outside the mask; a node outside an image is *unknown* for that view and not carved by it, so cropped or
zoomed photos do not cut the object. The grid doubles as an occupancy field (trilinear lookup) for
initialising DMTet, and :func:`project_silhouette` ray-marches it to compare with a view's mask.

Grid layout: ``occupancy[i, j, k]`` is the node at ``x = xs[i], y = ys[j], z = zs[k]`` (``xs = linspace(lo, hi, res)``).
"""

from __future__ import annotations


import importlib.util
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from recon_kit.cameras import Camera

if TYPE_CHECKING:  # trimesh (with networkx) slows start-up; only building a mesh needs it
    import trimesh


def resolve_bounds(bounds) -> np.ndarray:
    """Box ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` from a ``(lo, hi)`` pair, a ``[2,3]`` array, or a float.

    A float is nvdiffrec's ``mesh_scale``: the side of a cube centred at the origin, ``[-s/2, s/2]^3``.
    """
    if isinstance(bounds, torch.Tensor):
        bounds = bounds.detach().cpu().numpy()
    b = np.asarray(bounds, dtype=np.float64)
    if b.ndim == 0:
        b = np.array([-0.5 * float(b), 0.5 * float(b)])
    if b.shape == (2,):
        b = np.repeat(b[:, None], 3, axis=1)
    if b.shape != (2, 3) or np.any(b[1] <= b[0]):
        raise ValueError(f"bounds must be mesh_scale, (lo, hi) or [[xmin,ymin,zmin],[xmax,ymax,zmax]]; got {bounds!r}")
    return b


def as_mask_tensor(masks, device="cpu") -> torch.Tensor:
    """Masks as float32 ``[N,H,W]`` in [0, 1] from torch/numpy, bool, float or uint8 (0..255) input."""
    if isinstance(masks, (list, tuple)):
        masks = np.stack([m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m) for m in masks])
    t = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(masks))
    if t.ndim == 4 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"masks must be [N,H,W], got shape {tuple(t.shape)}")
    scale = 255.0 if t.dtype == torch.uint8 else 1.0
    return (t.to(device=device, dtype=torch.float32) / scale).clamp(0.0, 1.0)


def fit_camera(camera: Camera, width: int, height: int) -> Camera:
    """The camera for an image of ``width x height`` (intrinsics rescaled when the sizes differ)."""
    if (camera.width, camera.height) == (width, height):
        return camera
    return camera.resized(width, height)


def working_set(cameras: Sequence[Camera], masks: torch.Tensor, mask_size: int | None
                ) -> tuple[list[Camera], torch.Tensor]:
    """Masks area-downsampled so the long side is at most ``mask_size``, and cameras matching them."""
    h, w = masks.shape[1:]
    if mask_size is not None and max(h, w) > mask_size:
        s = mask_size / max(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
        masks = F.interpolate(masks[:, None], size=(h, w), mode="area")[:, 0]
    cams = [c if (c.width, c.height) == (w, h) else c.resized(w, h) for c in cameras]
    return cams, masks


def spanned_bounds(cameras: Sequence[Camera]) -> tuple[float, float]:
    """The cube the images span at the origin: half-size ``mean distance * tan(mean camera_angle_x / 2)``, so
    the volume follows the object's apparent size when the field of view changes."""
    dist = float(np.mean([np.linalg.norm(c.position) for c in cameras]))
    half = dist * math.tan(0.5 * float(np.mean([c.camera_angle_x for c in cameras])))
    return -half, half


def project_points(points: torch.Tensor, cameras: Sequence[Camera]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``[N,P,2]`` and depths ``[N,P]`` of world points ``[P,3]`` in ``N`` cameras at once."""
    dev, dt = points.device, points.dtype
    w2c = torch.tensor(np.stack([c.w2c() for c in cameras]), device=dev, dtype=dt)
    intr = torch.tensor([[c.fx, c.fy, c.cx, c.cy] for c in cameras], device=dev, dtype=dt)
    pc = torch.matmul(points[None], w2c[:, :3, :3].transpose(1, 2)) + w2c[:, None, :3, 3]
    depth = -pc[..., 2]
    safe = torch.where(depth.abs() < 1e-9, torch.full_like(depth, 1e-9), depth)
    x = intr[:, None, 2] + intr[:, None, 0] * pc[..., 0] / safe
    y = intr[:, None, 3] - intr[:, None, 1] * pc[..., 1] / safe
    return torch.stack([x, y], -1), depth


def sample_masks(masks: torch.Tensor, xy: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear mask values ``[N,P]`` at pixel coordinates, and whether each point lies inside the image in front."""
    n, h, w = masks.shape
    grid = torch.stack([2.0 * xy[..., 0] / w - 1.0, 2.0 * xy[..., 1] / h - 1.0], -1)
    vals = F.grid_sample(masks[:, None], grid[:, None], mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0, 0]
    seen = (xy[..., 0] >= 0) & (xy[..., 0] <= w) & (xy[..., 1] >= 0) & (xy[..., 1] <= h) & (depth > 1e-6)
    return vals, seen


@dataclass
class HullGrid:
    """A carved visual hull on a regular grid of nodes.

    ``occupancy`` [R,R,R] in [0, 1] is above 0.5 for kept nodes (soft near silhouette edges); ``inside_count``
    counts the views that see a node inside their mask, ``seen_count`` the views that see it at all (inside
    their image, in front of the camera).
    """

    occupancy: torch.Tensor
    inside_count: torch.Tensor
    seen_count: torch.Tensor
    bounds: np.ndarray

    @property
    def res(self) -> int:
        return int(self.occupancy.shape[0])

    @property
    def device(self) -> torch.device:
        return self.occupancy.device

    @property
    def voxel_size(self) -> np.ndarray:
        """Spacing of grid nodes along x, y, z."""
        return (self.bounds[1] - self.bounds[0]) / (self.res - 1)

    @property
    def points(self) -> torch.Tensor:
        """All grid nodes ``[R^3,3]`` in the order of ``occupancy.reshape(-1)``."""
        return grid_points(self.bounds, self.res, self.device)

    def occupancy_fn(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear occupancy ``[K]`` at world points ``[K,3]`` (0 outside the volume), e.g. to initialise
        DMTet's SDF as ``occupancy - 0.5``."""
        pts = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        lo = torch.tensor(self.bounds[0], dtype=torch.float32, device=self.device)
        hi = torch.tensor(self.bounds[1], dtype=torch.float32, device=self.device)
        g = 2.0 * (pts - lo) / (hi - lo) - 1.0
        vol = self.occupancy.float().permute(2, 1, 0)[None, None]
        out = F.grid_sample(vol, g.reshape(1, 1, 1, -1, 3), mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(-1)

    def to_points(self, threshold: float = 0.5) -> torch.Tensor:
        """World positions ``[M,3]`` of occupied nodes."""
        return self.points[self.occupancy.reshape(-1) > threshold]

    def occupied_bounds(self, pad: float = 1.0) -> np.ndarray | None:
        """Tight box ``[2,3]`` around occupied nodes, grown by ``pad`` voxels; None when the hull is empty."""
        idx = torch.nonzero(self.occupancy > 0.5)
        if idx.numel() == 0:
            return None
        lo_i = idx.min(0).values.cpu().numpy() - pad
        hi_i = idx.max(0).values.cpu().numpy() + pad
        return np.stack([self.bounds[0] + lo_i * self.voxel_size, self.bounds[0] + hi_i * self.voxel_size])

    def touches_bounds(self) -> dict[str, bool]:
        """Which faces of the volume (``"-x"``, ``"+x"``, ...) have occupied nodes on them: the object may be cut."""
        occ = self.occupancy > 0.5
        faces = {}
        for axis, name in enumerate("xyz"):
            faces[f"-{name}"] = bool(occ.select(axis, 0).any())
            faces[f"+{name}"] = bool(occ.select(axis, self.res - 1).any())
        return faces

    def to_mesh(self) -> trimesh.Trimesh:
        """Surface mesh of the hull: marching cubes when scikit-image is installed, else the voxels' outer faces."""
        import trimesh

        occ = (self.occupancy > 0.5).cpu().numpy()
        if not occ.any():
            return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
        if importlib.util.find_spec("skimage") is not None:
            from skimage.measure import marching_cubes

            padded = np.pad(occ.astype(np.float32), 1)
            verts, faces, _, _ = marching_cubes(padded, 0.5)
            verts = self.bounds[0] + (verts - 1.0) * self.voxel_size
            return trimesh.Trimesh(verts, faces[:, ::-1], process=True)
        return _voxel_faces_mesh(occ, self.bounds[0], self.voxel_size)


def grid_points(bounds, res: int, device="cpu") -> torch.Tensor:
    """Nodes ``[res^3,3]`` of the grid over ``bounds`` (x slowest, z fastest)."""
    b = resolve_bounds(bounds)
    axes = [torch.linspace(float(b[0, d]), float(b[1, d]), res, device=device) for d in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _voxel_faces_mesh(occ: np.ndarray, origin: np.ndarray, size: np.ndarray) -> trimesh.Trimesh:
    """Watertight blocky mesh: the faces between occupied and empty voxels (one voxel per grid node)."""
    import trimesh

    pad = np.pad(occ, 1)
    quads = []
    for axis in range(3):
        diff = np.diff(pad.astype(np.int8), axis=axis)
        for sign in (1, -1):
            idx = np.argwhere(diff == -sign)
            if len(idx) == 0:
                continue
            base = idx.astype(np.float64) - 1.0
            base[:, axis] += 0.5
            u, v = [a for a in range(3) if a != axis]
            corners = []
            for du, dv in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
                c = base.copy()
                c[:, u] += du
                c[:, v] += dv
                corners.append(c)
            q = np.stack(corners, 1)
            natural = -1 if axis == 1 else 1
            quads.append(q if natural == sign else q[:, ::-1])
    q = np.concatenate(quads)
    verts = origin + q.reshape(-1, 3) * size
    n = len(q)
    base = np.arange(n) * 4
    faces = np.concatenate([np.stack([base, base + 1, base + 2], 1), np.stack([base, base + 2, base + 3], 1)])
    return trimesh.Trimesh(verts, faces, process=True)


@dataclass
class Votes:
    """Per-view evidence for every grid node: mask ``values`` [N,P] (bilinear, 1 where unseen) and ``seen`` [N,P].

    Carving from any subset of views is then a reduction over rows, so leave-one-out hulls cost one projection.
    """

    values: torch.Tensor
    seen: torch.Tensor
    bounds: np.ndarray
    res: int

    @property
    def inside(self) -> torch.Tensor:
        return self.seen & (self.values >= 0.5)

    def hull(self, views: Sequence[int] | None = None, min_views: int | None = None, min_seen: int = 1) -> HullGrid:
        """The hull carved from ``views`` (default all); see :func:`carve` for ``min_views`` and ``min_seen``."""
        idx = list(range(self.seen.shape[0])) if views is None else list(views)
        inside_count = self.inside[idx].sum(0)
        seen_count = self.seen[idx].sum(0)
        if min_views is None:
            occ = self.values[idx].min(0).values * (inside_count > 0)
        else:
            occ = (inside_count >= min_views).float()
        occ = occ * (seen_count >= min_seen)
        shape = (self.res,) * 3
        return HullGrid(occ.reshape(shape), inside_count.reshape(shape).to(torch.int32),
                        seen_count.reshape(shape).to(torch.int32), self.bounds)


def view_votes(cameras: Sequence[Camera], masks, bounds=(-1.0, 1.0), res: int = 64, device="cpu") -> Votes:
    """Project all ``res^3`` grid nodes into all views at once and record which views see them inside the mask.

    Cameras whose size differs from the masks ``[N,H,W]`` are rescaled to them.
    """
    m = as_mask_tensor(masks, device)
    if len(cameras) != m.shape[0]:
        raise ValueError(f"{len(cameras)} cameras but {m.shape[0]} masks")
    h, w = m.shape[1:]
    cams = [fit_camera(c, w, h) for c in cameras]
    b = resolve_bounds(bounds)
    xy, depth = project_points(grid_points(b, res, device), cams)
    vals, seen = sample_masks(m, xy, depth)
    return Votes(torch.where(seen, vals, torch.ones_like(vals)), seen, b, res)


def carve(cameras: Sequence[Camera], masks, bounds=(-1.0, 1.0), res: int = 64, min_views: int | None = None,
          device="cpu", min_seen: int = 1) -> HullGrid:
    """Carve the visual hull of ``masks`` ``[N,H,W]`` seen by ``cameras`` on a ``res^3`` grid (all nodes are
    projected into all views at once; cameras whose size differs from the masks are rescaled).

    ``bounds``: the volume (``(lo, hi)``, ``[2,3]`` or nvdiffrec's ``mesh_scale``). With ``min_views=None`` a
    node survives when every view that sees it has it inside the mask (value >= 0.5; at least one view must);
    its occupancy is then the smallest mask value, a soft value whose 0.5 level set follows sub-pixel mask
    edges. With an integer, a node is 1 when at least ``min_views`` views see it inside their mask (a vote that
    tolerates a few bad masks). ``min_seen`` drops nodes seen by fewer views: a node only one view sees is
    unconstrained in depth (use 2 when comparing the hull with a held-out view).
    """
    return view_votes(cameras, masks, bounds, res, device).hull(None, min_views, min_seen)


def _ray_box(origin: torch.Tensor, dirs: torch.Tensor, box: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit ray parameters ``[R]`` of rays ``origin + t dirs`` through an axis-aligned box (slab test)."""
    lo = torch.tensor(box[0], dtype=dirs.dtype, device=dirs.device)
    hi = torch.tensor(box[1], dtype=dirs.dtype, device=dirs.device)
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t_a, t_b = (lo - origin) * inv, (hi - origin) * inv
    return torch.minimum(t_a, t_b).max(-1).values, torch.maximum(t_a, t_b).min(-1).values


def camera_rays(camera: Camera, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """World ray origin ``[3]`` and directions ``[H*W,3]`` (unit camera depth) through the pixel centres."""
    j = torch.arange(camera.width, device=device, dtype=torch.float32) + 0.5
    i = torch.arange(camera.height, device=device, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(i, j, indexing="ij")
    d_cam = torch.stack([(xx - camera.cx) / camera.fx, -(yy - camera.cy) / camera.fy, -torch.ones_like(xx)], -1)
    rot = torch.tensor(camera.c2w[:3, :3], dtype=torch.float32, device=device)
    origin = torch.tensor(camera.c2w[:3, 3], dtype=torch.float32, device=device)
    return origin, d_cam.reshape(-1, 3) @ rot.T


def _march(hull: HullGrid, camera: Camera, step: float, chunk: int
           ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Pixel rays through the hull's occupied box, sampled every ``step`` voxels: yields, per chunk of rays, the
    flat pixel indices ``[R]``, the ray parameters (camera depth) ``[R,n]`` and the trilinear occupancy ``[R,n]``."""
    box = hull.occupied_bounds(pad=1.0)
    if box is None:
        return
    origin, dirs = camera_rays(camera, hull.device)
    t0, t1 = _ray_box(origin, dirs, box)
    t0 = t0.clamp_min(0.0)
    hit = torch.nonzero(t1 > t0).reshape(-1)
    diag = float(np.linalg.norm(box[1] - box[0]))
    n = max(2, int(math.ceil(diag / (step * float(hull.voxel_size.min())))))
    frac = (torch.arange(n, device=hull.device, dtype=torch.float32) + 0.5) / n
    rays_per_chunk = max(1, chunk // n)
    for s in range(0, hit.numel(), rays_per_chunk):
        idx = hit[s:s + rays_per_chunk]
        t = t0[idx, None] + (t1 - t0)[idx, None] * frac
        pts = origin + dirs[idx, None, :] * t[..., None]
        yield idx, t, hull.occupancy_fn(pts.reshape(-1, 3)).reshape(-1, n)


def project_silhouette(hull: HullGrid, camera: Camera, step: float = 0.5, chunk: int = 1 << 22,
                       soft: bool = False) -> torch.Tensor:
    """The hull's silhouette ``[H,W]`` seen by ``camera``: float 0/1, or with ``soft`` the largest occupancy
    along each ray (0.5 = the hull's surface).

    Each pixel's ray is marched through the occupied part of the volume every ``step`` voxels and the trilinear
    occupancy is thresholded at 0.5 (the level set half-way between kept and carved nodes).
    """
    out = torch.zeros(camera.height * camera.width, dtype=torch.float32, device=hull.device)
    for idx, _, occ in _march(hull, camera, step, chunk):
        peak = occ.max(-1).values
        out[idx] = peak.clamp(0.0, 1.0) if soft else (peak > 0.5).float()
    return out.reshape(camera.height, camera.width)


def project_depth(hull: HullGrid, camera: Camera, step: float = 0.5, chunk: int = 1 << 22) -> torch.Tensor:
    """Camera depth ``[H,W]`` (distance along the viewing axis) of the first sample inside the hull along each
    pixel ray, 0 where the ray misses it: the depth map the hull would produce, good to ``step`` voxels. The hull
    contains the object, so this is never farther than the object's own depth."""
    out = torch.zeros(camera.height * camera.width, dtype=torch.float32, device=hull.device)
    for idx, t, occ in _march(hull, camera, step, chunk):
        inside = occ > 0.5
        first = inside.float().argmax(-1, keepdim=True)
        out[idx] = torch.where(inside.any(-1), t.gather(1, first)[:, 0], torch.zeros_like(t[:, 0]))
    return out.reshape(camera.height, camera.width)

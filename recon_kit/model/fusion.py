"""A start from the depth maps: fit each view's unknown depth encoding against the visual hull, then fuse the
views into a truncated signed-distance grid combined with the hull.

Depth maps of real captures are 8- or 16-bit values of unknown encoding (0 = background). The visual hull of
the masks contains the object, so along every pixel ray its near surface is never farther than the object's:
``hull_depth <= true_depth``, with equality wherever the hull touches the object (silhouette rims, convex
parts). Pixels that share one raw depth value share one true depth, so the upper envelope of the hull depths at
that value (a high quantile, robust to voxel noise) is the metric depth of that value. :func:`fit_depth_to_hull`
fits ``metric = scale * raw + shift`` to those envelope points with a robust (soft-L1) line fit.

:func:`fuse_depth` then casts the metric depth maps into a TSDF over the reconstruction volume (per node and
view: ``clamp((observed depth - node depth) / truncation, -1, 1)``, averaged over the views that see the node no
deeper than ``truncation`` behind their surface) and combines it with the hull: a node is inside when the hull
says inside AND the fused depth does not put it in front of the surface. The result, :class:`FusedDepth`, has
the hull's interface (``occupancy_fn`` for DMTet's ``init_sdf_from_occupancy``) and a marching-tets mesh for
the depth baseline of the quality benchmark.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from recon_kit.cameras import Camera
from recon_kit.config import GeometryConfig
from recon_kit.data.dataset import ViewSet
from recon_kit.model.dmtet import TetGrid, marching_tets
from recon_kit.model.hull import (
    HullGrid,
    as_mask_tensor,
    carve,
    fit_camera,
    grid_points,
    project_depth,
    project_points,
)

if TYPE_CHECKING:  # trimesh (with networkx) slows start-up; only building a mesh needs it
    import trimesh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DepthFit:
    """One view's fitted encoding ``metric = scale * raw + shift`` and how well the hull's envelope supports it:
    ``levels`` distinct raw values used, ``residual`` the median absolute envelope residual (world units)."""

    name: str
    scale: float
    shift: float
    levels: int
    residual: float
    ok: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "scale": self.scale, "shift": self.shift, "levels": self.levels,
                "residual": self.residual, "ok": self.ok}


def fit_depth_to_hull(raw: np.ndarray, hull_depth: np.ndarray, quantile: float = 0.9, max_levels: int = 256,
                      min_pixels: int = 3, tolerance: float | None = None, name: str = "") -> DepthFit:
    """Fit ``metric = scale * raw + shift`` for one view from its raw depth ``[H,W]`` (0 = background) and the
    hull's camera depth at the same pixels (:func:`recon_kit.model.hull.project_depth`, 0 = miss).

    Raw values are grouped into at most ``max_levels`` levels; each level's ``quantile`` of the hull depth is an
    envelope point (the hull is tight somewhere at most levels). A robust soft-L1 line fit weighted by pixel
    counts ignores levels where the hull is loose everywhere (concavities). ``tolerance`` is the soft-L1 scale
    in world units (default: 1 % of the hull's depth range). ``ok`` is False when fewer than 3 levels are usable
    or the fit is degenerate; the view should then be left out of the fusion.
    """
    from scipy.optimize import least_squares

    raw = np.asarray(raw, np.float64)
    hd = np.asarray(hull_depth, np.float64)
    valid = (raw > 0) & (hd > 0)
    if valid.sum() < 3 * min_pixels:
        return DepthFit(name, 0.0, 0.0, 0, float("nan"), False)
    r, h = raw[valid], hd[valid]
    uniq = np.unique(r)
    if len(uniq) > max_levels:  # 16-bit or float depth: bin by quantiles of the raw values
        edges = np.unique(np.quantile(r, np.linspace(0.0, 1.0, max_levels + 1)))
        level = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, len(edges) - 2)
    else:
        level = np.searchsorted(uniq, r)
    xs, ys, ws = [], [], []
    for k in np.unique(level):
        sel = level == k
        if sel.sum() < min_pixels:
            continue
        xs.append(r[sel].mean())
        ys.append(np.quantile(h[sel], quantile))
        ws.append(np.sqrt(sel.sum()))
    x, y, w = np.asarray(xs), np.asarray(ys), np.asarray(ws)
    if len(x) < 3 or np.ptp(x) <= 0:
        return DepthFit(name, 0.0, 0.0, len(x), float("nan"), False)
    tol = tolerance if tolerance is not None else max(1e-6, 0.01 * float(np.ptp(h)))
    a0, b0 = np.polyfit(x, y, 1, w=w)
    fit = least_squares(lambda p: w * (p[0] * x + p[1] - y) / w.mean(), x0=[a0, b0], loss="soft_l1", f_scale=tol)
    scale, shift = (float(v) for v in fit.x)
    resid = float(np.median(np.abs(scale * x + shift - y)))
    ok = bool(np.isfinite(scale) and np.isfinite(shift) and scale != 0.0)
    return DepthFit(name, scale, shift, len(x), resid, ok)


@dataclass
class FusedDepth:
    """Depth maps fused with the visual hull on a regular ``res^3`` grid of nodes (layout of :mod:`recon_kit.model.hull`).

    ``occupancy`` [R,R,R] in [0, 1] is above 0.5 inside (soft: its 0.5 level set follows the fused surface to
    sub-voxel precision); ``tsdf`` is the fused truncated signed distance (> 0 in front of the surface, in units
    of the truncation) where ``weight`` (views that constrain the node) is > 0; ``hull`` is the carved hull on
    the same grid; ``fits`` the per-view depth encodings.
    """

    occupancy: torch.Tensor
    tsdf: torch.Tensor
    weight: torch.Tensor
    hull: HullGrid
    fits: list[DepthFit] = field(default_factory=list)

    @property
    def bounds(self) -> np.ndarray:
        return self.hull.bounds

    @property
    def res(self) -> int:
        return int(self.occupancy.shape[0])

    def as_grid(self) -> HullGrid:
        """The fused occupancy in a :class:`~recon_kit.model.hull.HullGrid` (for its trilinear lookup and projections)."""
        return HullGrid(self.occupancy, self.hull.inside_count, self.hull.seen_count, self.bounds)

    def occupancy_fn(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear occupancy ``[K]`` at world points ``[K,3]`` (0 outside the volume): the interface of
        :meth:`recon_kit.model.hull.HullGrid.occupancy_fn`, for ``DMTet.init_sdf_from_occupancy``."""
        return self.as_grid().occupancy_fn(points)

    def sign_targets(self, points: torch.Tensor, outside: float = 0.2, inside: float = 0.8) -> torch.Tensor:
        """``[K]`` +1 where the fused occupancy at world ``points`` ``[K,3]`` is above ``inside``, -1 below
        ``outside``, 0 in between: the band around the fused surface (about two truncations wide) is left free."""
        occ = self.occupancy_fn(points)
        return (occ > inside).float() - (occ < outside).float()

    def to_mesh(self, res: int | None = None) -> trimesh.Trimesh:
        """The fused surface (marching tets of ``occupancy - 0.5`` on a ``res`` lattice, default the grid's)."""
        return occupancy_mesh(self.occupancy_fn, self.bounds, res or self.res - 1)


def occupancy_mesh(occupancy_fn, bounds, res: int, device="cpu") -> trimesh.Trimesh:
    """The 0.5 level set of an occupancy function over ``bounds`` as a mesh: marching tets (the kit's own, see
    :func:`recon_kit.model.dmtet.marching_tets`) on a Kuhn lattice of ``res`` cells per axis, with vertices placed
    by linear interpolation of the soft occupancy (no scikit-image needed)."""
    import trimesh

    b = np.asarray(bounds, np.float64)
    grid = TetGrid.generate(int(res), device=device)
    lo = torch.tensor(b[0], dtype=torch.float32, device=device)
    size = torch.tensor(b[1] - b[0], dtype=torch.float32, device=device)
    pos = lo + (grid.vertices + 0.5) * size
    with torch.no_grad():
        sdf = torch.as_tensor(occupancy_fn(pos)).reshape(-1).float().to(device) - 0.5
        edge = (pos[:, 0] <= lo[0]) | (pos[:, 1] <= lo[1]) | (pos[:, 2] <= lo[2]) | \
               (pos[:, 0] >= lo[0] + size[0]) | (pos[:, 1] >= lo[1] + size[1]) | (pos[:, 2] >= lo[2] + size[2])
        sdf = torch.where(edge, torch.full_like(sdf, -0.5), sdf)  # close surfaces cut by the volume
        verts, faces = marching_tets(pos, sdf, grid.tets, grid.unique_edges, grid.tet_edges)
    if faces.numel() == 0:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    return trimesh.Trimesh(verts.cpu().numpy(), faces.cpu().numpy(), process=True)


def metric_depths(cameras: Sequence[Camera], depths, hull: HullGrid, names: Sequence[str] | None = None,
                  quantile: float = 0.9) -> tuple[list[torch.Tensor], list[DepthFit]]:
    """Each view's raw depth ``[N,H,W]`` (0 = background) as metric camera depth (0 where unknown), with its fit
    against the hull's depth map from that camera; views whose fit fails come back all zero (with a warning)."""
    d = torch.as_tensor(depths).float().to(hull.device)
    names = list(names) if names is not None else [c.name for c in cameras]
    out, fits = [], []
    for cam, raw, name in zip(cameras, d, names):
        cam = fit_camera(cam, raw.shape[1], raw.shape[0])
        hd = project_depth(hull, cam).cpu().numpy()
        fit = fit_depth_to_hull(raw.cpu().numpy(), hd, quantile=quantile, name=name)
        if not fit.ok:
            warnings.warn(f"depth map of view {name!r} could not be fitted to the visual hull "
                          f"({fit.levels} usable depth levels); it is left out of the fusion", stacklevel=2)
            out.append(torch.zeros_like(raw))
        else:
            metric = torch.where(raw > 0, fit.scale * raw + fit.shift, torch.zeros_like(raw))
            out.append(metric.clamp_min(0.0))
        fits.append(fit)
    return out, fits


def fuse_depth(cameras: Sequence[Camera], masks, depths, bounds=(-1.0, 1.0), res: int = 96,
               truncation: float = 3.0, names: Sequence[str] | None = None, device="cpu",
               chunk: int = 1 << 20) -> FusedDepth:
    """Fuse raw depth maps ``[N,H,W]`` (unknown encoding, 0 = background) of ``cameras`` with the visual hull of
    ``masks`` ``[N,H,W]`` on a ``res^3`` grid over ``bounds`` (module docstring). ``truncation`` is in voxels.

    Depth maps and masks may differ in size from the cameras (intrinsics are rescaled to each).
    """
    hull = carve(cameras, masks, bounds=bounds, res=res, device=device)
    d = torch.as_tensor(depths).float().to(device)
    if d.ndim != 3 or d.shape[0] != len(cameras):
        raise ValueError(f"depths must be [N,H,W] with N = {len(cameras)} cameras, got {tuple(d.shape)}")
    metric, fits = metric_depths(cameras, d, hull, names)
    log.info("depth fits against the hull (scale, shift, residual): %s", ", ".join(
        f"{f.name} {f.scale:.4g} {f.shift:.4g} {f.residual:.3g}" for f in fits if f.ok))
    trunc = float(truncation) * float(hull.voxel_size.max())
    pts = grid_points(hull.bounds, res, device)
    tsdf_sum = torch.zeros(pts.shape[0], device=device)
    weight = torch.zeros(pts.shape[0], device=device)
    for cam, dm in zip(cameras, metric):
        if not bool((dm > 0).any()):
            continue
        h, w = dm.shape
        cam = fit_camera(cam, w, h)
        for s in range(0, pts.shape[0], chunk):
            xy, z = project_points(pts[s:s + chunk], [cam])
            ix, iy = xy[0, :, 0].floor().long(), xy[0, :, 1].floor().long()
            inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h) & (z[0] > 1e-6)
            obs = torch.zeros_like(z[0])
            obs[inside] = dm[iy[inside], ix[inside]]
            sdf = obs - z[0]
            use = (obs > 0) & (sdf > -trunc)
            tsdf_sum[s:s + chunk] += torch.where(use, (sdf / trunc).clamp(-1.0, 1.0), torch.zeros_like(sdf))
            weight[s:s + chunk] += use.float()
    tsdf = torch.where(weight > 0, tsdf_sum / weight.clamp_min(1.0), torch.zeros_like(weight))
    hull_occ = hull.occupancy.reshape(-1)
    fused = (0.5 - 0.5 * tsdf).clamp(0.0, 1.0)
    occ = torch.where(weight > 0, torch.minimum(hull_occ, fused), hull_occ)
    shape = (res,) * 3
    return FusedDepth(occ.reshape(shape), tsdf.reshape(shape), weight.reshape(shape), hull, fits)


def fuse_viewset(views: ViewSet, bounds, res: int = 96, truncation: float = 3.0) -> FusedDepth:
    """:func:`fuse_depth` of a :class:`recon_kit.data.dataset.ViewSet` (its cameras, masks and raw depth maps)."""
    if views.depth is None:
        raise ValueError("the views have no depth maps; prepare the dataset from a capture with depth_renders/ "
                         "or start from the visual hull (geometry.init='hull')")
    return fuse_depth(views.cameras, as_mask_tensor(views.mask, views.device), views.depth, bounds, res,
                      truncation, names=views.names, device=views.device)


def initial_occupancy(geometry: GeometryConfig, views: ViewSet, device,
                      fused: FusedDepth | None = None) -> Callable | None:
    """The occupancy DMTet's SDF starts from for ``geometry.init`` (``None`` for sphere and random): the visual
    hull of the masks, or for ``depth`` the depth maps fused with it (``fused`` when the caller has fused them
    already; the hull when the views have no depth)."""
    if geometry.init == "depth" and views.depth is None:
        log.warning("geometry.init='depth' needs depth maps and this dataset has none; starting from the visual "
                    "hull instead (prepare the capture with its depth_renders/, or set geometry.init='hull')")
    if geometry.init == "depth" and views.depth is not None:
        return (fused or fuse_viewset(views, geometry.mesh_scale, res=geometry.hull_res)).occupancy_fn
    if geometry.init in ("hull", "depth"):
        return carve(views.cameras, views.mask, bounds=geometry.mesh_scale, res=geometry.hull_res,
                     device=device).occupancy_fn
    return None

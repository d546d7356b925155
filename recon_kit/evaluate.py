"""Evaluation metrics: image quality, silhouette overlap, surface distance and mesh facts (metrics.json is
written by :mod:`recon_kit.runs.folder`, shown by :mod:`recon_kit.runs.table`).

Image metrics take torch tensors or numpy arrays ``[H,W,C]`` (or ``[H,W]``) holding sRGB values in [0, 1]
and return Python floats. Geometry metrics compare surfaces by sampling points on both and querying
nearest neighbours with :class:`scipy.spatial.cKDTree`; distances are reported as fractions of the
ground-truth bounding-box diagonal so that numbers are comparable across object scales.
"""

from __future__ import annotations


import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from recon_kit.cameras import Camera, look_at
from recon_kit.color import linear_to_srgb
from recon_kit.data.dataset import ViewSet
from recon_kit.mesh import Mesh

if TYPE_CHECKING:  # annotations only; imported where used
    import trimesh


ArrayLike = Union[np.ndarray, torch.Tensor]


Geometry = Union[Mesh, "trimesh.Trimesh", "trimesh.Scene", "trimesh.PointCloud", np.ndarray, torch.Tensor]


SSIM_WINDOW = 11


SSIM_SIGMA = 1.5


SSIM_K1, SSIM_K2 = 0.01, 0.03


def _image_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """An image as float64 ``[H,W,C]`` on its own device (numpy goes to CPU); integers are rejected."""
    t = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if not (t.is_floating_point() or t.dtype == torch.bool):
        raise TypeError(f"{name} must hold floats in [0, 1], got dtype {t.dtype}; divide 8-bit images by 255 first")
    t = t.detach().to(torch.float64)
    if t.ndim == 2:
        t = t[..., None]
    if t.ndim != 3:
        raise ValueError(f"{name} must be [H,W] or [H,W,C], got shape {tuple(t.shape)}")
    return t


def _mask_tensor(mask: ArrayLike, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A mask as float64 weights ``[H,W]`` in [0, 1]."""
    m = torch.as_tensor(mask) if isinstance(mask, np.ndarray) else mask
    m = m.detach().to(device=device, dtype=torch.float64)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"mask must be [H,W] = {tuple(shape)} (or [H,W,1]), got {tuple(m.shape)}")
    return m.clamp(0.0, 1.0)


def _image_pair(a: ArrayLike, b: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _image_tensor(a, "a"), _image_tensor(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(f"images differ in shape: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return ta.clamp(0.0, 1.0), tb.to(ta.device).clamp(0.0, 1.0)


def mse(a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean squared error over pixels and channels; with ``mask``, a mask-weighted mean (inside only)."""
    ta, tb = _image_pair(a, b)
    se = ((ta - tb) ** 2).mean(-1)
    if mask is None:
        return float(se.mean())
    w = _mask_tensor(mask, ta.shape[:2], ta.device)
    total = float(w.sum())
    if total <= 0:
        raise ValueError("mask is empty: no pixel to evaluate")
    return float((se * w).sum()) / total


def psnr(a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None) -> float:
    """PSNR in dB, ``-10 log10(MSE)`` with peak 1 (nvdiffrec/jaxNeRF formula); identical images give ``inf``.

    Images are clamped to [0, 1] first, as nvdiffrec does. A soft mask weights pixels (0 = ignored).
    """
    err = mse(a, b, mask)
    return math.inf if err <= 0 else -10.0 * math.log10(err)


def ssim_map(a: ArrayLike, b: ArrayLike) -> torch.Tensor:
    """Per-pixel SSIM ``[H-10, W-10]`` (Wang et al. 2004: Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, range 1).

    torchmetrics' full SSIM image, kept over the 'valid' region (windows wholly inside the image, as the reference
    MATLAB code) and averaged over channels. (torchmetrics' own scalar also averages reflect-padded border
    windows, so the kit's ``ssim`` differs from it by about 1e-3; the map inside is the same to 1e-15.)
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    ta, tb = _image_pair(a, b)
    h, w, _ = ta.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    _, full = structural_similarity_index_measure(
        ta.permute(2, 0, 1)[None], tb.permute(2, 0, 1)[None], gaussian_kernel=True, sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW, data_range=1.0, k1=SSIM_K1, k2=SSIM_K2, return_full_image=True)
    r = SSIM_WINDOW // 2
    return full[0, :, r:h - r, r:w - r].mean(0)


def ssim(a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean SSIM; with ``mask``, the mask-weighted mean of the SSIM map at window centres.

    Windows centred inside the mask but near its border still see outside pixels, so composite both images
    over the same background first if the outside is meaningless.
    """
    smap = ssim_map(a, b)
    if mask is None:
        return float(smap.mean())
    h, w = smap.shape
    r = SSIM_WINDOW // 2
    wts = _mask_tensor(mask, (h + 2 * r, w + 2 * r), smap.device)[r:r + h, r:r + w]
    total = float(wts.sum())
    if total <= 0:
        raise ValueError("mask holds no pixel at least 5 pixels away from the image border")
    return float((smap * wts).sum()) / total


def silhouette_iou(mask_a: ArrayLike, mask_b: ArrayLike, threshold: float = 0.5) -> float:
    """Intersection over union of two silhouettes binarised at ``threshold``; two empty masks give 1."""
    ta = _image_tensor(mask_a, "mask_a")[..., 0] > threshold
    tb = _image_tensor(mask_b, "mask_b")[..., 0].to(ta.device) > threshold
    if ta.shape != tb.shape:
        raise ValueError(f"masks differ in shape: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    union = int((ta | tb).sum())
    return 1.0 if union == 0 else int((ta & tb).sum()) / union


def to_trimesh(mesh: Any) -> "trimesh.Trimesh":
    """A :class:`trimesh.Trimesh` view of a recon-kit Mesh, a Trimesh, a Scene (parts concatenated) or a file."""
    import trimesh

    if isinstance(mesh, (str, Path)):
        if not Path(mesh).exists():
            raise FileNotFoundError(f"mesh file {mesh} does not exist")
        mesh = trimesh.load(str(mesh), process=False)
    if isinstance(mesh, Mesh):
        return trimesh.Trimesh(mesh.v_pos.detach().cpu().numpy().astype(np.float64),
                               mesh.t_pos_idx.detach().cpu().numpy(), process=False)
    if isinstance(mesh, trimesh.Scene):
        parts = [g for g in mesh.dump() if isinstance(g, trimesh.Trimesh)]
        if not parts:
            raise ValueError("the scene holds no triangle mesh")
        return parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    if isinstance(mesh, trimesh.Trimesh):
        return mesh
    raise TypeError(f"expected a recon_kit Mesh or a trimesh mesh/scene, got {type(mesh).__name__}")


def _surface_samples(geom: Any, n_points: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Points [N,3], their normals (or None for point input) and the bounding box corners [2,3]."""
    import trimesh

    if isinstance(geom, torch.Tensor):
        geom = geom.detach().cpu().numpy()
    if isinstance(geom, trimesh.PointCloud):
        geom = np.asarray(geom.vertices)
    if isinstance(geom, np.ndarray):
        pts = np.asarray(geom, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise ValueError(f"point input must be a non-empty [N,3] array, got shape {pts.shape}")
        return pts, None, np.stack([pts.min(0), pts.max(0)])
    tm = to_trimesh(geom)
    if len(tm.faces) == 0 or tm.area <= 0:
        raise ValueError("cannot sample a mesh with no surface area")
    pts, face_idx = trimesh.sample.sample_surface(tm, n_points, seed=rng)
    return np.asarray(pts, np.float64), np.asarray(tm.face_normals[face_idx], np.float64), np.asarray(tm.bounds)


def winding_number(triangles: ArrayLike, points: ArrayLike, chunk: int = 1 << 22) -> np.ndarray:
    """Generalised winding number ``[P]`` of a closed triangle surface ``[F,3,3]`` at ``points [P,3]``: about 1
    inside, 0 outside (Jacobson et al. 2013; each triangle's signed solid angle by Van Oosterom & Strackee).
    Works on triangle soups, with no spatial index, in float32 torch; ``chunk`` bounds the ``P x F`` pairs held
    at once."""
    tri = torch.as_tensor(np.array(triangles, np.float32))
    pts = torch.as_tensor(np.array(points, np.float32))
    step = max(1, chunk // max(1, len(tri)))
    out = []
    for s in range(0, len(pts), step):
        a, b, c = (tri[None] - pts[s:s + step, None, None, :]).unbind(2)      # each [p, F, 3]
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.linalg.cross(b, c)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out.append(torch.atan2(det, den).sum(1) / (2 * math.pi))
    return torch.cat(out).numpy() if out else np.zeros(0)


def outer_surface(geom: Any, refine: int = 4) -> "trimesh.Trimesh":
    """The part of a mesh a capture can see at most: its surface minus what lies inside its other parts.

    A mesh assembled from overlapping closed parts (the demo object's handle is half sunk into its body) holds
    interior surface that renders identically with or without it and that no reconstruction from images can
    recover; scored against it, a perfect reconstruction loses recall. Each connected part's triangles inside
    another part (winding number > 1/2) are dropped; triangles crossing the other part are subdivided
    ``refine`` times first, so the cut follows the intersection to 1/2^refine of a triangle. A mesh of one
    part is returned as it is.
    """
    import trimesh
    from trimesh.graph import connected_component_labels

    tm = to_trimesh(geom)
    welded = tm.copy()
    welded.merge_vertices(merge_tex=True, merge_norm=True)
    labels = connected_component_labels(welded.face_adjacency, node_count=len(welded.faces))
    if labels.max(initial=0) == 0:
        return tm
    parts = [welded.submesh([labels == k], append=True) for k in range(labels.max() + 1)]

    def inside_others(k: int, pts: np.ndarray) -> np.ndarray:
        """Which ``pts`` lie inside any part but ``k`` (only points in a part's bounding box are tested)."""
        hit = np.zeros(len(pts), bool)
        for j, other in enumerate(parts):
            box = (pts >= other.bounds[0]).all(1) & (pts <= other.bounds[1]).all(1) & ~hit
            if j != k and box.any():
                hit[box] = np.abs(winding_number(other.triangles, pts[box])) > 0.5
        return hit

    kept = []
    for k, part in enumerate(parts):
        v, f = np.asarray(part.vertices), np.asarray(part.faces)
        v_in = inside_others(k, v)
        for _ in range(refine):
            crossing = np.flatnonzero(v_in[f].any(1) & ~v_in[f].all(1))
            if len(crossing) == 0:
                break
            n_old = len(v)
            v, f = trimesh.remesh.subdivide(v, f, face_index=crossing)
            v_in = np.concatenate([v_in, inside_others(k, v[n_old:])])
        drop = v_in[f].all(1)
        mixed = np.flatnonzero(v_in[f].any(1) & ~drop)   # still crossing after refining: judged by the centre
        drop[mixed] = inside_others(k, v[f[mixed]].mean(1))
        kept.append(trimesh.Trimesh(v, f[~drop], process=False))
    return trimesh.util.concatenate(kept)


def chamfer_fscore(pred: Geometry, gt: Geometry, n_points: int = 100_000, threshold: float = 0.01,
                   seed: int = 0, ref_factor: int = 16) -> dict[str, float]:
    """Chamfer-L1 distance, F-score, precision/recall and normal consistency between two surfaces.

    Each mesh is sampled uniformly by area twice: ``n_points`` query points, and ``ref_factor * n_points``
    reference points that stand in for its surface when the other side's queries look for their nearest
    neighbour (independent streams derived from ``seed``). Point arrays are used as given, for both. Against a
    sparse reference the sampling alone adds distance: one mesh against itself scores ~0.2 % of its diagonal
    at 50k points; the dense reference cuts that floor by ~sqrt(ref_factor) (``ref_factor=1``: the plain
    symmetric point-to-point Chamfer distance). ``chamfer_l1`` is the mean of the two directions' mean
    nearest-neighbour distances, as a fraction of the GT bounding-box diagonal (``gt_diagonal``); ``threshold``
    for the F-score is also a fraction of that diagonal. ``normal_consistency`` is the mean |cos| between the
    normals of nearest points in both directions (NaN when either side is a point set).
    """
    from scipy.spatial import cKDTree

    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    p_pts, p_nrm, _ = _surface_samples(pred, n_points, rngs[0])
    g_pts, g_nrm, g_box = _surface_samples(gt, n_points, rngs[1])
    dense = max(1, int(ref_factor)) * n_points

    def reference(geom, pts, nrm, rng):
        """The surface a side's nearest neighbours are looked up in: its dense sampling, or points as given."""
        return (pts, nrm) if nrm is None or dense == n_points else _surface_samples(geom, dense, rng)[:2]

    p_ref, p_ref_nrm = reference(pred, p_pts, p_nrm, rngs[2])
    g_ref, g_ref_nrm = reference(gt, g_pts, g_nrm, rngs[3])
    diag = float(np.linalg.norm(g_box[1] - g_box[0]))
    if diag <= 0:
        raise ValueError("the ground truth has a degenerate (zero-size) bounding box")
    d_pg, i_pg = cKDTree(g_ref).query(p_pts, workers=-1)
    d_gp, i_gp = cKDTree(p_ref).query(g_pts, workers=-1)
    tau = threshold * diag
    precision = float((d_pg < tau).mean())
    recall = float((d_gp < tau).mean())
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    if p_nrm is None or g_nrm is None:
        nc = math.nan
    else:
        nc = 0.5 * (float(np.abs((p_nrm * g_ref_nrm[i_pg]).sum(-1)).mean())
                    + float(np.abs((g_nrm * p_ref_nrm[i_gp]).sum(-1)).mean()))
    return {
        "chamfer_l1": 0.5 * (float(d_pg.mean()) + float(d_gp.mean())) / diag,
        "fscore": fscore,
        "precision": precision,
        "recall": recall,
        "normal_consistency": nc,
        "threshold": threshold,
        "gt_diagonal": diag,
    }


def uv_coverage_mask(v_tex: ArrayLike, t_tex_idx: ArrayLike, resolution: int = 512) -> np.ndarray:
    """Boolean ``[R,R]`` image of the texels whose centre lies inside a UV triangle (row 0 = v 0).

    Vectorised point-in-triangle tests over each triangle's pixel bounding box, so the estimate is unbiased
    for large triangles and does not inflate slivers the way polygon filling does.
    """
    uv = np.asarray(v_tex.detach().cpu() if isinstance(v_tex, torch.Tensor) else v_tex, np.float64)
    tri = np.asarray(t_tex_idx.detach().cpu() if isinstance(t_tex_idx, torch.Tensor) else t_tex_idx, np.int64)
    r = int(resolution)
    mask = np.zeros((r, r), dtype=bool)
    if len(tri) == 0:
        return mask
    p = uv[tri] * r  # [F,3,2] in pixel units, x = u * R (column), y = v * R (row)
    lo = np.ceil(p.min(1) - 0.5).astype(np.int64).clip(0, r - 1)
    hi = np.floor(p.max(1) - 0.5).astype(np.int64).clip(-1, r - 1)
    width = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0)
    count = width * np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    ends = np.cumsum(count)
    budget, start = 4_000_000, 0
    while start < len(tri):
        base = ends[start] - count[start]
        stop = max(int(np.searchsorted(ends, base + budget, side="right")), start + 1)
        sel = np.arange(start, stop)
        n = count[sel]
        if n.sum() > 0:
            f = np.repeat(sel, n)
            off = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            cx = lo[f, 0] + off % width[f] + 0.5
            cy = lo[f, 1] + off // width[f] + 0.5
            a, b, c = p[f, 0], p[f, 1], p[f, 2]
            e0 = (b[:, 0] - a[:, 0]) * (cy - a[:, 1]) - (b[:, 1] - a[:, 1]) * (cx - a[:, 0])
            e1 = (c[:, 0] - b[:, 0]) * (cy - b[:, 1]) - (c[:, 1] - b[:, 1]) * (cx - b[:, 0])
            e2 = (a[:, 0] - c[:, 0]) * (cy - c[:, 1]) - (a[:, 1] - c[:, 1]) * (cx - c[:, 0])
            inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
            inside &= ~((e0 == 0) & (e1 == 0) & (e2 == 0))
            mask[(cy[inside] - 0.5).astype(np.int64), (cx[inside] - 0.5).astype(np.int64)] = True
        start = stop
    return mask


def _mesh_uv(mesh: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """UVs and their triangles in the internal convention, or None when the mesh has none."""
    if isinstance(mesh, Mesh):
        if not mesh.has_uv:
            return None
        return mesh.v_tex.detach().cpu().numpy(), mesh.t_tex_idx.detach().cpu().numpy()
    uv = getattr(getattr(mesh, "visual", None), "uv", None)
    if uv is None or len(uv) != len(mesh.vertices):
        return None
    uv = np.asarray(uv, np.float64)
    return np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1), np.asarray(mesh.faces)


def mesh_stats(mesh: Mesh | Any, textures: Mapping[str, ArrayLike] | None = None,
               uv_mask: ArrayLike | None = None, uv_resolution: int = 512) -> dict[str, Any]:
    """Counts, topology and texture facts of a mesh, for reports and regression checks.

    ``watertight``/``winding_consistent``/``components`` are computed after merging vertices that share a
    position (UV seams do not break a surface). ``uv_coverage`` is the fraction of the texture square covered
    by UV triangles: the mean of ``uv_mask`` when given (e.g. the baker's mask), else a rasterisation at
    ``uv_resolution``; None without UVs. ``uv_area_sum`` above ``uv_coverage`` means overlapping charts.
    """
    import trimesh

    tm = to_trimesh(mesh)
    merged = trimesh.Trimesh(np.asarray(tm.vertices), np.asarray(tm.faces), process=True)
    stats: dict[str, Any] = {
        "vertices": int(len(tm.vertices)),
        "faces": int(len(tm.faces)),
        "watertight": bool(merged.is_watertight),
        "winding_consistent": bool(merged.is_winding_consistent),
        "components": int(merged.body_count),
        "bbox_diagonal": float(np.linalg.norm(np.ptp(np.asarray(tm.vertices), axis=0))) if len(tm.vertices) else 0.0,
        "uv_coverage": None,
        "uv_area_sum": None,
        "texture_sizes": {},
    }
    uvs = _mesh_uv(mesh)
    if uv_mask is not None:
        m = uv_mask.detach().cpu().numpy() if isinstance(uv_mask, torch.Tensor) else np.asarray(uv_mask)
        stats["uv_coverage"] = float((m.astype(np.float64) > 0.5).mean())
    elif uvs is not None:
        stats["uv_coverage"] = float(uv_coverage_mask(uvs[0], uvs[1], uv_resolution).mean())
    if uvs is not None:
        t = uvs[0][uvs[1]]
        cross = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1])
        stats["uv_area_sum"] = float(0.5 * np.abs(cross).sum())
    for name, tex in (textures or {}).items():
        shape = tuple(int(s) for s in tex.shape)
        stats["texture_sizes"][name] = list(shape if len(shape) == 3 else (*shape, 1))
    return stats


def fringe_score(rgb_srgb: np.ndarray, alpha: np.ndarray, background_srgb, band_px: float = 3.0,
                 tol: float = 12 / 255) -> float:
    """Share of the pixels in a band ``band_px`` wide just inside a silhouette whose colour is within ``tol``
    (every sRGB channel, 0-1) of the capture's background colour: background baked into the albedo along
    silhouettes ("white fringes"). ``rgb_srgb`` [H,W,3] in [0,1] should be rendered over a background far from
    the capture's (black for a white studio), so antialiased edge pixels never count; ``alpha`` [H,W] is the
    coverage (pixels above 0.99 are inside). 0 when the silhouette is empty."""
    from scipy import ndimage

    inside = np.asarray(alpha) > 0.99
    r = max(1, int(round(band_px)))
    band = inside & ~ndimage.binary_erosion(inside, iterations=r)
    if not band.any():
        return 0.0
    near = (np.abs(np.asarray(rgb_srgb, dtype=np.float64) - np.asarray(background_srgb)[None, None]) <= tol).all(-1)
    return float(near[band].mean())


def between_views(camera: Camera, n_views: int = 8, elevation_deg: float = 20.0) -> list[Camera]:
    """``n_views`` cameras between axis-aligned training views: azimuths 180/n + k 360/n degrees at
    ``elevation_deg``, aimed at the origin at ``camera``'s distance, field of view and image size."""
    dist = float(np.linalg.norm(camera.position))
    el = math.radians(elevation_deg)
    cams = []
    for k in range(n_views):
        az = 2 * math.pi * (k + 0.5) / n_views
        eye = dist * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        cams.append(Camera.from_fov(look_at(eye), camera.camera_angle_x, camera.width, camera.height,
                                    name=f"between_{k}"))
    return cams


def border_colour(rgb_srgb: np.ndarray, border: float = 0.02) -> np.ndarray:
    """A photo's background colour ``[3]``: the median of a frame ``border`` (fraction of the short side) wide."""
    b = max(1, round(border * min(rgb_srgb.shape[:2])))
    frame = np.concatenate([rgb_srgb[:b].reshape(-1, 3), rgb_srgb[-b:].reshape(-1, 3),
                            rgb_srgb[:, :b].reshape(-1, 3), rgb_srgb[:, -b:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def fringe_report(renders_srgb: np.ndarray, alphas: np.ndarray, photos_srgb: np.ndarray, masks: np.ndarray,
                  band_px: float = 3.0) -> dict:
    """Fringe scores of renders ``[V,H,W,3]`` (over black) against the photos' background colour, and the
    photos' own score along their mask edges for reference (white parts of the object touching the
    background count there too)."""
    background = border_colour(photos_srgb[0])
    views = [fringe_score(renders_srgb[i], alphas[i], background, band_px) for i in range(len(renders_srgb))]
    photos = [fringe_score(photos_srgb[i], masks[i], background, band_px) for i in range(len(photos_srgb))]
    return {"fringe": float(np.mean(views)), "fringe_views": views, "fringe_photos": float(np.mean(photos))}


@torch.no_grad()
def fringe(render_views, views, n_views: int = 8, band_px: float = 3.0) -> dict:
    """Fringe scores (:func:`fringe_report`) of a reconstruction: ``render_views(viewset, background=...)``
    (e.g. ``Trainer.render_views``) renders it over black from ``n_views`` angles between the training
    ``views``; ``fringe_images`` holds those renders (sRGB, 0-1). ``band_px`` is in pixels at 1024²."""
    cams = between_views(views.cameras[0], n_views)
    size = (n_views, cams[0].height, cams[0].width)
    novel = ViewSet([c.name for c in cams], cams, torch.zeros(*size, 3), torch.zeros(size))
    out = render_views(novel, background="black")
    srgb = linear_to_srgb(out["rgb_linear"].clamp(0, 1)).cpu().numpy()
    photos = linear_to_srgb(views.rgb_linear.clamp(0, 1)).cpu().numpy()
    report = fringe_report(srgb, out["alpha"][..., 0].cpu().numpy(), photos, views.mask.cpu().numpy(),
                           band_px * cams[0].width / 1024)
    return {**report, "fringe_images": srgb}

"""Pictures of camera rigs: where each camera sits, where it looks, and what it saw (image on its frustum).

Colours: camera x (right) red, y (up) green, and the viewing direction (-z) blue. Each view's image is drawn on
its frustum's image plane as the camera sees it: row 0 along the camera's +y edge, column 0 on its -x side.
Seen from behind the camera the picture is upright and unmirrored; seen from the object it appears mirrored.
An upside-down or mirrored pose therefore shows as a picture that does not match its neighbours.

Matplotlib draws the world with y up (its vertical axis is world y, its horizontal ones z and x), a proper
rotation of the world frame, so nothing in the picture is mirrored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from PIL import Image

from recon_kit.cameras import Camera
from recon_kit.model.hull import HullGrid, resolve_bounds

AXIS_COLOURS = ("tab:red", "tab:green", "tab:blue")


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _image_uint8(img, size: int | None) -> np.ndarray:
    """Display-ready image as uint8 [h,w,3] (floats read as sRGB in [0,1]; masks become grey), downsampled so
    the longer side is at most ``size``."""
    a = _np(img)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.round(np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if size is not None and max(a.shape[:2]) > size:
        s = size / max(a.shape[:2])
        a = np.asarray(Image.fromarray(a).resize((max(1, round(a.shape[1] * s)), max(1, round(a.shape[0] * s))),
                                                 Image.BOX))
    return a


def default_frustum_depth(cameras: Sequence[Camera]) -> float:
    """A frustum length that reaches a third of the way to the origin from a typical camera."""
    d = np.median([np.linalg.norm(c.position) for c in cameras]) if cameras else 1.0
    return float(max(d, 1e-3) / 3.0)


def image_plane_points(camera: Camera, depth: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World points ``[..., 3]`` at camera depth ``depth`` under pixel coordinates ``(u, v)`` (v down)."""
    xc = (u - camera.cx) / camera.fx * depth
    yc = -(v - camera.cy) / camera.fy * depth
    pc = np.stack([xc, yc, -np.full_like(xc, depth)], -1)
    return pc @ camera.c2w[:3, :3].T + camera.c2w[:3, 3]


def frustum_corners(camera: Camera, depth: float) -> np.ndarray:
    """Image-plane corners ``[4,3]`` at ``depth``: top-left, top-right, bottom-right, bottom-left."""
    w, h = float(camera.width), float(camera.height)
    return image_plane_points(camera, depth, np.array([0.0, w, w, 0.0]), np.array([0.0, 0.0, h, h]))


def _box_edges(bounds) -> list[np.ndarray]:
    b = resolve_bounds(bounds)
    corners = np.array([[b[i, 0], b[j, 1], b[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    edges = []
    for a in range(8):
        for c in range(a + 1, 8):
            if bin(a ^ c).count("1") == 1:
                edges.append(corners[[a, c]])
    return edges


def _hull_points(hull, max_points: int) -> np.ndarray:
    pts = _np(hull.to_points() if isinstance(hull, HullGrid) else hull).reshape(-1, 3)
    if len(pts) > max_points:
        pts = pts[np.linspace(0, len(pts) - 1, max_points).astype(int)]
    return pts


def _to_plot(p: np.ndarray) -> np.ndarray:
    """World (x, y, z) to matplotlib (z, x, y): world y is drawn vertical; a proper rotation (no mirroring)."""
    return p[..., [2, 0, 1]]


def plot_cameras(cameras: Sequence[Camera], images=None, volume=(-1.0, 1.0), hull=None, ax: Axes | None = None,
                 frustum_depth: float | None = None, image_size: int = 48, axis_length: float | None = None,
                 labels: bool = True, max_hull_points: int = 3000) -> Axes:
    """Matplotlib 3-D view of the rig: centres, axes, frustums with the images on them, origin, volume box.

    ``images``: per view, display-ready RGB (uint8, or float sRGB in [0,1]) or masks, any size (downsampled to
    ``image_size`` for drawing). ``volume``: the reconstruction box as accepted by
    :func:`recon_kit.model.hull.resolve_bounds` (nvdiffrec's ``mesh_scale`` or ``(lo, hi)``), None to omit.
    ``hull``: a :class:`~recon_kit.hull.HullGrid` or points ``[M,3]`` drawn as a grey cloud.
    """
    if ax is None:
        fig = plt.figure(figsize=(7, 7))
        ax = fig.add_subplot(projection="3d")
    depth = frustum_depth or default_frustum_depth(cameras)
    length = axis_length or 0.6 * depth
    pts_all = [np.zeros((1, 3))]
    for i, cam in enumerate(cameras):
        c = cam.position
        corners = frustum_corners(cam, depth)
        pts_all += [c[None], corners]
        for k in range(4):
            seg = _to_plot(np.stack([c, corners[k]]))
            ax.plot(*seg.T, color="0.35", lw=0.8)
        ring = _to_plot(np.concatenate([corners, corners[:1]]))
        ax.plot(*ring.T, color="0.2", lw=1.0)
        for axis, colour in enumerate(AXIS_COLOURS):
            direction = cam.c2w[:3, axis] * (-1.0 if axis == 2 else 1.0)
            tip = _to_plot(np.stack([c, c + length * direction]))
            ax.plot(*tip.T, color=colour, lw=2.0)
        if images is not None and images[i] is not None:
            img = _image_uint8(images[i], image_size)
            h, w = img.shape[:2]
            uu, vv = np.meshgrid(np.linspace(0, cam.width, w + 1), np.linspace(0, cam.height, h + 1))
            grid = _to_plot(image_plane_points(cam, depth, uu, vv))
            colours = np.pad(img.astype(np.float32) / 255.0, ((0, 1), (0, 1), (0, 0)), mode="edge")
            ax.plot_surface(grid[..., 0], grid[..., 1], grid[..., 2], facecolors=colours, rstride=1, cstride=1,
                            shade=False, linewidth=0, antialiased=False)
        if labels:
            name = cam.name or f"view{i}"
            ax.text(*_to_plot(c + 0.5 * length * (c / max(np.linalg.norm(c), 1e-9))), name, fontsize=9)
    ax.scatter(*_to_plot(np.zeros((1, 3))).T, color="k", s=20)
    if volume is not None:
        for e in _box_edges(volume):
            ax.plot(*_to_plot(e).T, color="tab:orange", lw=0.8, ls="--")
        pts_all.append(resolve_bounds(volume))
    if hull is not None:
        hp = _hull_points(hull, max_hull_points)
        if len(hp):
            ax.scatter(*_to_plot(hp).T, color="0.45", s=1, alpha=0.5, depthshade=False)
    allp = _to_plot(np.concatenate(pts_all))
    centre, half = 0.5 * (allp.min(0) + allp.max(0)), 0.55 * float(np.ptp(allp, axis=0).max())
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("z")
    ax.set_ylabel("x")
    ax.set_zlabel("y (up)")
    return ax


def consistency_bar(df: pd.DataFrame, ax: Axes | None = None, threshold: float | None = None) -> Axes:
    """Per-view leave-one-out IoU (flagged views red), the flag threshold, and the IoU a suggested roll/mirror
    would reach (open circles)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(df) + 1.5), 3.2))
    flagged = df["flagged"] if "flagged" in df else pd.Series(False, index=df.index)
    colours = ["tab:red" if f else "tab:blue" for f in flagged]
    x = np.arange(len(df))
    ax.bar(x, df["iou"], color=colours)
    thr = threshold if threshold is not None else df.attrs.get("threshold")
    if thr is not None:
        ax.axhline(thr, color="k", ls="--", lw=1, label=f"flag below {thr:.2f}")
    if "best_correction" in df:
        has = df["best_correction"].astype(bool).to_numpy()
        if has.any():
            ax.scatter(x[has], df["best_iou"].to_numpy()[has], facecolors="none", edgecolors="k", zorder=3,
                       label="after suggested roll/mirror")
    ax.set_xticks(x, df["view"], rotation=30)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU with the other views' hull")
    ax.legend(loc="lower right", fontsize=8)
    return ax


def calibration_curve(calibration, ax: Axes | None = None) -> Axes:
    """Silhouette coverage against ``camera_angle_x`` (one line per scanned distance), best and given angle."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    t = calibration.table
    groups = [(None, t)] if t["distance"].isna().all() else list(t.groupby("distance"))
    for d, g in groups:
        ax.plot(g["camera_angle_x"], g["coverage"], marker=".", label="coverage" if d is None else f"distance {d:g}")
    ax.axvline(calibration.best_angle, color="tab:green", ls="--", label=f"best {calibration.best_angle:.3f}")
    ax.axvline(calibration.current_angle, color="k", ls=":", label=f"given {calibration.current_angle:.3f}")
    ax.set_xlabel("camera_angle_x (rad)")
    ax.set_ylabel("silhouette coverage")
    ax.legend(fontsize=8)
    return ax


def silhouette_panel(predicted, masks, names: Sequence[str], ncols: int = 6):
    """Per view: the mask against the silhouette the other views predict. White = both, red = mask only
    (the others' hull misses it), blue = predicted only. A wrong pose shows as a rotated/mirrored blue shape."""
    pred, m = _np(predicted) > 0.5, _np(masks) > 0.5
    n = len(names)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.3 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        rgb = np.zeros(m[k].shape + (3,), np.float32)
        rgb[m[k] & pred[k]] = 1.0
        rgb[m[k] & ~pred[k]] = (0.9, 0.1, 0.1)
        rgb[~m[k] & pred[k]] = (0.2, 0.4, 1.0)
        ax.imshow(rgb)
        ax.set_title(names[k], fontsize=9)
    fig.tight_layout()
    return fig


def k3d_camera_scene(cameras: Sequence[Camera], images=None, hull_points=None, volume=(-1.0, 1.0),
                     frustum_depth: float | None = None, image_size: int = 256, height: int = 512):
    """Interactive k3d scene: frustum lines, camera axes, textured image planes, hull points, volume box.

    ``hull_points``: a :class:`~recon_kit.hull.HullGrid` or points ``[M,3]``. Texture uv (0, 0) is the image's
    first row (k3d uploads mesh textures without flipping), placed on the camera's top-left frustum corner.
    """
    import k3d

    depth = frustum_depth or default_frustum_depth(cameras)
    length = 0.6 * depth
    plot = k3d.plot(height=height, grid_visible=False, camera_auto_fit=True)
    seg_idx = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]], dtype=np.uint32)
    for i, cam in enumerate(cameras):
        name = cam.name or f"view{i}"
        corners = frustum_corners(cam, depth)
        verts = np.concatenate([cam.position[None], corners]).astype(np.float32)
        plot += k3d.lines(verts, seg_idx, indices_type="segment", color=0x333333, width=0.01 * depth,
                          shader="simple", name=f"{name} frustum")
        for axis, colour in enumerate((0xD62728, 0x2CA02C, 0x1F77B4)):
            direction = cam.c2w[:3, axis] * (-1.0 if axis == 2 else 1.0)
            axv = np.stack([cam.position, cam.position + length * direction]).astype(np.float32)
            plot += k3d.lines(axv, np.array([[0, 1]], dtype=np.uint32), indices_type="segment", color=colour,
                              width=0.02 * depth, shader="simple", name=f"{name} axis {'xyz'[axis]}")
        if images is not None and images[i] is not None:
            img = _image_uint8(images[i], image_size)
            plot += k3d.mesh(corners.astype(np.float32), np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32),
                             uvs=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32),
                             texture=_png(img), texture_file_format="png", color=0xFFFFFF, side="double",
                             name=f"{name} image")
        plot += k3d.text(name, position=cam.position.astype(np.float32).tolist(), size=0.8, label_box=False,
                         color=0x000000, name=f"{name} label")
    if volume is not None:
        edges = np.concatenate(_box_edges(volume)).astype(np.float32)
        idx = np.arange(len(edges), dtype=np.uint32).reshape(-1, 2)
        plot += k3d.lines(edges, idx, indices_type="segment", color=0xFF7F0E, width=0.005 * depth * 3,
                          shader="simple", name="volume")
    if hull_points is not None:
        hp = _hull_points(hull_points, 200_000).astype(np.float32)
        size = float(hull_points.voxel_size.min()) if isinstance(hull_points, HullGrid) else 0.02
        if len(hp):
            plot += k3d.points(hp, point_size=size, color=0x808080, shader="flat", name="hull")
    rig = [np.vstack([c.position[None], frustum_corners(c, depth)]) for c in cameras]
    from recon_kit.viz.k3d_view import open_upright

    return open_upright(plot, np.vstack(rig) if rig else np.zeros((1, 3)))


def _png(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def save_scene_html(plot, path: str | Path) -> Path:
    """Standalone HTML of a k3d plot (``recon_kit.viz.mesh.save_html`` when available)."""
    try:
        from recon_kit.viz.mesh import save_html
    except ImportError:
        save_html = None
    if save_html is not None:
        return save_html(plot, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot.snapshot_type = "full"
    path.write_text(plot.get_snapshot(), encoding="utf-8")
    return path

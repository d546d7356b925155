"""Image panels for notebooks: capture grids, mask overlays, IoU charts and tables, RGBA over a checkerboard.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state), so they work headless and from
threads; Jupyter's inline backend displays a returned Figure. Every figure helper takes ``path=`` to save it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from recon_kit.data.capture import Capture
from recon_kit.io.images import fit_size, read_rgb, resize_area, resize_nearest
from recon_kit.io.transforms import read_transforms

#: overlay colours (0-255): in the mask only, in the reference (photo foreground) only
ONLY_MASK = np.array([230, 40, 40])
ONLY_REFERENCE = np.array([30, 120, 255])


def save_figure(fig: Figure, path: str | Path | None, dpi: int = 100) -> Figure:
    """Save ``fig`` to ``path`` (parent folders created) when a path is given; returns the figure."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def mask_overlay(rgb: np.ndarray, mask: np.ndarray, reference: np.ndarray | None = None, dim: float = 0.35
                 ) -> np.ndarray:
    """``uint8 [H,W,3]``: the photo, dimmed outside ``mask``; with ``reference`` the disagreement is coloured
    (red: mask only, blue: reference only)."""
    out = rgb.astype(np.float32)
    mask = np.asarray(mask, bool)
    if reference is None:
        out[~mask] *= dim
    else:
        reference = np.asarray(reference, bool)
        out[~mask & ~reference] *= dim
        out[mask & ~reference] = 0.3 * out[mask & ~reference] + 0.7 * ONLY_MASK
        out[~mask & reference] = 0.3 * out[~mask & reference] + 0.7 * ONLY_REFERENCE
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def depth_colors(depth: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """``float [H,W,3]`` colour-coded depth: foreground values stretched over ``cmap``, background black."""
    fg = depth > 0
    out = np.zeros(depth.shape + (3,), np.float32)
    if fg.any():
        lo, hi = float(depth[fg].min()), float(depth[fg].max())
        t = (depth - lo) / max(hi - lo, 1e-12)
        out[fg] = matplotlib.colormaps[cmap](t[fg])[:, :3]
    return out


def checkerboard(height: int, width: int, tile: int = 16, levels: tuple[float, float] = (0.6, 0.85)) -> np.ndarray:
    """``float [H,W]`` grey checkerboard."""
    i, j = np.arange(height)[:, None] // tile, np.arange(width)[None, :] // tile
    return np.where((i + j) % 2 == 0, levels[0], levels[1]).astype(np.float32)


def rgba_on_checkerboard(rgba: np.ndarray, tile: int = 16) -> np.ndarray:
    """``uint8 [H,W,3]``: an 8-bit RGBA image composited over a checkerboard (transparency made visible)."""
    rgb, a = rgba[..., :3].astype(np.float32), rgba[..., 3:4].astype(np.float32) / 255.0
    bg = checkerboard(*rgba.shape[:2], tile=tile)[..., None] * 255.0
    return np.clip(rgb * a + bg * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def _small(a: np.ndarray, max_size: int, nearest: bool = False) -> np.ndarray:
    H, W = a.shape[:2]
    if max(H, W) <= max_size:
        return a
    w, h = fit_size(W, H, max_size)
    return resize_nearest(a, w, h) if nearest else resize_area(a, w, h)


def _hide_axes(axes) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)


COLUMNS = ("rgb", "depth", "mask", "overlay")


def view_grid(capture: Capture, foreground: Mapping[str, np.ndarray] | None = None,
              columns: Sequence[str] = COLUMNS, max_size: int = 256, cell: float = 2.2,
              path: str | Path | None = None) -> Figure:
    """One row per view: photo, depth (colour-coded), mask, and the mask over the photo.

    With ``foreground`` (e.g. :func:`recon_kit.data.foreground_masks`) the overlay colours where the mask and
    the photo's foreground disagree (red: mask only, blue: photo only). Missing data shows an empty panel.
    """
    bad = [c for c in columns if c not in COLUMNS]
    if bad:
        raise ValueError(f"unknown columns {bad}; choose from {COLUMNS}")
    n = len(capture.views)
    fig = Figure(figsize=(cell * len(columns), cell * n), layout="constrained")
    axes = fig.subplots(n, len(columns), squeeze=False)
    for r, v in enumerate(capture.views):
        rgb = _small(v.rgb, max_size)
        mask = None if v.mask is None else _small(v.mask, max_size, nearest=True)
        ref = None if foreground is None or v.name not in foreground else _small(foreground[v.name], max_size, True)
        for c, col in enumerate(columns):
            ax = axes[r, c]
            if col == "rgb":
                ax.imshow(rgb)
            elif col == "depth" and v.depth is not None:
                ax.imshow(depth_colors(_small(v.depth, max_size, nearest=True)))
            elif col == "mask" and mask is not None:
                ax.imshow(mask, cmap="gray", vmin=0, vmax=1)
            elif col == "overlay" and mask is not None:
                ax.imshow(mask_overlay(rgb, mask, ref))
            else:
                ax.text(0.5, 0.5, f"no {col}", ha="center", va="center", transform=ax.transAxes, color="0.5")
            if r == 0:
                ax.set_title(col)
            if c == 0:
                ax.set_ylabel(v.name)
    _hide_axes(axes)
    return save_figure(fig, path)


def iou_table(before: Mapping[str, float], after: Mapping[str, float] | None = None,
              capture: Capture | None = None):
    """``pandas.DataFrame`` indexed by view: IoU before (and after alignment, with the gain and, given the
    aligned ``capture``, the fitted scale and shift in pixels), plus a ``mean`` row."""
    import pandas as pd

    df = pd.DataFrame({"iou_before": pd.Series(dict(before), dtype=float)})
    if after is not None:
        df["iou_after"] = pd.Series(dict(after), dtype=float)
        df["gain"] = df["iou_after"] - df["iou_before"]
    if capture is not None:
        for v in capture.views:
            if v.similarity is not None and v.name in df.index:
                W, H = v.size
                df.loc[v.name, "scale"] = v.similarity.scale
                df.loc[v.name, "shift_x_px"] = v.similarity.tx * W
                df.loc[v.name, "shift_y_px"] = v.similarity.ty * H
    df.index.name = "view"
    df.loc["mean"] = df.mean(numeric_only=True)
    return df


def iou_bar(before: Mapping[str, float], after: Mapping[str, float] | None = None, path: str | Path | None = None
            ) -> Figure:
    """Grouped bar chart of per-view IoU, before (and after) alignment."""
    names = list(before)
    x = np.arange(len(names))
    fig = Figure(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.0), layout="constrained")
    ax = fig.subplots()
    width = 0.4 if after is not None else 0.7
    ax.bar(x - (width / 2 if after is not None else 0), [before[n] for n in names], width, label="before")
    if after is not None:
        ax.bar(x + width / 2, [after.get(n, np.nan) for n in names], width, label="after alignment")
        ax.legend(loc="lower right")
    lo = min([before[n] for n in names] + ([after[n] for n in names if n in after] if after else []) + [1.0])
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_xticks(x, names)
    ax.set_ylabel("IoU depth mask vs photo")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _dataset_frames(dataset_dir: Path) -> tuple[Path, dict]:
    path = dataset_dir / "transforms.json" if dataset_dir.is_dir() else dataset_dir
    return path, json.loads(path.read_text())


def rgba_grid(dataset_dir: str | Path, max_views: int = 12, ncols: int = 6, max_size: int = 256, cell: float = 2.2,
              path: str | Path | None = None) -> Figure:
    """The RGBA training images of a prepared dataset folder, composited over a checkerboard."""
    tpath, meta = _dataset_frames(Path(dataset_dir))
    frames = meta["frames"][:max_views]
    ncols = max(1, min(ncols, len(frames)))
    nrows = -(-len(frames) // ncols)
    fig = Figure(figsize=(cell * ncols, cell * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, frame in zip(axes.ravel(), frames):
        rgb, alpha = read_rgb(tpath.parent / frame["file_path"])
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8) if alpha is None else alpha])
        ax.imshow(rgba_on_checkerboard(_small(rgba, max_size)))
        ax.set_title(Path(frame["file_path"]).stem)
    _hide_axes(axes)
    return save_figure(fig, path)


def transforms_table(dataset_dir: str | Path):
    """``pandas.DataFrame``, one row per camera of a transforms.json: files, size, position, field of view."""
    import pandas as pd

    tpath, _ = _dataset_frames(Path(dataset_dir))
    rows = []
    for c in read_transforms(tpath):
        depth = c.meta.get("depth_file_path")
        rows.append({"view": c.name, "file_path": c.meta["file_path"].relative_to(tpath.parent).as_posix(),
                     "depth_file_path": "" if depth is None else depth.relative_to(tpath.parent).as_posix(),
                     "width": c.width, "height": c.height, "fov_x_deg": float(np.degrees(c.camera_angle_x)),
                     "x": c.position[0], "y": c.position[1], "z": c.position[2]})
    return pd.DataFrame(rows).set_index("view")


def show(image: np.ndarray, title: str | None = None, width: float = 8.0) -> Figure:
    """One image (uint8 or float in [0,1]) as a figure without axes."""
    h, w = image.shape[:2]
    fig = Figure(figsize=(width, width * h / w))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def loss_curves(history: Sequence[Mapping], keys: Sequence[str] | None = None, path: str | Path | None = None) -> Figure:
    """Loss terms (log scale) against the global iteration, pass 2 shaded; one line per term."""
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot(111)
    if history:
        its = [h["global_it"] for h in history]
        skip = {"pass", "it", "global_it", "time", "lr_pos", "lr_mat"}
        names = keys or [k for k in history[0] if k not in skip]
        for name in names:
            ax.plot(its, [max(h.get(name, np.nan), 1e-12) for h in history], label=name, lw=1.6 if name == "total" else 0.9)
        p2 = [h["global_it"] for h in history if h["pass"] == "pass2"]
        if p2:
            ax.axvspan(p2[0], max(its), color="0.92", zorder=0)
            ax.text(p2[0], 1.0, " pass 2", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=4)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    return save_figure(fig, path)

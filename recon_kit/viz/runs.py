"""Comparing runs: metric-vs-parameter plots, overlaid loss curves, the same view side by side, and the
training animation (``training.gif`` / ``training.mp4``) of a run folder.

Figures are :class:`matplotlib.figure.Figure` objects (no pyplot state): they work headless, Jupyter displays a
returned Figure, and every figure helper takes ``path=`` to save it. Inputs are the table of
:func:`recon_kit.runs.load_runs` (or a runs folder / list of run folders where noted).
"""

from __future__ import annotations

import json
import logging
import math
import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from recon_kit.runs import table as rk_table
from recon_kit.runs.animation import GIF_NAME, MP4_NAME, label_frame, training_animation  # noqa: F401
from recon_kit.runs.folder import snapshot_key, snapshots  # noqa: F401
from recon_kit.viz.images import save_figure

log = logging.getLogger(__name__)

__all__ = ["training_animation", "label_frame", "metric_vs_params", "loss_overlay", "last_snapshot",
           "split_snapshot", "compare_views", "GIF_NAME", "MP4_NAME"]


# ---- training animation ---------------------------------------------------------------------------------
# ---- tables to figures --------------------------------------------------------------------------------
def _as_table(runs):
    if hasattr(runs, "columns"):
        return runs
    return rk_table.load_runs(runs)


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def _short(name: str, width: int = 26) -> str:
    return "\n".join(textwrap.wrap(name.replace("__", " "), width)) or name


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return str(int(v))  # 32, not 32.0 (a column with a failed run's NaN is float)
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


DEFAULT_PLOT_METRICS = ("train_psnr", "test_psnr", "train_iou", "wall_s")


def metric_vs_params(table, metrics: Sequence[str] | None = None, params: Sequence[str] | None = None,
                     path: str | Path | None = None) -> Figure:
    """One panel per (metric, parameter): the metric of each finished run against the parameter's value, one
    line per combination of the other parameters (a grid sweep draws its interaction plot)."""
    table = _as_table(table)
    done = table[table["status"] == "finished"] if "status" in table.columns else table
    params = list(params) if params is not None else rk_table.param_columns(table)
    if metrics is None:
        metrics = [m for m in DEFAULT_PLOT_METRICS if m in done.columns and done[m].notna().any()]
    metrics = list(metrics)
    nr, nc = max(1, len(metrics)), max(1, len(params))
    fig = Figure(figsize=(3.6 * nc + 1.2, 2.7 * nr), layout="constrained")
    axes = fig.subplots(nr, nc, squeeze=False)
    if done.empty or not params or not metrics:
        ax = axes[0][0]
        why = "no finished runs" if done.empty else ("no parameters differ between the runs" if not params
                                                      else "no metrics")
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_figure(fig, path)
    for j, param in enumerate(params):
        others = [p for p in params if p != param]
        xs_all = [v for v in done[param].tolist()]
        numeric = all(_is_number(v) for v in xs_all)
        cats = list(dict.fromkeys(_hashable(v) for v in xs_all))
        groups: dict[tuple, list] = {}
        for name, row in done.iterrows():
            key = tuple(_hashable(row[o]) for o in others)
            groups.setdefault(key, []).append(row)
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for key, rows in groups.items():
                pts = [(row[param], row[metric]) for row in rows if _is_number(row[metric])]
                if not pts:
                    continue
                if numeric:
                    pts.sort(key=lambda t: float(t[0]))
                    x = [float(a) for a, _ in pts]
                else:
                    x = [cats.index(_hashable(a)) for a, _ in pts]
                label = ", ".join(f"{o}={_fmt(k)}" for o, k in zip(others, key)) or None
                ax.plot(x, [float(b) for _, b in pts], "o-", ms=4, lw=1.2, label=label)
            if numeric:
                xv = [float(v) for v in xs_all]
                if min(xv) > 0 and max(xv) / min(xv) >= 10:
                    ax.set_xscale("log")
                ax.set_xticks(sorted(set(xv)))
                ax.set_xticklabels([_fmt(v) for v in sorted(set(xv))])
            else:
                ax.set_xticks(range(len(cats)))
                ax.set_xticklabels([str(c) for c in cats])
            if i == nr - 1:
                ax.set_xlabel(param)
            if j == 0:
                ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if i == 0 and others and len(groups) > 1:
                ax.legend(fontsize=7)
    return save_figure(fig, path)


def loss_overlay(runs, keys: Sequence[str] = ("total",), logy: bool = True, path: str | Path | None = None,
                 histories: Mapping[str, Any] | None = None) -> Figure:
    """The loss terms ``keys`` of every run against the global iteration, one line per run (pass 2's start
    dotted); ``runs``: a table from load_runs, a runs folder or a list of run folders."""
    import pandas as pd

    if histories is None:
        histories = rk_table.load_histories(_as_table(runs))
    keys = list(keys)
    fig = Figure(figsize=(8, 3.2 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(histories))]
    for ax, key in zip(axes, keys):
        drawn = 0
        for color, (name, hist) in zip(colors, histories.items()):
            hist = pd.DataFrame(hist)
            if hist.empty or key not in hist.columns or "global_it" not in hist.columns:
                continue
            y = hist[key].astype(float)
            ax.plot(hist["global_it"], y.clip(lower=1e-12) if logy else y, color=color, lw=1.2,
                    label=_short(name, 60))
            drawn += 1
            if "pass" in hist.columns:
                p2 = hist.loc[hist["pass"] == "pass2", "global_it"]
                if len(p2):
                    ax.axvline(float(p2.iloc[0]), color=color, ls=":", lw=0.8)
        if logy and drawn:
            ax.set_yscale("log")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no run logged {key!r}", ha="center", va="center", transform=ax.transAxes)
    axes[-1].set_xlabel("iteration (dotted: pass 2 starts)")
    return save_figure(fig, path)


# ---- the same view, run by run ------------------------------------------------------------------------
def last_snapshot(run_dir: str | os.PathLike[str]) -> tuple[Path, int, int] | None:
    """``(path, pass number, iteration)`` of the run's last training snapshot, or None."""
    shots = snapshots(run_dir)
    if not shots:
        return None
    n, it = snapshot_key(shots[-1])
    return shots[-1], n, it


def split_snapshot(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A snapshot (``render | reference`` side by side) as its two halves."""
    w = image.shape[1] // 2
    return image[:, :w, :3], image[:, w:2 * w, :3]


def _dataset_reference(dataset_dir: str | Path, resolution: int | None, background: str, size: tuple[int, int]
                       ) -> np.ndarray:
    """View 0 of the dataset (the view snapshots show) over ``background``, sRGB uint8 at ``size`` (W, H)."""
    from PIL import Image

    from recon_kit.color import linear_to_srgb
    from recon_kit.data.dataset import load_viewset

    views = load_viewset(dataset_dir, resolution=resolution)
    rgb, m = views.rgb_linear[0].numpy(), views.mask[0].numpy()[..., None]
    bg = 1.0 if background == "white" else 0.0
    srgb = linear_to_srgb(np.clip(rgb * m + bg * (1 - m), 0, 1))
    img = Image.fromarray((srgb * 255 + 0.5).astype(np.uint8))
    return np.asarray(img.resize(size, Image.BOX) if img.size != size else img)


def compare_views(runs, dataset_dir: str | os.PathLike[str] | None = None, per_row: int = 4,
                  error_max: float | None = None, path: str | Path | None = None) -> Figure:
    """The first training view as each run last rendered it (its final snapshot), beside the reference, with
    per-pixel error maps (mean absolute sRGB difference) underneath. With ``dataset_dir`` the reference (and
    the errors) come from the dataset's image, so runs trained at different resolutions share one reference."""
    from PIL import Image

    table = _as_table(runs)
    items = []
    for name, row in table.iterrows():
        snap = last_snapshot(row["path"])
        if snap is None:
            items.append((str(name), None, None, row.get("status"), None))
            continue
        render, ref = split_snapshot(np.asarray(Image.open(snap[0]).convert("RGB")))
        items.append((str(name), render, ref, f"pass {snap[1]} it {snap[2]}", row))
    shown = [it for it in items if it[1] is not None]
    missing = [f"{name} ({note or 'no snapshot'})" for name, render, _, note, _ in items if render is None]
    items = shown or items[:1]
    reference = shown[0][2] if shown else None
    if dataset_dir and shown:
        first = shown[0][4]
        res = first.get("data.resolution")
        bg = first.get("data.val_background") or "white"
        h, w = reference.shape[:2]
        try:
            reference = _dataset_reference(dataset_dir, int(res) if _is_number(res) else None, bg, (w, h))
        except Exception as err:  # noqa: BLE001 - fall back to the snapshots' own reference half
            warnings.warn(f"reference from {dataset_dir} not loaded ({err}); using the snapshots'", RuntimeWarning)
    errors = []
    for name, render, ref, note, row in items:
        if render is None:
            errors.append(None)
            continue
        target = reference if dataset_dir and reference is not None else ref
        if target.shape != render.shape:
            render = np.asarray(Image.fromarray(render).resize(target.shape[1::-1], Image.BILINEAR))
        errors.append(np.abs(render.astype(np.float32) - target.astype(np.float32)).mean(-1) / 255.0)
    if error_max is None:
        vals = np.concatenate([e.ravel() for e in errors if e is not None]) if shown else np.zeros(1)
        vals = vals[vals > 0] if (vals > 0).any() else vals
        error_max = max(float(np.percentile(vals, 99.5)), 1e-3)

    n = max(1, len(items))
    per_row = max(1, min(per_row, n))
    groups = math.ceil(n / per_row)
    fig = Figure(figsize=(2.4 * (per_row + 1), 2.6 * 2 * groups), layout="constrained")
    axes = fig.subplots(2 * groups, per_row + 1, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    im = None
    for g in range(groups):
        top, bottom = axes[2 * g], axes[2 * g + 1]
        if reference is not None:
            top[0].imshow(reference)
            top[0].set_title("reference" + (" (dataset)" if dataset_dir else ""), fontsize=8)
        bottom[0].text(0.5, 0.5, f"error maps\nmean |render - ref|\n0 .. {error_max:.2f}", ha="center",
                       va="center", fontsize=8, transform=bottom[0].transAxes)
        for k, (name, render, ref, note, row) in enumerate(items[g * per_row:(g + 1) * per_row]):
            err = errors[g * per_row + k]
            ax_r, ax_e = top[k + 1], bottom[k + 1]
            if render is None:
                ax_r.text(0.5, 0.5, f"{_short(name)}\n({note or 'no snapshot'})", ha="center", va="center",
                          fontsize=7, transform=ax_r.transAxes)
                continue
            ax_r.imshow(render)
            ax_r.set_title(_short(name), fontsize=7)
            im = ax_e.imshow(err, cmap="magma", vmin=0.0, vmax=error_max)
            ax_e.set_title(f"{note}\nmean err {err.mean():.3f}", fontsize=7)
    if missing:
        fig.suptitle("not shown: " + "; ".join(missing), fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), shrink=0.6, label="mean abs error (sRGB)")
    return save_figure(fig, path)

"""Mesh and material views for notebooks: a textured k3d scene (savable as offline HTML) and matplotlib panels.

k3d loads mesh textures with three.js ``flipY = false``, so UV (0, 0) samples the first image row: the
internal convention, passed through unflipped.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Union

import numpy as np
import torch
from matplotlib.figure import Figure

from recon_kit.color import linear_to_srgb
from recon_kit.io.meshfile import split_uv_seams
from recon_kit.viz.k3d_view import open_upright
from recon_kit.mesh import Mesh, vertex_normals

if TYPE_CHECKING:  # annotations only; imported where used
    import k3d

ArrayLike = Union[np.ndarray, torch.Tensor]


@contextmanager
def _quiet_k3d() -> Iterator[None]:
    """Silence k3d/traittypes' dtype-coercion warnings (float64 -> float32, int64 -> uint32)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not match required type.*", category=UserWarning)
        yield


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _srgb_uint8(img: ArrayLike) -> np.ndarray:
    """An sRGB image as uint8 [H,W,3|4]; floats are read as sRGB values in [0, 1]."""
    a = _np(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.dtype == np.uint8:
        return a
    return np.round(np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def k3d_mesh_plot(mesh: Mesh, kd_srgb_uint8: ArrayLike | None = None, show_wireframe: bool = False,
                  show_normals: bool = False, max_normals: int = 5000, height: int = 512) -> "k3d.plot.Plot":
    """A k3d plot of the mesh, textured with ``kd_srgb_uint8`` when given and the mesh has UVs.

    Objects are named ``mesh``, ``wireframe`` and ``normals``; the latter two are always added and only their
    ``visible`` flag follows the arguments, so a widget or the k3d menu can toggle them later. Normals are
    shown as line segments for at most ``max_normals`` evenly strided vertices, 3 % of the bounding-box diagonal
    long.
    """
    import k3d

    v_pos = _np(mesh.v_pos).astype(np.float32)
    tris = _np(mesh.t_pos_idx).astype(np.uint32)
    nrm = _np(vertex_normals(mesh.v_pos.detach().float(), mesh.t_pos_idx)).astype(np.float32)
    diag = float(np.linalg.norm(np.ptp(v_pos, axis=0))) if len(v_pos) else 1.0
    with _quiet_k3d():
        plot = k3d.plot(height=height, grid_visible=False, snapshot_type="full")
        if kd_srgb_uint8 is not None and mesh.has_uv:
            positions, uvs, faces, src = split_uv_seams(mesh)
            plot += k3d.mesh(positions, faces, normals=nrm[src], uvs=uvs, texture=_png(_srgb_uint8(kd_srgb_uint8)),
                             texture_file_format="png", color=0xFFFFFF, flat_shading=False, name="mesh")
        else:
            plot += k3d.mesh(v_pos, tris, normals=nrm, color=0xB0B0B0, flat_shading=False, name="mesh")
        plot += k3d.mesh(v_pos, tris, wireframe=True, color=0x202020, visible=show_wireframe, name="wireframe")
        step = max(1, int(np.ceil(len(v_pos) / max(max_normals, 1))))
        plot += k3d.vectors(v_pos[::step], nrm[::step] * (0.03 * diag), color=0x1F77B4, use_head=False,
                            visible=show_normals, name="normals")
    return open_upright(plot, v_pos)


def save_html(plot: "k3d.plot.Plot", path: str | Path) -> Path:
    """Write ``plot`` as a standalone HTML snapshot (k3d's JS embedded, so it opens offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = plot.snapshot_type
    try:
        plot.snapshot_type = "full"
        with _quiet_k3d():
            html = plot.get_snapshot()
    finally:
        plot.snapshot_type = previous
    path.write_text(html, encoding="utf-8")
    return path


def _display_colour(img: ArrayLike, linear_float: bool) -> np.ndarray:
    """uint8 images as they are; float ones converted from linear to sRGB when ``linear_float``."""
    a = _np(img)
    if a.dtype == np.uint8:
        return a[..., :3]
    a = a.astype(np.float32)[..., :3]
    return np.clip(linear_to_srgb(a) if linear_float else a, 0.0, 1.0)


def texture_panel(kd: ArrayLike | None, ks: ArrayLike | None, normal: ArrayLike | None,
                  size: float = 4.0) -> Figure:
    """Base colour, ks and normal map side by side.

    Float ``kd`` is taken as linear (shown sRGB-encoded), float ``ks`` as stored (R occlusion, G roughness,
    B metallic), float ``normal`` in [-1, 1] (shown as (n + 1) / 2); uint8 images are shown as they are.
    """
    panels = [("kd (base colour)", None if kd is None else _display_colour(kd, True)),
              ("ks (R occl., G rough., B metal.)", None if ks is None else _display_colour(ks, False)),
              ("normal (tangent space)", None if normal is None else
               (_np(normal)[..., :3] if _np(normal).dtype == np.uint8
                else np.clip((_np(normal)[..., :3].astype(np.float32) + 1.0) * 0.5, 0.0, 1.0)))]
    fig = Figure(figsize=(3 * size, size), layout="constrained")
    for ax, (title, img) in zip(fig.subplots(1, 3), panels):
        if img is None:
            ax.text(0.5, 0.5, "missing", ha="center", va="center")
        else:
            ax.imshow(img, interpolation="nearest")
            title = f"{title}\n{img.shape[1]}x{img.shape[0]}"
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    return fig


def tonemap(latlong: ArrayLike, exposure: float = 0.0) -> np.ndarray:
    """Linear HDR -> displayable sRGB in [0, 1]: exposure in stops, Reinhard ``x / (1 + x)``, sRGB encoding."""
    x = np.maximum(_np(latlong).astype(np.float32)[..., :3], 0.0) * (2.0 ** exposure)
    return linear_to_srgb(x / (1.0 + x))


def probe_panel(latlong: ArrayLike, exposure: float = 0.0, size: float = 4.0) -> Figure:
    """The lat-long environment probe, tonemapped (see :func:`tonemap`), with its radiance range in the title."""
    a = _np(latlong).astype(np.float32)
    h, w = a.shape[:2]
    fig = Figure(figsize=(2 * size, size + 0.4), layout="constrained")
    ax = fig.subplots()
    ax.imshow(tonemap(a, exposure), interpolation="bilinear")
    ax.set_axis_off()
    ax.set_title(f"environment {w}x{h}, radiance min {a.min():.3g} / mean {a.mean():.3g} / max {a.max():.3g}, "
                 f"exposure {exposure:+g} EV", fontsize=9)
    return fig

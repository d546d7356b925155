"""Re-render an exported mesh: relit turntables (GIF / MP4), reference | render | error grids, and the
texture and probe panels, from a run folder read back with :func:`recon_kit.runs.run.load_run`.

Rendering is the training pipeline's (:class:`recon_kit.render.MeshRenderer`, split-sum PBR with the baked
textures as a :class:`~recon_kit.model.materials.TexturedMaterial`), batched over views, so a 24-frame turntable at
192^2 takes seconds on a 2-core CPU with the PyTorch rasteriser.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from recon_kit.runs import run as rk_run
from recon_kit.cameras import Camera, orbit_views
from recon_kit.data.dataset import ViewSet
from recon_kit.color import linear_to_srgb
from recon_kit.mesh import Mesh
from recon_kit.render import MeshRenderer, constant_material, get_rasterizer, make_background

__all__ = ["turntable", "render_cameras", "orbit_cameras", "comparison_grid",
           "comparison_images", "texture_panel", "probe_panel", "frames_strip", "camera_correction_grid"]

#: Views rendered in one batch (bounds the PyTorch rasteriser's memory at larger resolutions).
BATCH = 8


def _unpack(source: Any, light_res: int | None = None, device: str | torch.device = "cpu"):
    """(mesh, material, light, config) of a Run, a run folder path, or a (mesh, textures, light) tuple."""

    if isinstance(source, (str, Path)):
        source = rk_run.load_run(source, light_res=light_res, device=device)
    if isinstance(source, rk_run.Run):
        return source.mesh.to(device), source.material(device), source.light, source.config
    if isinstance(source, (tuple, list)) and len(source) == 3:
        mesh, textures, light = source
        if hasattr(textures, "kd") and callable(textures):   # already a TexturedMaterial
            material = textures.to(device)
        else:
            material = rk_run.textured_material(textures, None, device)
        from recon_kit.render.envlight import EnvLight

        if light is not None and not isinstance(light, EnvLight):
            light = rk_run.light_from_latlong(light, light_res or 64, device)
        if light is None and isinstance(textures, dict) and "probe_latlong" in textures:
            light = rk_run.light_from_latlong(textures["probe_latlong"], light_res or 64, device)
        return mesh.to(device), material, light, {}
    raise TypeError(f"expected a Run, a run folder or (mesh, textures, light), got {type(source).__name__}")


def _neutral_light(device) -> Any:
    from recon_kit.render.envlight import EnvLight

    return EnvLight(32, init=1.0, device=device)


def orbit_cameras(mesh: Mesh, n_frames: int = 24, resolution: int = 256, elevation: float = 0.4,
                  fov: float = 0.6, margin: float = 1.05) -> list[Camera]:
    """``n_frames`` cameras circling the mesh about the world y axis (:func:`recon_kit.cameras.orbit_views`),
    aimed at its bounding-box centre, far enough that the bounding sphere fills the view with ``margin``."""
    v = mesh.v_pos.detach().cpu().double().numpy()
    centre = 0.5 * (v.min(0) + v.max(0))
    radius = max(float(np.linalg.norm(v - centre, axis=1).max()), 1e-6) if len(v) else 1.0
    distance = margin * radius / math.sin(0.5 * fov)
    cams = []
    for i, c2w in enumerate(orbit_views(n_frames, distance, elevation)):
        c2w = c2w.copy()
        c2w[:3, 3] += centre
        cams.append(Camera.from_fov(c2w, fov, resolution, resolution, name=f"orbit_{i:03d}",
                                    near=max(1e-3, 0.05 * distance), far=10.0 * distance))
    return cams


@torch.no_grad()
def render_cameras(source: Any, cameras: Sequence[Camera], background: str = "white", relight: Any = None,
                   bsdf: str = "pbr", light_res: int | None = None, device: str | torch.device = "cpu",
                   batch: int = BATCH) -> dict[str, np.ndarray]:
    """Render the textured mesh of ``source`` (see :func:`turntable`) for ``cameras`` (all of one size).

    Returns ``rgb_linear`` float32 [N,H,W,3] over ``background`` and ``alpha`` float32 [N,H,W]."""

    mesh, material, light, _ = _unpack(source, light_res, device)
    if relight is not None:
        light = rk_run.light_from_latlong(relight, light_res or (light.res if light is not None else 64), device)
    if light is None:
        light = _neutral_light(device)
    light = light.to(device)
    renderer = MeshRenderer(get_rasterizer("auto", device))
    out = renderer.render_views(mesh, cameras, material.material if mesh.has_uv else constant_material(), light,
                                background, bsdf=bsdf, batch=batch)
    return {"rgb_linear": out["rgb_linear"].float().cpu().numpy(), "alpha": out["alpha"][..., 0].float().cpu().numpy()}


def _to_uint8(rgb_linear: np.ndarray) -> np.ndarray:
    return (np.clip(linear_to_srgb(np.clip(rgb_linear, 0.0, 1.0)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def turntable(source: Any, n_frames: int = 24, resolution: int = 256, elevation: float = 0.4,
              relight: Any = None, background: str = "white", exposure: float = 0.0, fov: float = 0.6,
              bsdf: str = "pbr", light_res: int | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """Frames ``uint8 [n_frames, resolution, resolution, 3]`` (sRGB) of the relit textured mesh, the camera
    circling the world y axis at ``elevation`` radians.

    ``source``: a :class:`recon_kit.runs.run.Run`, a run folder, or ``(mesh, textures, light)`` with textures as
    :func:`recon_kit.io.meshfile.load_obj_folder` returns them (or a TexturedMaterial) and light an EnvLight, a
    lat-long HDR array or None (the textures' ``probe_latlong``, else a uniform white light).
    ``relight``: another environment (lat-long HDR array, ``.hdr`` path or EnvLight) replacing the learned one.
    ``exposure`` in stops scales the linear image before sRGB encoding. ``bsdf``: ``pbr``, ``kd`` (albedo only)
    or ``normal``.
    """
    mesh, material, light, config = _unpack(source, light_res, device)
    cams = orbit_cameras(mesh, n_frames, resolution, elevation, fov)
    out = render_cameras((mesh, material, light), cams, background, relight, bsdf, light_res, device)
    rgb = out["rgb_linear"]
    if exposure:
        a = out["alpha"][..., None]
        bg = make_background(background, (1, 1, 1), "cpu").numpy()
        rgb = (rgb - bg * (1 - a)) * (2.0 ** exposure) + bg * (1 - a)
    return _to_uint8(rgb)


def frames_strip(frames: np.ndarray, n: int = 6) -> np.ndarray:
    """``n`` evenly spaced frames side by side (a still of a turntable for reports)."""
    frames = np.asarray(frames)
    idx = np.linspace(0, len(frames), n, endpoint=False).astype(int)
    return np.concatenate(list(frames[idx]), axis=1)


def comparison_images(source: Any, views: ViewSet, max_views: int = 4, max_size: int = 256,
                      background: str | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """sRGB float reference, render and per-pixel error (mean |difference| over channels) for up to
    ``max_views`` evenly spaced views of ``views``, at most ``max_size`` pixels on a side; with per-view PSNR."""
    from recon_kit.evaluate import psnr

    if isinstance(source, (str, Path)):
        source = rk_run.load_run(source, device=device)
    if background is None:
        background = source.val_background if isinstance(source, rk_run.Run) else "white"
    n = len(views)
    idx = sorted(set(np.linspace(0, n, min(max_views, n), endpoint=False).astype(int).tolist()))
    sub = views.subset(idx)
    if max(sub.width, sub.height) > max_size:
        from recon_kit.io.images import fit_size

        sub = sub.resized(*fit_size(sub.width, sub.height, max_size))
    out = render_cameras(source, sub.cameras, background=background, device=device)
    bg = 1.0 if background == "white" else 0.0
    m = sub.mask[..., None].cpu().numpy()
    ref = linear_to_srgb(np.clip(sub.rgb_linear.cpu().numpy() * m + bg * (1 - m), 0, 1))
    pred = linear_to_srgb(np.clip(out["rgb_linear"], 0, 1))
    err = np.abs(pred - ref).mean(-1)
    return {"names": [sub.names[i] for i in range(len(sub))], "reference": ref, "render": pred, "error": err,
            "psnr": [psnr(pred[i], ref[i]) for i in range(len(sub))]}


def comparison_grid(source: Any, views: ViewSet | str | Path, max_views: int = 4, max_size: int = 256,
                    cell: float = 2.6, split: str = "train", device: str | torch.device = "cpu") -> Figure:
    """One row per view: reference | render | error map (mean absolute sRGB difference, 0..0.5 colour scale).

    ``views``: a :class:`~recon_kit.data.dataset.ViewSet` or a prepared dataset folder (loaded with ``split``)."""
    if isinstance(views, (str, Path)):
        from recon_kit.data.dataset import load_viewset

        views = load_viewset(views, split=split)  # the largest prepared size; reduced to max_size below
    c = comparison_images(source, views, max_views, max_size, device=device)
    rows = len(c["names"])
    fig = Figure(figsize=(3 * cell + 0.6, cell * rows), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    im = None
    for r in range(rows):
        for col, (key, title) in enumerate((("reference", "reference"), ("render", "render"),
                                            ("error", "|error|"))):
            ax = axes[r, col]
            if key == "error":
                im = ax.imshow(c["error"][r], cmap="magma", vmin=0.0, vmax=0.5, interpolation="nearest")
                ax.set_title(f"{title}  PSNR {c['psnr'][r]:.1f} dB", fontsize=9)
            else:
                ax.imshow(c[key][r], interpolation="nearest")
                ax.set_title(f"{c['names'][r]}: {title}" if col == 0 else title, fontsize=9)
            ax.set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.8, label="mean |sRGB difference|")
    return fig


def camera_correction_grid(run: Any, views: ViewSet | str | Path, max_views: int = 4, max_size: int = 256,
                           cell: float = 2.6, device: str | torch.device = "cpu") -> Figure | None:
    """One row per view: photo | render under the cameras as written | render under the refined cameras (the
    run's ``cameras_corrected.json``, written by :func:`recon_kit.runs.run.finish` when ``cameras.refine`` was
    on), each render titled with its PSNR. None when the run has no corrected cameras."""
    run = rk_run.load_run(run, device=device) if isinstance(run, (str, Path)) else run
    if not (run.run_dir / rk_run.CORRECTED_CAMERAS).is_file():
        return None
    if isinstance(views, (str, Path)):
        from recon_kit.data.dataset import load_viewset

        views = load_viewset(views, resolution=run.resolution)
    refined = rk_run.corrected_cameras(run.run_dir, views)
    written = comparison_images(run, views, max_views, max_size, device=device)
    fixed = comparison_images(run, ViewSet(views.names, refined, views.rgb_linear, views.mask, views.depth),
                              max_views, max_size, device=device)
    rows = len(written["names"])
    fig = Figure(figsize=(3 * cell, cell * rows), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        cells = ((written["reference"][r], f"{written['names'][r]}: photo"),
                 (written["render"][r], f"as written  {written['psnr'][r]:.1f} dB"),
                 (fixed["render"][r], f"as refined  {fixed['psnr'][r]:.1f} dB"))
        for ax, (image, title) in zip(axes[r], cells):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    return fig


def texture_panel(source: Any, size: float = 4.0) -> Figure:
    """The run's kd / ks / normal maps side by side (:func:`recon_kit.viz.mesh.texture_panel`)."""
    from recon_kit.viz.mesh import texture_panel as _panel

    textures = _textures_of(source)
    return _panel(textures.get("kd_linear"), textures.get("ks"), textures.get("normal_ts"), size=size)


def probe_panel(source: Any, exposure: float = 0.0, size: float = 4.0) -> Figure:
    """The run's environment probe as a tonemapped lat-long image (:func:`recon_kit.viz.mesh.probe_panel`)."""
    from recon_kit.viz.mesh import probe_panel as _panel

    probe = _textures_of(source).get("probe_latlong")
    if probe is None:
        raise ValueError("the run has no probe.hdr (exported without a light)")
    return _panel(probe, exposure=exposure, size=size)


def _textures_of(source: Any) -> dict:

    if isinstance(source, (str, Path)):
        source = rk_run.load_run(source)
    if isinstance(source, rk_run.Run):
        return source.textures
    if isinstance(source, dict):
        return source
    raise TypeError(f"expected a Run, a run folder or a textures dict, got {type(source).__name__}")

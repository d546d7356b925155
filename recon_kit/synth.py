"""Synthetic multi-view captures with ground truth: a procedural demo object, and textured meshes (spot)
rendered into the same folder layout as the user's real capture, so the whole kit can run and be measured
without any files.

A capture folder written by :func:`render_capture`::

    multi_views/<view>.png     RGB, sRGB 8-bit, object on a white background (antialiased edges)
    depth_renders/<view>.png   8-bit greyscale depth, 0 = background. Object pixels hold
                               q = round(1 + 254 (d_max - d) / (d_max - d_min)) in 1..255, with d the camera
                               depth (distance along the view axis) and [d_min, d_max] the object's depth range
                               in that view: near is bright. The kit must not rely on this encoding (it fits a
                               scale and offset per view, as for real depth renders of unknown encoding).
    transforms.json            NeRF style: camera_angle_x, w, h, frames with file_path "multi_views/<view>.png"
                               and transform_matrix (camera-to-world, OpenGL axes); "recon_kit" holds metadata
    test/<name>.png            held-out novel views, RGBA (straight alpha = pixel coverage), a prepared split
    test_depth/<name>.npy      float32 metric camera depth of the held-out views, 0 = background
    transforms_test.json       the held-out cameras (file_path "test/<name>.png"; "metric_depth_path" names the
                               .npy file, a key :func:`recon_kit.data.dataset.load_viewset` ignores)
    gt_mesh.obj                the rendered mesh in the cameras' world frame (+ gt_mesh.mtl, gt_texture.png)

Shading is the kit's own split-sum PBR (:class:`recon_kit.render.MeshRenderer`) under a fixed procedural HDR
environment (:func:`demo_environment`), with kd from the texture, ks = (0, 0.5, 0) and flat normals.
"""

from __future__ import annotations


import json
import math
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from recon_kit.cameras import AXIS_VIEWS, Camera, axis_rig, sphere_views, stack_matrices
from recon_kit.color import linear_to_srgb, srgb_to_linear
from recon_kit.io.transforms import transforms_dict
from recon_kit.render.envlight import EnvLight
from recon_kit.render.cubemap import latlong_dirs
from recon_kit.mesh import Mesh, load_mesh, normalize_to_unit
from recon_kit.render import MeshRenderer, get_rasterizer, rasterize_mesh
from recon_kit.render.raster import Rasterizer
from recon_kit.io.images import DataError, encode_depth_uint8
from recon_kit.io.meshfile import write_obj


#: Where the shared read-only assets live: ``../shared`` beside the project root.
SHARED_DIR: Path = Path(__file__).resolve().parents[2] / "shared"


#: Files and folders :func:`render_capture` writes (and, with ``overwrite=True``, replaces).
OUTPUTS: tuple[str, ...] = ("multi_views", "depth_renders", "test", "test_depth", "transforms.json",
                            "transforms_test.json", "gt_mesh.obj", "gt_mesh.mtl", "gt_texture.png")


#: Direction towards the sun of :func:`demo_environment` (front-right-above, so the front view is lit).
SUN_DIRECTION: tuple[float, float, float] = (0.45, 0.75, 0.5)


def _grid_mesh(points: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Triangulate a parametric grid ``points [Nv, Nu, 3]`` with texture coordinates ``uv [Nv, Nu, 2]``.

    Coincident grid points (seams, poles) are welded into one position vertex while the UV vertices stay
    separate, so the surface is closed but the texture has clean seams. Degenerate (pole) triangles are dropped.
    Returns ``(v_pos, t_pos_idx, v_tex, t_tex_idx)``.
    """
    nv, nu = points.shape[:2]
    flat = points.reshape(-1, 3)
    _, first, inverse = np.unique(np.round(flat, 6), axis=0, return_index=True, return_inverse=True)
    idx = np.arange(nv * nu).reshape(nv, nu)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tex = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    pos = inverse.reshape(-1)[tex]
    keep = (pos[:, 0] != pos[:, 1]) & (pos[:, 1] != pos[:, 2]) & (pos[:, 0] != pos[:, 2])
    pos, tex = pos[keep], tex[keep]
    verts = flat[first]
    p0, p1, p2 = verts[pos[:, 0]], verts[pos[:, 1]], verts[pos[:, 2]]
    if np.einsum("ij,ij->i", p0, np.cross(p1, p2)).sum() < 0:  # signed volume: make the winding face outwards
        pos, tex = pos[:, ::-1], tex[:, ::-1]
    return verts, pos, uv.reshape(-1, 2), tex


def _gourd(nu: int, nv: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The body: a surface of revolution about +y with a waist and six vertical grooves (both concave).

    Texture u runs around the body with u = 0.5 facing +z (the front view), v over rows 0.02..0.73 top to bottom.
    """
    t, u = np.meshgrid(np.linspace(0.0, 1.0, nv + 1), np.linspace(0.0, 1.0, nu + 1), indexing="ij")
    theta = 2.0 * math.pi * u + math.pi
    profile = 0.5 * np.sin(math.pi * t) ** 0.55 * (1.0 - 0.32 * np.exp(-((t - 0.62) / 0.11) ** 2)) * (1.0 - 0.25 * t)
    r = profile * (1.0 + 0.08 * np.cos(6.0 * theta) * np.sin(math.pi * t))
    points = np.stack([r * np.sin(theta), -0.75 + 1.5 * t, r * np.cos(theta)], -1)
    return _grid_mesh(points, np.stack([u, 0.02 + 0.71 * (1.0 - t)], -1))


def _handle(nu: int, nv: int, centre=(0.42, 0.05, 0.0), major: float = 0.3, minor: float = 0.065
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A torus in the x-y plane on the +x side, half sunk into the body (a mug handle); UV rows 0.78..0.98."""
    u, s = np.meshgrid(np.linspace(0.0, 1.0, nu + 1), np.linspace(0.0, 1.0, nv + 1), indexing="ij")
    a, b = 2.0 * math.pi * u, 2.0 * math.pi * s
    ring = major + minor * np.cos(b)
    points = np.stack([centre[0] + ring * np.cos(a), centre[1] + ring * np.sin(a), centre[2] + minor * np.sin(b)], -1)
    return _grid_mesh(points, np.stack([u, 0.78 + 0.2 * s], -1))


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Smooth noise in about [0, 1]: a random lattice upsampled bicubically."""
    lattice = torch.tensor(rng.random((1, 1, cells[0] + 1, cells[1] + 1)), dtype=torch.float32)
    return F.interpolate(lattice, size=shape, mode="bicubic", align_corners=True)[0, 0].numpy()


def demo_texture(size: int = 512, seed: int = 0) -> np.ndarray:
    """The demo object's kd atlas, sRGB uint8 ``[size, size, 3]``: bands of stripes, checks and dots on the body
    (with a teal "front" disc at u = 0.5) and diagonal stripes on the handle, modulated by smooth noise.

    No white or grey texels, so a white background is unambiguous in the renders.
    """
    rng = np.random.default_rng(seed)
    c = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(c, c, indexing="ij")
    t = np.clip(1.0 - (v - 0.02) / 0.71, 0.0, 1.0)
    colour = {k: np.array(rgb, np.float32) / 255.0 for k, rgb in {
        "navy": (30, 45, 110), "red": (200, 40, 35), "cream": (235, 215, 170), "yellow": (245, 200, 40),
        "black": (25, 25, 30), "green": (60, 150, 70), "orange": (240, 120, 30), "teal": (40, 160, 170)}.items()}

    def pick(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(cond[..., None], a, b)

    body = pick(np.floor(u * 24) % 2 == 0, colour["red"], colour["cream"])
    checks = pick((np.floor(u * 32) + np.floor(t * 40)) % 2 == 0, colour["black"], colour["yellow"])
    body = pick((t > 0.5) & (t < 0.6), checks, body)
    dots = ((u * 16) % 1 - 0.5) ** 2 + ((t * 20) % 1 - 0.5) ** 2 < 0.09
    body = pick(t >= 0.6, pick(dots, colour["orange"], colour["green"]), body)
    body = pick((t < 0.15) | (t > 0.92), colour["navy"], body)
    ring = np.hypot((u - 0.5) * 2.2, t - 0.32)
    body = pick(ring < 0.12, colour["teal"], pick(ring < 0.15, colour["black"], body))
    body = body * (0.8 + 0.4 * _value_noise(rng, (size, size), (8, 16)))[..., None]
    handle = pick((u * 12 + (v - 0.78) * 10) % 1 < 0.5, colour["yellow"], colour["navy"])
    img = pick(v < 0.755, body, handle)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def demo_object(detail: float = 1.0, texture_size: int = 512, radius: float = 0.8) -> tuple[Mesh, np.ndarray]:
    """A procedural, textured, non-convex object: a grooved gourd with a waist and a mug handle on its +x side.

    It is y-up and its front (a teal disc) faces +z. ``detail`` scales the tessellation (about 16k triangles
    at 1.0). The mesh is centred and scaled so every vertex lies within ``radius`` of the origin. Returns the
    mesh (with UVs, texture convention of :mod:`recon_kit.mesh`) and its kd texture, sRGB uint8 ``[H, W, 3]``.
    """
    if detail <= 0:
        raise ValueError(f"detail must be positive, got {detail}")
    n = lambda k: max(4, int(round(k * detail)))  # noqa: E731
    parts = [_gourd(n(120), n(60)), _handle(n(72), n(16))]
    v_pos, t_pos, v_tex, t_tex = [], [], [], []
    v_off = t_off = 0
    for verts, faces, uv, faces_uv in parts:
        v_pos.append(verts)
        t_pos.append(faces + v_off)
        v_tex.append(uv)
        t_tex.append(faces_uv + t_off)
        v_off, t_off = v_off + len(verts), t_off + len(uv)
    v = np.concatenate(v_pos)
    v = v - 0.5 * (v.min(0) + v.max(0))
    v = v * (radius / np.linalg.norm(v, axis=1).max())
    mesh = Mesh(torch.tensor(v, dtype=torch.float32), torch.tensor(np.concatenate(t_pos), dtype=torch.int64),
                torch.tensor(np.concatenate(v_tex), dtype=torch.float32),
                torch.tensor(np.concatenate(t_tex), dtype=torch.int64))
    return mesh, demo_texture(texture_size)


def demo_environment(res: int = 128, sun_direction: Sequence[float] = SUN_DIRECTION, sun_radiance: float = 150.0
                     ) -> np.ndarray:
    """A fixed procedural HDR sky, lat-long float32 ``[res, 2 res, 3]`` (linear, the convention of
    :func:`recon_kit.render.cubemap.latlong_dirs`): a blue-to-warm-horizon sky gradient, a dim brown ground and a
    bright sun blob (about 4 degrees) towards ``sun_direction``. Keeps the demo free of downloaded probes."""
    d = latlong_dirs(res, 2 * res).numpy().astype(np.float64)
    y = d[..., 1:2]
    zenith, horizon, ground = np.array([0.2, 0.32, 0.6]), np.array([0.75, 0.72, 0.65]), np.array([0.22, 0.18, 0.15])
    up = np.clip(y, 0.0, 1.0) ** 0.6
    sky = horizon * (1.0 - up) + zenith * up
    below = np.clip(-y * 4.0, 0.0, 1.0)
    env = sky * (1.0 - below) + ground * below
    sun = np.asarray(sun_direction, np.float64)
    sun = sun / np.linalg.norm(sun)
    cos = d @ sun
    env = env + sun_radiance * np.exp(-(1.0 - cos) / 0.0025)[..., None] * np.array([1.0, 0.95, 0.85])
    return env.astype(np.float32)


def demo_light(res: int = 32, device: str | torch.device = "cpu") -> EnvLight:
    """:func:`demo_environment` as an :class:`~recon_kit.render.envlight.EnvLight`. A small cube suffices because the
    renders use roughness 0.5 (filtered from 8^2 texels) and the diffuse irradiance, and it is cheap to build."""
    return EnvLight.from_latlong(demo_environment(4 * res), res=res, min_res=8, device=device)


def texture_material(kd_srgb: np.ndarray, roughness: float = 0.5, device: str | torch.device = "cpu") -> Callable:
    """A :data:`~recon_kit.render.renderer.MaterialFn`: mip-mapped kd lookups, ks = (0, roughness, 0), flat normal."""
    tex = srgb_to_linear(torch.tensor(np.asarray(kd_srgb)[..., :3], dtype=torch.float32, device=device) / 255.0)[None]
    ks_value = torch.tensor([0.0, roughness, 0.0], device=device)
    flat = torch.tensor([0.0, 0.0, 1.0], device=device)

    def material(gb, rasterizer: Rasterizer) -> dict:
        if gb.uv is None:
            raise ValueError("texture_material needs a mesh with UVs")
        covered = gb.mask[..., 0] > 0  # look up covered pixels only: the object fills a fraction of the frame
        kd = torch.zeros(*covered.shape, 3, device=gb.uv.device, dtype=gb.uv.dtype)
        kd[covered] = rasterizer.texture(tex, gb.uv[covered][None, None], gb.uv_da[covered][None, None],
                                         filter_mode="linear-mipmap-linear")[0, 0]
        return {"kd": kd, "ks": ks_value.expand_as(kd), "normal": flat.expand_as(kd)}

    return material


def _render(rasterizer: Rasterizer, mesh: Mesh, material: Callable, light: EnvLight, cams: list[Camera],
            background: float, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shaded linear RGB ``[N,H,W,3]`` over a constant background, coverage ``[N,H,W]`` and camera depth
    ``[N,H,W]`` (0 = background) of ``cams`` (all the same size), rendered ``batch`` views at a time."""
    out = MeshRenderer(rasterizer).render_views(mesh, cams, material, light, background, bsdf="pbr", batch=batch)
    return (out["rgb_linear"].clamp(0.0, 1.0).cpu().numpy(), out["alpha"][..., 0].clamp(0.0, 1.0).cpu().numpy(),
            (out["depth"] * out["mask"])[..., 0].cpu().numpy())


def render_depth(rasterizer: Rasterizer, mesh: Mesh, cams: list[Camera], batch: int = 4) -> np.ndarray:
    """Exact camera depth ``[N,H,W]`` (0 = background) of ``cams`` (all the same size), without shading: depth
    maps at another resolution than the photos, and the benchmark's depth bound."""
    H, W = cams[0].height, cams[0].width
    out = []
    with torch.no_grad():
        for s in range(0, len(cams), batch):
            views = stack_matrices(cams[s:s + batch], device=mesh.device)
            gb = rasterize_mesh(rasterizer, mesh, views["mvp"], views["w2c"], (H, W))
            out.append((gb.depth * gb.mask)[..., 0].cpu().numpy())
    return np.concatenate(out)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _check_folder(folder: Path, overwrite: bool) -> None:
    """Refuse to replace existing outputs in ``folder`` unless ``overwrite``."""
    existing = [name for name in OUTPUTS if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder} already holds {existing}; pass overwrite=True to replace them, "
                              "or choose another folder")


def _publish(staging: Path, folder: Path) -> None:
    """Move the outputs from ``staging`` into ``folder`` (replacing old ones), ``multi_views`` last, so a folder
    with ``multi_views/`` is always a complete capture (what :func:`resolve_capture` checks)."""
    for name in sorted(OUTPUTS, key=lambda n: n == "multi_views"):
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if (staging / name).exists():
            (staging / name).rename(target)
    shutil.rmtree(staging)


def render_capture(mesh: Mesh, kd_srgb: np.ndarray, folder: str | Path, resolution: int = 256,
                   depth_resolution: int | None = None, views: Sequence[str] = AXIS_VIEWS,
                   camera_angle_x: float = 0.85, distance: float = 3.0, n_test: int = 0,
                   light: EnvLight | np.ndarray | None = None, seed: int = 0, overwrite: bool = False,
                   batch: int = 4, device: str | torch.device = "cpu") -> Path:
    """Render ``mesh`` (with UVs) and its kd texture (sRGB uint8) as a capture folder (module docstring).

    ``views`` are axis-rig view names (:data:`recon_kit.cameras.AXIS_VIEWS`) seen from ``distance`` with
    ``camera_angle_x``; ``depth_resolution`` (default ``resolution``) sets the depth maps' size, as real
    captures may store depth smaller than the photos. ``n_test`` held-out views look at the origin from random
    directions (:func:`recon_kit.cameras.sphere_views` with ``seed``). ``light``: an EnvLight, a lat-long HDR
    array, or ``None`` for :func:`demo_light`. Existing outputs raise unless ``overwrite=True``.
    """
    if not mesh.has_uv:
        raise ValueError("render_capture needs a mesh with UVs (v_tex, t_tex_idx) to look up kd_srgb")
    folder = Path(folder)
    _check_folder(folder, overwrite)
    out = folder / ".synth.partial"
    if out.exists():
        shutil.rmtree(out)
    for sub in ("multi_views", "depth_renders"):
        (out / sub).mkdir(parents=True)
    mesh = mesh.to(device)
    rasterizer = get_rasterizer("auto", device)
    if light is None:
        light = demo_light(device=device)
    elif not isinstance(light, EnvLight):
        light = EnvLight.from_latlong(np.asarray(light, np.float32), res=32, min_res=8, device=device)
    material = texture_material(kd_srgb, device=device)

    cams = axis_rig(resolution, resolution, camera_angle_x, distance, tuple(views))
    rgb, _, depth = _render(rasterizer, mesh, material, light, cams, 1.0, batch)
    if depth_resolution is not None and depth_resolution != resolution:
        depth = render_depth(rasterizer, mesh, [c.resized(depth_resolution, depth_resolution) for c in cams], batch)
    for cam, im, d in zip(cams, rgb, depth):
        Image.fromarray(_to_uint8(linear_to_srgb(im))).save(out / "multi_views" / f"{cam.name}.png")
        Image.fromarray(encode_depth_uint8(d)).save(out / "depth_renders" / f"{cam.name}.png")
    meta = transforms_dict(cams, [f"multi_views/{c.name}.png" for c in cams], extra={"recon_kit": {
        "synthetic": True, "distance": distance, "depth_encoding": "uint8: 0 = background, "
        "round(1 + 254 (d_max - d) / (d_max - d_min)) per view, d = camera depth", "light": "demo_environment",
        "ks": [0.0, 0.5, 0.0]}})
    (out / "transforms.json").write_text(json.dumps(meta, indent=2))

    if n_test > 0:
        (out / "test").mkdir()
        (out / "test_depth").mkdir()
        test_cams = [Camera.from_fov(c2w, camera_angle_x, resolution, resolution, name=f"{i:03d}")
                     for i, c2w in enumerate(sphere_views(n_test, distance, seed=seed))]
        rgb, alpha, depth = _render(rasterizer, mesh, material, light, test_cams, 0.0, batch)
        straight = rgb / np.maximum(alpha, 1e-6)[..., None]
        for cam, im, a, d in zip(test_cams, straight, alpha, depth):
            rgba = np.dstack([_to_uint8(linear_to_srgb(np.clip(im, 0.0, 1.0))), _to_uint8(a)])
            Image.fromarray(rgba).save(out / "test" / f"{cam.name}.png")
            np.save(out / "test_depth" / f"{cam.name}.npy", d.astype(np.float32))
        meta = transforms_dict(test_cams, [f"test/{c.name}.png" for c in test_cams],
                               extra={"recon_kit": {"synthetic": True, "split": "test", "seed": seed}})
        for frame, cam in zip(meta["frames"], test_cams):
            frame["metric_depth_path"] = f"test_depth/{cam.name}.npy"
        (out / "transforms_test.json").write_text(json.dumps(meta, indent=2))

    write_obj(out / "gt_mesh.obj", mesh, kd_srgb)
    _publish(out, folder)
    return folder


def capture_sheet(folder: str | Path, n_test: int = 2, columns: int = 4, label: bool = True) -> np.ndarray:
    """A labelled contact sheet (sRGB uint8) of a capture folder: its ``multi_views`` (in transforms.json order)
    then up to ``n_test`` held-out views composited on white; for docs and notebooks to eyeball a capture."""
    folder = Path(folder)
    frames = json.loads((folder / "transforms.json").read_text())["frames"]
    tiles = [(Path(f["file_path"]).stem, np.asarray(Image.open(folder / f["file_path"]).convert("RGB")))
             for f in frames]
    if n_test > 0 and (folder / "transforms_test.json").is_file():
        for f in json.loads((folder / "transforms_test.json").read_text())["frames"][:n_test]:
            rgba = np.asarray(Image.open(folder / f["file_path"]).convert("RGBA")).astype(np.float32) / 255.0
            rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
            tiles.append((f"novel {Path(f['file_path']).stem}", _to_uint8(rgb)))
    H, W = tiles[0][1].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * W, rows * H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (name, img) in enumerate(tiles):
        x, y = (k % columns) * W, (k // columns) * H
        sheet.paste(Image.fromarray(img).resize((W, H), Image.BOX), (x, y))
        if label:
            draw.text((x + 4, y + 3), name, fill=(60, 60, 60))
    return np.asarray(sheet)


def write_demo_capture(folder: str | Path, resolution: int = 256, n_test: int = 4, overwrite: bool = False) -> Path:
    """:func:`demo_object` rendered by :func:`render_capture` into ``folder`` (what ``input_dir="demo"`` uses)."""
    mesh, kd = demo_object()
    return render_capture(mesh, kd, folder, resolution=resolution, n_test=n_test, overwrite=overwrite)


def spot_capture(folder: str | Path, spot_dir: str | Path | None = None, resolution: int = 256, n_test: int = 4,
                 radius: float = 0.8, yaw_degrees: float = 180.0, overwrite: bool = False, **render_kw) -> Path:
    """Keenan Crane's spot (``../shared/assets/spot`` by default) rendered by :func:`render_capture` into ``folder``.

    The mesh is turned by ``yaw_degrees`` about +y (spot.obj looks towards -z; the default turns its face to +z,
    so the front view shows the face), then centred with half-extent ``radius`` (:func:`~recon_kit.mesh.
    normalize_to_unit`). ``gt_mesh.obj`` is written in that same frame.
    """
    spot_dir = Path(spot_dir) if spot_dir is not None else SHARED_DIR / "assets" / "spot"
    obj = spot_dir / "spot.obj"
    if not obj.is_file():
        raise FileNotFoundError(f"{obj} not found; pass spot_dir= the folder holding spot.obj and spot_texture.png")
    mesh, kd = load_mesh(obj)
    if kd is None:
        kd = np.asarray(Image.open(spot_dir / "spot_texture.png").convert("RGB"))
    a = math.radians(yaw_degrees)
    rot = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    v_pos, _, _ = normalize_to_unit(mesh.v_pos @ rot.T, radius)
    return render_capture(mesh.with_positions(v_pos), kd, folder, resolution=resolution, n_test=n_test,
                          overwrite=overwrite, **render_kw)


def resolve_capture(input_dir: str | Path, work_dir: str | Path, demo_resolution: int = 256) -> Path:
    """The capture folder for ``input_dir``; ``"demo"`` writes (once) a synthetic capture to
    ``work_dir/demo_capture`` with :func:`write_demo_capture`."""
    if str(input_dir) == "demo":
        folder = Path(work_dir) / "demo_capture"
        if not (folder / "multi_views").is_dir():
            write_demo_capture(folder, resolution=demo_resolution)
        return folder
    folder = Path(input_dir)
    if not folder.is_dir():
        raise DataError(f"capture folder {folder} does not exist (relative paths start at {Path.cwd()}); "
                        "set input_dir to the folder holding multi_views/, or to 'demo'")
    return folder

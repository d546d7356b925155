"""The orbitable 3-D view: y-up framing, orbit/zoom messages change the frame, shading toggles, frustums, snap."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("anywidget")

from recon_kit import synth  # noqa: E402
from recon_kit.render import get_rasterizer  # noqa: E402
from recon_kit.viz.live_view import LiveView, OrbitCamera, render_view  # noqa: E402
from recon_kit.cameras import Camera, look_at  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    mesh, kd = synth.demo_object(detail=0.5, texture_size=64)
    rast = get_rasterizer("torch", "cpu")
    return mesh, synth.texture_material(kd), synth.demo_light(32), rast


def test_orbit_camera_opens_y_up_three_quarter_front_and_framed(scene):
    mesh = scene[0]
    orbit = OrbitCamera().frame(mesh.v_pos.numpy())
    cam = orbit.camera(96)
    up, forward = cam.c2w[:3, 1], -cam.c2w[:3, 2]
    assert up[1] > 0.9 and forward[2] < 0 and forward[0] < 0  # y up; from +z, turned towards +x (3/4 front)
    uv, depth = cam.project(mesh.v_pos.numpy())
    assert (depth > 0).all() and uv.min() >= 0 and uv.max() <= 96  # all of the object in the frame ...
    extent = (uv.max(0) - uv.min(0)).max() / 96
    assert extent > 0.6                                             # ... filling most of it


def test_drag_and_wheel_change_the_frame(scene):
    view = LiveView(scene=lambda: scene, resolution=64)
    a = view.render()
    view._on_msg(None, {"event": "orbit", "dx": 60, "dy": 10, "width": 384}, None)
    b = view.render()
    view._on_msg(None, {"event": "orbit", "zoom": 3, "width": 384}, None)
    c = view.render()
    assert np.abs(a.astype(int) - b).mean() > 2 and np.abs(b.astype(int) - c).mean() > 2
    assert (c < 250).any(axis=-1).mean() < (b < 250).any(axis=-1).mean()  # zoomed out: a smaller silhouette


def test_shadings_edges_and_cameras_differ(scene):
    cams = [Camera.from_fov(look_at((3 * math.sin(a), 0.5, 3 * math.cos(a))), 0.7, 32, 32, name=f"c{i}")
            for i, a in enumerate(np.linspace(0, 6, 5))]
    photos = np.zeros((5, 32, 32, 3), np.uint8)
    view = LiveView(scene=lambda: scene, cameras=cams, photos=photos, resolution=48)
    frames = {}
    for s in ("PBR", "albedo", "normals"):
        view.shading.value = s
        frames[s] = view.render()
    assert np.abs(frames["PBR"].astype(int) - frames["albedo"]).mean() > 1
    assert np.abs(frames["albedo"].astype(int) - frames["normals"]).mean() > 1
    view.edges.value = True
    assert np.abs(view.render().astype(int) - frames["normals"]).mean() > 1
    view.edges.value = False
    view.show_cameras.value = True
    with_cams = view.render()
    assert ((with_cams[..., 2] > 150) & (with_cams[..., 0] < 100)).any()  # blue frustum lines
    view.snap(2)
    snapped = view.render()
    assert snapped.shape == (48, 96, 3) and (snapped[:, 48:] == 0).all()  # render | photo
    view._on_msg(None, {"event": "orbit", "dx": 5, "width": 384}, None)
    assert view.render().shape == (48, 48, 3)


def test_render_view_matches_the_kit_renderer_silhouette(scene):
    mesh, material, light, rast = scene
    cam = OrbitCamera().frame(mesh.v_pos.numpy()).camera(64)
    img = render_view(mesh, cam, material, light, "albedo", rasterizer=rast)
    uv, _ = cam.project(mesh.v_pos.numpy())
    cover = (img < 250).any(-1)
    ys, xs = np.nonzero(cover)
    assert abs(xs.mean() - uv[:, 0].mean()) < 8 and abs(ys.mean() - uv[:, 1].mean()) < 8


def test_worker_thread_sends_png_and_reports_errors(scene):
    import time

    view = LiveView(scene=lambda: scene, resolution=32)
    view.request(force=True)
    for _ in range(200):
        if view.frames:
            break
        time.sleep(0.05)
    assert view.frames == 1 and view.image.png.startswith(b"\x89PNG")
    view.scene = lambda: (_ for _ in ()).throw(ValueError("broken mesh"))
    view.request(force=True)
    for _ in range(100):
        if view.errors.last:
            break
        time.sleep(0.05)
    assert "ValueError: broken mesh" in view.errors.widget.value

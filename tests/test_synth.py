"""Synthetic captures: the procedural demo object, the capture-format renders, held-out split and ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from recon_kit.io import images
from recon_kit import synth
from recon_kit.cameras import AXIS_VIEWS, axis_rig_c2w
from recon_kit.data.capture import load_capture
from recon_kit.data.dataset import load_viewset
from recon_kit.io.transforms import read_transforms
from recon_kit.mesh import load_mesh

SPOT = Path(__file__).resolve().parents[2] / "shared" / "assets" / "spot"
RES = 128


@pytest.fixture(scope="module")
def demo() -> tuple:
    return synth.demo_object()


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    return synth.write_demo_capture(tmp_path_factory.mktemp("synth") / "demo", resolution=RES, n_test=2)


def _trimesh(mesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(mesh.v_pos.numpy(), mesh.t_pos_idx.numpy(), process=False)


def test_demo_object_is_textured_non_convex_and_fits_the_grid(demo):
    mesh, kd = demo
    assert mesh.has_uv and mesh.t_tex_idx.shape == mesh.t_pos_idx.shape
    assert 5_000 <= mesh.num_faces <= 20_000
    assert float(mesh.v_pos.norm(dim=1).max()) <= 0.8 + 1e-5
    assert 0.0 <= float(mesh.v_tex.min()) and float(mesh.v_tex.max()) <= 1.0
    tm = _trimesh(mesh)
    assert tm.volume > 0  # closed parts, faces wound outwards
    assert tm.volume < 0.9 * tm.convex_hull.volume
    assert kd.dtype == np.uint8 and kd.ndim == 3 and kd.shape[2] == 3
    assert len(np.unique(kd.reshape(-1, 3) // 32, axis=0)) >= 8  # several distinct colours
    assert kd.reshape(-1, 3).min(1).max() < 250  # no white texels: white means background


def test_encode_depth_uint8_near_is_bright_and_background_zero():
    d = np.array([[0.0, 2.5], [3.0, 3.5]], np.float32)
    np.testing.assert_array_equal(images.encode_depth_uint8(d), [[0, 255], [128, 1]])
    assert not images.encode_depth_uint8(np.zeros((4, 4))).any()


def test_demo_capture_layout_and_sizes(capture):
    for v in AXIS_VIEWS:
        rgb = Image.open(capture / "multi_views" / f"{v}.png")
        depth = Image.open(capture / "depth_renders" / f"{v}.png")
        assert rgb.mode == "RGB" and rgb.size == (RES, RES)
        assert depth.mode == "L" and depth.size == (RES, RES)
    cams = read_transforms(capture / "transforms.json", missing="error")
    assert [c.name for c in cams] == list(AXIS_VIEWS)
    meta = json.loads((capture / "transforms.json").read_text())
    assert meta["camera_angle_x"] == pytest.approx(0.85)
    assert meta["frames"][0]["file_path"] == "multi_views/front.png"
    for c in cams:
        np.testing.assert_allclose(c.c2w, axis_rig_c2w(c.name, 3.0), atol=1e-9)
    assert load_capture(capture, progress=False).pose_source == "transforms.json"


def test_depth_is_zero_exactly_on_the_white_background(capture):
    for v in AXIS_VIEWS:
        rgb = np.asarray(Image.open(capture / "multi_views" / f"{v}.png")).astype(int)
        depth = np.asarray(Image.open(capture / "depth_renders" / f"{v}.png"))
        fg, dm = rgb.min(-1) < 250, depth > 0
        assert (fg & dm).sum() / (fg | dm).sum() > 0.98, v
        assert depth[dm].min() == 1 and depth[dm].max() == 255
        assert (rgb[~dm & ~np.roll(dm, 1, 0) & ~np.roll(dm, -1, 0) & ~np.roll(dm, 1, 1) & ~np.roll(dm, -1, 1)]
                == 255).all(), v  # away from the antialiased rim the background is pure white


def test_front_view_looks_from_plus_z(capture):
    def teal(view):
        a = np.asarray(Image.open(capture / "multi_views" / f"{view}.png")).astype(int)
        return int((((a[..., 1] - a[..., 0]) > 60) & ((a[..., 2] - a[..., 0]) > 60)).sum())

    assert teal("front") > 100 and teal("back") == 0  # the teal front disc faces +z


def test_held_out_split_is_a_prepared_dataset_with_metric_depth(capture):
    views = load_viewset(capture, split="test")
    assert len(views) == 2 and views.rgb_linear.shape == (2, RES, RES, 3)
    assert 0.02 < float(views.mask.mean()) < 0.5
    meta = json.loads((capture / "transforms_test.json").read_text())
    gt = _trimesh(load_mesh(capture / "gt_mesh.obj")[0])
    for frame, cam, mask in zip(meta["frames"], views.cameras, views.mask):
        depth = np.load(capture / frame["metric_depth_path"])
        assert depth.shape == (RES, RES) and depth.dtype == np.float32
        covered = depth > 0
        assert np.abs(covered.astype(np.float32) - (mask.numpy() > 0.5)).mean() < 0.02
        _, vdepth = cam.project(gt.vertices)
        assert depth[covered].min() == pytest.approx(vdepth.min(), abs=0.02)
        assert depth[covered].max() <= vdepth.max() + 1e-3


def test_gt_mesh_reloads_in_the_camera_frame(capture, demo):
    mesh, kd = load_mesh(capture / "gt_mesh.obj")
    ref = demo[0]
    assert mesh.num_faces == ref.num_faces and mesh.has_uv and kd is not None
    np.testing.assert_allclose(mesh.v_pos.min(0).values, ref.v_pos.min(0).values, atol=1e-5)
    np.testing.assert_allclose(mesh.v_pos.max(0).values, ref.v_pos.max(0).values, atol=1e-5)
    assert _trimesh(mesh).area == pytest.approx(_trimesh(ref).area, rel=1e-4)


def test_refuses_to_overwrite_and_replaces_when_asked(capture, demo, tmp_path):
    with pytest.raises(FileExistsError):
        synth.write_demo_capture(capture, resolution=RES)
    folder = tmp_path / "small"
    synth.render_capture(*demo, folder, resolution=32, views=("front",))
    synth.render_capture(*demo, folder, resolution=64, depth_resolution=32, views=("front", "left"), overwrite=True)
    assert sorted(p.name for p in (folder / "multi_views").iterdir()) == ["front.png", "left.png"]
    assert Image.open(folder / "multi_views" / "left.png").size == (64, 64)
    assert Image.open(folder / "depth_renders" / "left.png").size == (32, 32)
    assert not (folder / "test").exists() and not (folder / ".synth.partial").exists()


def test_capture_sheet(capture):
    sheet = synth.capture_sheet(capture, n_test=2, columns=4)
    assert sheet.shape == (2 * RES, 4 * RES, 3) and sheet.dtype == np.uint8


@pytest.mark.skipif(not (SPOT / "spot.obj").is_file(), reason=f"{SPOT} not found (../shared beside the project)")
def test_spot_capture(tmp_path):
    folder = synth.spot_capture(tmp_path / "spot", resolution=128, n_test=1)
    front = np.asarray(Image.open(folder / "multi_views" / "front.png"))
    depth = np.asarray(Image.open(folder / "depth_renders" / "front.png"))
    assert front.shape == (128, 128, 3) and 0.05 < (depth > 0).mean() < 0.5
    mesh, kd = load_mesh(folder / "gt_mesh.obj")
    assert kd is not None and float(mesh.v_pos.abs().max()) == pytest.approx(0.8, abs=1e-4)
    assert (folder / "test" / "000.png").is_file() and (folder / "test_depth" / "000.npy").is_file()

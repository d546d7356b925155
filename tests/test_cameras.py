import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recon_kit import cameras as C

SHOE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "shoe"


def test_axis_rig_matches_user_reference():
    ref = SHOE / "reference" / "transforms_seed.json"
    if not ref.exists():
        pytest.skip("reference transforms not available")
    frames = json.loads(ref.read_text())["frames"]
    for fr in frames:
        view = fr["file_path"].split("/")[-1]
        np.testing.assert_allclose(C.axis_rig_c2w(view, 3.0), np.array(fr["transform_matrix"]), atol=1e-12)


@pytest.mark.parametrize("view", C.AXIS_VIEWS)
def test_rig_cameras_look_at_origin_and_are_rotations(view):
    c2w = C.axis_rig_c2w(view, 3.0)
    R = c2w[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    looking = -R[:, 2]
    np.testing.assert_allclose(c2w[:3, 3] + 3.0 * looking, 0, atol=1e-12)


def test_image_row_zero_is_top_and_x_is_right():
    cam = C.Camera.from_fov(C.axis_rig_c2w("front"), 0.85, 64, 48)
    xy, depth = cam.project(np.array([[0.0, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert xy[0, 1] < 24 and xy[1, 0] > 32
    np.testing.assert_allclose(xy[2], [32, 24])
    assert depth[2] == pytest.approx(3.0)


def test_projection_matrix_agrees_with_pixel_projection():
    cam = C.Camera(C.look_at([1.0, 2.0, 3.0], [0.1, 0, 0]), 70.0, 80.0, 30.0, 22.0, 64, 48)
    pts = np.random.default_rng(0).normal(size=(20, 3)) * 0.3
    xy, depth = cam.project(pts)
    clip = np.c_[pts, np.ones(20)] @ cam.mvp().T
    ndc = clip[:, :3] / clip[:, 3:]
    np.testing.assert_allclose((ndc[:, 0] + 1) * 32, xy[:, 0], atol=1e-9)
    np.testing.assert_allclose((ndc[:, 1] + 1) * 24, xy[:, 1], atol=1e-9)
    np.testing.assert_allclose(clip[:, 3], depth, atol=1e-9)


def test_resized_camera_scales_intrinsics():
    cam = C.Camera.from_fov(np.eye(4), 0.85, 2048, 2048).resized(512, 512)
    assert cam.camera_angle_x == pytest.approx(0.85)
    assert cam.cx == 256 and cam.width == 512


def test_stack_matrices_shapes():
    m = C.stack_matrices(C.axis_rig(32, 32))
    assert m["mvp"].shape == (6, 4, 4) and m["campos"].shape == (6, 3) and m["mvp"].dtype == torch.float32


def test_bad_matrix_is_rejected():
    with pytest.raises(ValueError, match="last row"):
        C.Camera(np.zeros((4, 4)), 1, 1, 1, 1, 2, 2, name="x")

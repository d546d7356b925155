"""Image, geometry and mesh-fact metrics against analytic values."""

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from recon_kit.mesh import Mesh
from recon_kit.runs.table import MetricsTable, format_table, metrics_dataframe
from recon_kit.evaluate import (chamfer_fscore, mesh_stats, outer_surface, psnr, silhouette_iou, ssim,
                                uv_coverage_mask, winding_number)
from recon_kit.runs.folder import write_metrics_json


def _image(seed: int = 0, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.25, 0.75, (h, w, 3))


def _signed_noise(shape, sigma: float, seed: int = 1) -> np.ndarray:
    return sigma * np.random.default_rng(seed).choice([-1.0, 1.0], size=shape)


def _cube(scale: float = 1.0) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(scale, scale, scale))


def test_identical_images_give_inf_psnr_and_unit_ssim():
    a = _image()
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    t = torch.tensor(a, dtype=torch.float32)
    assert psnr(t, t.clone()) == math.inf
    assert ssim(t, t.clone()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_known_noise_gives_known_psnr(sigma):
    a = _image()
    b = a + _signed_noise(a.shape, sigma)  # |error| = sigma everywhere, no clamping (a in [0.25, 0.75])
    assert psnr(a, b) == pytest.approx(-20 * math.log10(sigma), abs=1e-6)
    assert psnr(torch.tensor(a), torch.tensor(b)) == pytest.approx(-20 * math.log10(sigma), abs=1e-6)


def test_masked_psnr_ignores_outside():
    a = _image()
    b = a + _signed_noise(a.shape, 0.02)
    mask = np.zeros(a.shape[:2], bool)
    mask[10:30, 5:40] = True
    b[~mask] = np.random.default_rng(3).random(((~mask).sum(), 3))  # garbage outside
    assert psnr(a, b, mask) == pytest.approx(-20 * math.log10(0.02), abs=1e-6)
    assert psnr(a, b) < psnr(a, b, mask) - 5
    with pytest.raises(ValueError, match="empty"):
        psnr(a, b, np.zeros(a.shape[:2]))


def test_ssim_of_constant_images_matches_formula():
    x, y = 0.3, 0.6
    a, b = np.full((32, 32, 3), x), np.full((32, 32, 3), y)
    c1 = 0.01 ** 2
    assert ssim(a, b) == pytest.approx((2 * x * y + c1) / (x * x + y * y + c1), rel=1e-9)


def test_ssim_decreases_with_noise_and_is_symmetric():
    a = _image()
    b = np.clip(a + _signed_noise(a.shape, 0.05), 0, 1)
    c = np.clip(a + _signed_noise(a.shape, 0.15), 0, 1)
    assert 1.0 > ssim(a, b) > ssim(a, c) > 0.0
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)


def test_masked_ssim_ignores_far_outside():
    a = _image(h=64, w=64)
    b = a.copy()
    b[:, 40:] = 0.0  # differs only on the right
    mask = np.zeros((64, 64))
    mask[:, :30] = 1.0  # window centres inside the mask stay >= 6 px from the change
    assert ssim(a, b, mask) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) < 0.9


def test_silhouette_iou():
    a = np.zeros((10, 10))
    b = np.zeros((10, 10))
    a[:, :6] = 1
    b[:, 4:] = 1
    assert silhouette_iou(a, b) == pytest.approx(20 / 100)
    assert silhouette_iou(a, a) == 1.0
    assert silhouette_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def test_identical_meshes_score_perfectly():
    r = chamfer_fscore(_cube(), _cube())
    assert r["chamfer_l1"] < 3e-3  # only the sampling floor of two independent 100k-point samplings
    assert r["fscore"] == pytest.approx(1.0, abs=1e-3)
    assert r["normal_consistency"] > 0.97
    assert r["gt_diagonal"] == pytest.approx(math.sqrt(3))


def test_scaled_cube_matches_analytic_chamfer():
    """Cube of side 1 vs 1.02: every GT point is 0.01 from the larger cube; pred points are 0.01 away except a
    2 % rim near the edges (<= 0.01 sqrt 2), so both mean distances are ~0.01 in the continuum limit."""
    diag = math.sqrt(3)
    r = chamfer_fscore(_cube(1.02), _cube(), n_points=200_000)
    assert r["chamfer_l1"] == pytest.approx(0.01 / diag, rel=0.08)
    assert r["chamfer_l1"] > 0.01 / diag  # sampling can only add distance
    assert r["fscore"] == pytest.approx(1.0, abs=1e-3)  # threshold 0.01 * diag > 0.01 * sqrt(2)
    tight = chamfer_fscore(_cube(1.02), _cube(), n_points=20_000, threshold=0.005)  # 0.0087 < 0.01
    assert tight["fscore"] == 0.0 and tight["precision"] == 0.0 and tight["recall"] == 0.0


def test_winding_number_tells_inside_from_outside():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    w = winding_number(sphere.triangles, np.array([[0.0, 0, 0], [0.5, 0.3, -0.2], [1.5, 0, 0], [0, -3, 0]]))
    np.testing.assert_allclose(w, [1, 1, 0, 0], atol=1e-5)
    w = winding_number(sphere.triangles[:, ::-1], np.zeros((1, 3)))   # inward-facing winding: -1
    np.testing.assert_allclose(w, [-1], atol=1e-5)


def test_outer_surface_drops_the_parts_inside_each_other():
    """Two unit spheres 1 apart, concatenated as one mesh (as the demo object's body and sunk handle are): the
    outer surface is their union's, 2 x 4 pi - 2 caps of height 1/2 (area 2 pi r h = pi each) = 6 pi."""
    a = trimesh.creation.icosphere(subdivisions=4)
    b = a.copy()
    b.apply_translation([1.0, 0, 0])
    both = trimesh.util.concatenate([a, b])
    outer = outer_surface(both)
    assert outer.area == pytest.approx(6 * math.pi, rel=0.01)
    assert (np.linalg.norm(outer.triangles_center - [0.5, 0, 0], axis=1) > 0.5).all()  # nothing from the lens
    r = chamfer_fscore(outer, both, n_points=20_000)
    assert r["recall"] < 0.9          # the full mesh's interior caps are far from the outer surface
    one = trimesh.creation.icosphere(subdivisions=2)
    assert outer_surface(one) is one  # one part: as it is


def test_shifted_point_sets():
    g = np.stack(np.meshgrid(*[np.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    shift = np.array([0.1, 0.0, 0.0])
    diag = 4 * math.sqrt(3)
    r = chamfer_fscore(g + shift, g, threshold=0.2 / diag)
    assert r["chamfer_l1"] == pytest.approx(0.1 / diag, rel=1e-9)
    assert r["fscore"] == 1.0
    assert math.isnan(r["normal_consistency"])
    r = chamfer_fscore(torch.tensor(g + shift), g, threshold=0.05 / diag)
    assert r["fscore"] == 0.0


def test_mesh_stats_cube():
    box = _cube()
    mesh = Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces, dtype=torch.int64))
    s = mesh_stats(mesh, {"kd": np.zeros((8, 16, 3))})
    assert (s["vertices"], s["faces"], s["watertight"], s["components"]) == (8, 12, True, 1)
    assert s["uv_coverage"] is None and s["texture_sizes"] == {"kd": [8, 16, 3]}
    two = trimesh.util.concatenate([box, box.copy().apply_translation([3, 0, 0])])
    assert mesh_stats(two)["components"] == 2
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-1], process=False)
    assert not mesh_stats(open_box)["watertight"]


def test_uv_coverage():
    v_tex = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    half = uv_coverage_mask(v_tex, np.array([[0, 1, 2]]), 64)
    assert half.mean() == pytest.approx(0.5, abs=64 / 64 ** 2)
    assert half[0, 0] and not half[-1, -1]  # row 0 = v 0
    box = _cube()
    mesh = Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces),
                torch.tensor(v_tex, dtype=torch.float32), torch.tensor([[0, 1, 2], [1, 3, 2]] * 6))
    s = mesh_stats(mesh)
    assert s["uv_coverage"] == pytest.approx(1.0) and s["uv_area_sum"] == pytest.approx(6.0)
    assert mesh_stats(mesh, uv_mask=np.eye(4))["uv_coverage"] == 0.25


def test_metrics_json_merges_atomically(tmp_path):
    path = tmp_path / "m" / "metrics.json"
    write_metrics_json(path, {"psnr": np.float32(30.5), "val": {"ssim": 0.9}})
    merged = write_metrics_json(path, {"val": {"lpips": 0.1}, "psnr_self": math.inf})
    on_disk = json.loads(path.read_text())
    assert on_disk == merged == {"psnr": 30.5, "psnr_self": None, "val": {"ssim": 0.9, "lpips": 0.1}}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_tables():
    text = format_table({"view0": {"psnr": 31.23456, "ssim": 0.9}, "view1": {"psnr": math.inf, "ssim": 0.8}})
    assert "31.2346" in text and "inf" in text and "view1" in text
    assert list(metrics_dataframe({"psnr": 30.0, "fscore": 0.5}).index) == ["psnr", "fscore"]
    table = MetricsTable()
    table.add("a", psnr=30.0, ssim=0.9)
    table.add("b", psnr=32.0, ssim=0.7)
    assert table.mean() == pytest.approx({"psnr": 31.0, "ssim": 0.8})
    assert "ssim" in table.format()

"""Quality techniques: per-view camera refinement, edge-aware colour weights, depth schedule, fringe score."""

from pathlib import Path

import numpy as np
import pytest
import torch

from recon_kit import config, evaluate as metrics, losses
from recon_kit.data import dataset as rk_dataset
from recon_kit.runs import run as rk_run
from recon_kit.model.camera_refine import CameraRefiner, axis_angle_to_matrix
from recon_kit.cameras import axis_rig, stack_matrices


@pytest.fixture(scope="module")
def dataset(demo_dataset):
    return demo_dataset(96, 64, 2)


def test_axis_angle_matches_scipy():
    from scipy.spatial.transform import Rotation

    rot = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.3], [1e-5, 0, 0]], dtype=torch.float64)
    ref = Rotation.from_rotvec(rot.numpy()).as_matrix()
    assert np.allclose(axis_angle_to_matrix(rot).numpy(), ref, atol=1e-10)


def test_refined_cameras_agree_with_refined_matrices():
    cams = axis_rig(64, 48)
    mats = stack_matrices(cams, dtype=torch.float64)
    ref = CameraRefiner(mats, distance=3.0).double()
    idx = torch.arange(len(cams))
    assert torch.allclose(ref(idx)["mvp"], mats["mvp"]) and torch.allclose(ref(idx)["campos"], mats["campos"])
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    out = ref(idx)
    again = stack_matrices(ref.cameras(cams), dtype=torch.float64)
    for key in ("mvp", "w2c", "campos"):
        assert torch.allclose(out[key], again[key], atol=1e-9), key
    rows = ref.report([c.name for c in cams], 64)
    assert len(rows) == len(cams) and all(r["rotation_deg"] > 0 for r in rows)


def test_edge_band_keeps_only_photo_foreground():
    H = W = 32
    rgb = torch.ones(1, H, W, 3)                       # white studio
    rgb[:, 8:24, 8:24] = torch.tensor([0.5, 0.05, 0.05])  # red object
    mask = torch.zeros(1, H, W)
    mask[:, 6:26, 6:26] = 1                            # mask 2 px too large on every side
    views = rk_dataset.ViewSet(["v"], axis_rig(W, H)[:1], rgb, mask)
    interior, weight = losses.edge_weights(views, edge_px=3)
    assert weight[0, 7, 15] == 0 and weight[0, 9, 15] == 1   # background inside the mask is dropped
    assert interior[0, 15, 15] and not interior[0, 7, 15]
    assert torch.equal(losses.edge_weights(views, 0)[1], mask)


def test_fringe_score_counts_background_coloured_edges():
    alpha = np.zeros((40, 40))
    alpha[10:30, 10:30] = 1
    rgb = np.zeros((40, 40, 3))
    rgb[10:30, 10:30] = [0.6, 0.1, 0.1]
    assert metrics.fringe_score(rgb, alpha, [1, 1, 1], band_px=2) == 0
    rgb[10:12, 10:30] = 1.0                              # a white fringe along the top edge
    score = metrics.fringe_score(rgb, alpha, [1, 1, 1], band_px=2)
    assert 0.2 < score < 0.35
    assert metrics.fringe_score(rgb, np.zeros((40, 40)), [1, 1, 1]) == 0


def test_training_with_refinement_edges_and_depth_schedule(dataset, tmp_path):
    cfg = config.resolve("cpu-small", {
        "pass1.iterations": 16, "pass2.iterations": 6, "data.resolution": 64, "geometry.grid_res": 32,
        "geometry.hull_res": 48, "material.texture_res": 64, "checkpoint_every": 0, "snapshot_every": 0,
        "log_every": 1, "cameras.refine": True, "cameras.start": 0.25, "cameras.lr": 1e-3,
        "loss.edge_px": 32.0, "loss.depth_end": 0.1})
    tr = rk_run.new_trainer(cfg, rk_dataset.load_viewset(dataset), tmp_path / "run")
    tr.run(progress=False)
    assert all(np.isfinite(h["total"]) for h in tr.history) and "camera_reg" in tr.history[-1]
    assert float(tr.cam_refiner.zoom.detach().abs().sum()) > 0
    result = tr.evaluate()
    assert np.isfinite(result["train_depth_residual"]) and 0 <= result["train_iou"] <= 1
    fr = metrics.fringe(tr.render_views, tr.views, n_views=2)
    assert 0 <= fr["fringe"] <= 1 and 0 <= fr["fringe_photos"] <= 1
    _check_finish_records_quality(tr, dataset)


def _check_finish_records_quality(tr, dataset):
    """finish(): fringe score, camera corrections, PSNR as written in metrics.json; fringe.png and
    cameras_corrected.json in the run folder; the dataset's own transforms.json untouched."""
    import json

    from PIL import Image

    from recon_kit.io.transforms import load_cameras

    source = (dataset / "transforms.json").read_bytes()
    rk_run.finish(tr, dataset)
    m = json.loads((tr.run_dir / "metrics.json").read_text())
    assert 0 <= m["fringe"] <= 1 and 0 <= m["fringe_photos"] <= 1 and len(m["fringe_views"]) == 8
    assert np.isfinite(m["written_psnr"]) and np.isfinite(m["train_psnr"])
    rows = m["camera_corrections"]
    assert [r["view"] for r in rows] == tr.views.names
    assert all(np.isfinite(r[k]) for r in rows for k in ("rotation_deg", "translation", "zoom_pct", "shift_px"))
    assert max(abs(r["zoom_pct"]) for r in rows) > 0
    strip = np.asarray(Image.open(tr.run_dir / "fringe.png"))
    assert strip.shape == (64, 8 * 64, 3)
    written = tr.run_dir / "cameras_corrected.json"
    cams = load_cameras(written, tr.views.names, 64, 64)
    refined = tr.refined_views().cameras
    for a, b in zip(cams, refined):
        assert np.allclose(a.c2w, b.c2w, atol=1e-9) and np.allclose([a.fx, a.fy, a.cx, a.cy], [b.fx, b.fy, b.cx, b.cy])
    frames = json.loads(written.read_text())["frames"]
    assert all(Path(f["file_path"]).is_file() for f in frames)
    assert (dataset / "transforms.json").read_bytes() == source


def test_finish_without_refinement_scores_fringes_only(dataset, tmp_path):
    import json

    cfg = config.resolve("cpu-small", {
        "pass1.iterations": 4, "pass2.iterations": 2, "data.resolution": 64, "geometry.grid_res": 32,
        "geometry.hull_res": 48, "material.texture_res": 64, "checkpoint_every": 0, "snapshot_every": 0})
    tr = rk_run.new_trainer(cfg, rk_dataset.load_viewset(dataset), tmp_path / "run")
    tr.run(progress=False)
    rk_run.finish(tr, dataset)
    m = json.loads((tr.run_dir / "metrics.json").read_text())
    assert 0 <= m["fringe"] <= 1 and "camera_corrections" not in m and "written_psnr" not in m
    assert (tr.run_dir / "fringe.png").is_file() and not (tr.run_dir / "cameras_corrected.json").exists()


def test_camera_config_is_validated():
    with pytest.raises(config.ConfigError, match="cameras.start"):
        config.resolve("cpu-small", {"cameras.start": 2.0})

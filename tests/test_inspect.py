"""recon_kit.inspect (a run folder read back) and recon_kit.viz.turntable on a tiny run trained on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recon_kit.io.video import write_gif, write_mp4
import torch

from recon_kit import config
from recon_kit.data import dataset
from recon_kit.runs import run as rk_run
from recon_kit.runs import table as rk_table
from recon_kit import synth
from recon_kit.viz import turntable as tt


def _tiny_cfg():
    return config.resolve("cpu-small", {
        "pass1.iterations": 12, "pass2.iterations": 6, "data.resolution": 64, "geometry.grid_res": 32,
        "geometry.hull_res": 48, "material.texture_res": 64, "checkpoint_every": 0, "snapshot_every": 0,
        "log_every": 2})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    cap = synth.write_demo_capture(root / "capture", resolution=96, n_test=2)
    dataset.prepare_dataset(cap, root / "data", [64], progress=False)
    ds = root / "data" / "64"
    tr = rk_run.new_trainer(_tiny_cfg(), dataset.load_viewset(ds), root / "run")
    tr.run(progress=False)
    rk_run.finish(tr, ds)
    return tr, root / "run", ds


def test_load_run_round_trip(trained):
    tr, run_dir, _ = trained
    run = rk_run.load_run(run_dir)
    mesh = tr.fixed.mesh()
    assert run.mesh.num_faces == mesh.num_faces and run.mesh.has_uv
    torch.testing.assert_close(run.mesh.v_pos, mesh.v_pos.detach().cpu(), atol=1e-5, rtol=0)
    assert {"kd_linear", "ks", "normal_ts", "probe_latlong"} <= set(run.textures)
    np.testing.assert_allclose(run.textures["ks"], tr.textures.ks.to_numpy()[..., :3], atol=1 / 255 + 1e-6)
    assert run.light is not None and run.light.res == tr.cfg.light.env_res
    assert run.config == json.loads((run_dir / "config.json").read_text()) == tr.cfg.to_dict()
    assert run.metrics["faces"] == mesh.num_faces and "train_psnr" in run.metrics
    assert [h["global_it"] for h in run.history] == [h["global_it"] for h in tr.history]
    assert run.kd_srgb_uint8().dtype == np.uint8 and "faces" in repr(run)


def test_load_run_without_mesh_says_what_is_missing(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="mesh.obj"):
        rk_run.load_run(tmp_path / "run")


def test_turntable_frames(trained):
    _, run_dir, _ = trained
    run = rk_run.load_run(run_dir)
    frames = tt.turntable(run, n_frames=5, resolution=48)
    assert frames.shape == (5, 48, 48, 3) and frames.dtype == np.uint8
    fg = (frames < 250).any(-1).mean((1, 2))
    assert (fg > 0.05).all() and (fg < 0.9).all()          # the object is in frame, the background is white
    assert not np.array_equal(frames[0], frames[2])          # the camera moves
    dark = tt.turntable((run.mesh, run.textures, np.full((8, 16, 3), 0.05, np.float32)), n_frames=2, resolution=48)
    relit = tt.turntable(run, n_frames=2, resolution=48, relight=np.full((8, 16, 3), 0.05, np.float32))
    np.testing.assert_array_equal(dark, relit)
    fg0 = (frames[0] < 250).any(-1)
    assert dark[0][fg0].mean() < frames[0][fg0].mean() - 20


def test_gif_and_mp4(trained, tmp_path):
    import imageio.v3 as iio

    frames = tt.turntable(trained[1], n_frames=4, resolution=32)
    gif = write_gif(tmp_path / "t.gif", frames)
    assert iio.imread(gif, index=None).shape[0] == 4
    mp4 = write_mp4(tmp_path / "t.mp4", frames)
    assert mp4 is None or mp4.stat().st_size > 0


def test_facts_and_gt_metrics_merge_into_metrics_json(trained):
    tr, run_dir, ds = trained
    run = rk_run.load_run(run_dir)
    facts = rk_run.mesh_facts(run)
    assert facts["faces"] == run.mesh.num_faces and facts["components"] >= 1 and 0 < facts["uv_coverage"] <= 1
    gt = rk_run.evaluate_against_gt(run, ds / "gt_mesh.obj", n_points=20_000)
    assert set(rk_run.GT_KEYS) <= set(gt)
    assert 0 < gt["chamfer_l1"] < 0.2 and 0 <= gt["fscore"] <= 1 and 0 < gt["normal_consistency"] <= 1
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert stored["chamfer_l1"] == pytest.approx(gt["chamfer_l1"]) and stored["mesh"]["faces"] == facts["faces"]
    assert "train_psnr" in stored                             # merged, not replaced
    table = rk_table.metrics_table(run)
    assert {"chamfer_l1", "fscore", "mesh.faces", "train_psnr"} <= set(table.index)


def test_comparison_grid_and_panels(trained):
    _, run_dir, ds = trained
    run = rk_run.load_run(run_dir)
    c = tt.comparison_images(run, dataset.load_viewset(ds), max_views=2)
    assert c["render"].shape == c["reference"].shape and len(c["names"]) == 2
    assert all(p > 12 for p in c["psnr"])
    fig = tt.comparison_grid(run, ds, max_views=2)
    assert len(fig.axes) >= 6
    assert len(tt.texture_panel(run).axes) == 3 and len(tt.probe_panel(run).axes) == 1
    assert Path(rk_run.find_dataset_dir(run, "")).resolve() == Path(ds).resolve()  # recorded by rk_run.finish
    assert rk_run.find_dataset_dir(run, str(ds)) == ds

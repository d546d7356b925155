"""geometry.mesh_scale auto: fitted to the visual hull (the shoe needs more than nvdiffrec's 2.1), logged in the
run's log.txt and config.json; result files are readable by group and others."""

from __future__ import annotations

import json
import stat

import pytest
import torch

from recon_kit import config, synth
from recon_kit.autoscale import fit_mesh_scale
from recon_kit.config import ConfigError
from recon_kit.data.dataset import load_viewset, prepare_dataset
from recon_kit.runs.folder import RunDir
from recon_kit.runs.run import new_trainer
from test_posecheck import SHOE, _shoe


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cap = synth.write_demo_capture(root / "capture", resolution=96, n_test=0)
    prepare_dataset(cap, root / "data", [64], progress=False)
    return load_viewset(root / "data" / "64")


def test_auto_is_the_default_and_numbers_still_work():
    assert config.ReconConfig().geometry.mesh_scale == "auto"
    assert config.resolve("cpu-small", {"geometry.mesh_scale": 2.5}).geometry.mesh_scale == 2.5
    assert config.resolve("cpu-small", {"geometry.mesh_scale": "2.5"}).geometry.mesh_scale == 2.5
    with pytest.raises(ConfigError, match="number or 'auto'"):
        config.resolve("cpu-small", {"geometry.mesh_scale": "big"})
    with pytest.raises(ConfigError, match="> 0 or 'auto'"):
        config.resolve("cpu-small", {"geometry.mesh_scale": -1})


def test_fit_holds_the_demo_object(demo):
    mesh, _ = synth.demo_object(detail=0.3, texture_size=16)
    reach = float(mesh.v_pos.abs().max())
    fit = fit_mesh_scale(demo.cameras, demo.mask)
    assert 2 * reach < fit.mesh_scale < 2 * reach * 1.4, (fit, reach)


@pytest.mark.skipif(not SHOE.exists(), reason="the shoe capture lives in ../shared")
def test_fit_holds_the_shoe_that_2_1_cuts():
    cams, masks, _ = _shoe()
    fit = fit_mesh_scale(cams, torch.as_tensor(masks).float())
    assert fit.mesh_scale >= 2.5, fit


def test_training_logs_the_fit_to_log_txt_and_config(demo, tmp_path):
    cfg = config.resolve("cpu-small", {"data.resolution": 64, "geometry.grid_res": 16, "geometry.hull_res": 32})
    tr = new_trainer(cfg, demo, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert isinstance(saved["geometry"]["mesh_scale"], float) and saved["geometry"]["mesh_scale"] == tr.dmtet.mesh_scale
    assert "mesh_scale auto =" in (tmp_path / "run" / "log.txt").read_text()


def test_result_files_are_readable_by_others(tmp_path):
    path = RunDir(tmp_path).write_json("metrics.json", {"a": 1})
    assert path.stat().st_mode & stat.S_IROTH

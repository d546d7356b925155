"""Training on the CPU at tiny settings: losses, resume to the same result, exports that reload."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from recon_kit import config
from recon_kit.data import dataset as rk_dataset
from recon_kit import losses as rk_losses
from recon_kit.runs import run as rk_run
from recon_kit.train import trainer


@pytest.fixture(scope="module")
def dataset(demo_dataset):
    return demo_dataset(96, 64, 2)


def tiny(**kw):
    over = {"pass1.iterations": 12, "pass2.iterations": 6, "data.resolution": 64, "geometry.grid_res": 32,
            "geometry.hull_res": 48, "material.texture_res": 64, "checkpoint_every": 4, "snapshot_every": 4,
            "log_every": 1}
    over.update(kw)
    return config.resolve("cpu-small", over)


def test_depth_loss_is_invariant_to_scale_and_offset():
    pred = torch.rand(2, 8, 8) + 1
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    assert rk_losses.depth_loss(pred, 3 * pred - 7, valid) < 1e-5
    assert rk_losses.depth_loss(pred, -2 * pred + 1, valid) < 1e-5
    assert rk_losses.depth_loss(pred, torch.rand(2, 8, 8), valid) > 1e-3


def test_lr_schedule_matches_nvdiffrec():
    assert trainer.lr_factor(0, 100, 0.0002) == pytest.approx(0.01)
    assert trainer.lr_factor(5100, 100, 0.0002) == pytest.approx(0.1)


def test_train_export_and_reload(dataset, tmp_path):
    tr = rk_run.new_trainer(tiny(), rk_dataset.load_viewset(dataset), tmp_path / "run")
    tr.run(progress=False)
    assert tr.done and all(np.isfinite(h["total"]) for h in tr.history)
    result = rk_run.finish(tr, dataset)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["train_iou"] <= 1 and metrics["train_psnr"] > 10 and "test_psnr" in metrics
    mesh_dir = tmp_path / "run" / "mesh"
    for name in ("mesh.obj", "mesh.mtl", "texture_kd.png", "texture_ks.png", "texture_n.png", "probe.hdr", "model.glb"):
        assert (mesh_dir / name).exists(), name
    obj = trimesh.load(mesh_dir / "mesh.obj", process=False)
    assert len(obj.faces) == result["faces"] and obj.visual.material.image is not None
    glb = trimesh.load(mesh_dir / "model.glb")
    assert len(glb.geometry) == 1
    assert (tmp_path / "run" / "mesh.zip").exists() and list((tmp_path / "run" / "snapshots").glob("*.png"))


def test_killed_run_resumes_to_the_same_result(dataset, tmp_path):
    views = rk_dataset.load_viewset(dataset)
    full = rk_run.new_trainer(tiny(), views, tmp_path / "full")
    full.run(progress=False)
    part = rk_run.new_trainer(tiny(), views, tmp_path / "part")
    part.run(14, progress=False)          # "killed" in pass 2, after the checkpoint at pass-2 iteration 0
    resumed = rk_run.new_trainer(tiny(), views, tmp_path / "part", resume=True)
    assert resumed.pass_idx == 1
    resumed.run(progress=False)
    torch.testing.assert_close(resumed.fixed.offset, full.fixed.offset)
    torch.testing.assert_close(resumed.textures.kd.data, full.textures.kd.data)
    assert [h["total"] for h in resumed.history] == pytest.approx([h["total"] for h in full.history])


def test_existing_run_is_not_overwritten(dataset, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        rk_run.new_trainer(tiny(), rk_dataset.load_viewset(dataset), tmp_path / "run")


def test_live_lr_change_takes_effect_next_step(dataset):
    tr = rk_run.new_trainer(tiny(), rk_dataset.load_viewset(dataset), None)
    tr.step()
    tr.cfg.pass1.lr_mat = 0.001
    tr.step()
    assert tr.opt_mat.param_groups[0]["lr"] == pytest.approx(0.001 * trainer.lr_factor(1, 0, tr.cfg.pass1.lr_decay))


def test_compiler_failure_in_a_step_names_the_switch(dataset, monkeypatch):
    """An error raised by torch.compile's machinery inside a step says how to train without it."""
    tr = rk_run.new_trainer(tiny(), rk_dataset.load_viewset(dataset), None)
    failure = type("BackendCompilerFailed", (RuntimeError,), {"__module__": "torch._dynamo.exc"})

    def broken():
        raise failure("inductor: no working C++ compiler")
    monkeypatch.setattr(tr, "_step", broken)
    with pytest.raises(RuntimeError, match="compile='off'"):
        tr.step()
    monkeypatch.setattr(tr, "_step", lambda: (_ for _ in ()).throw(ValueError("plain")))
    with pytest.raises(ValueError, match="plain"):
        tr.step()


def test_training_start_imports_no_mesh_or_table_libraries(demo_dataset, tmp_path):
    """Start-up (issue 15): trimesh (with networkx) and pandas slow start-up; neither is needed until export or
    the pose check, so building a trainer (depth init: hull and fusion) and stepping it must not import them."""
    code = (
        "import sys\n"
        "from recon_kit import config\n"
        "from recon_kit.data import dataset\n"
        "from recon_kit.runs.run import new_trainer\n"
        "cfg = config.resolve('cpu-small', {'pass1.iterations': 2, 'data.resolution': 64, 'geometry.grid_res': 16,"
        " 'geometry.hull_res': 24, 'geometry.init': 'depth', 'checkpoint_every': 0, 'snapshot_every': 0})\n"
        f"tr = new_trainer(cfg, dataset.load_viewset({str(demo_dataset())!r}), {str(tmp_path / 'run')!r})\n"
        "tr.step()\n"
        "print([m for m in ('trimesh', 'networkx', 'pandas') if m in sys.modules])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"

"""The training phases behind one interface, the trainer's callbacks and the one batched render loop."""

import numpy as np
import pytest
import torch

from recon_kit import config
from recon_kit import synth
from recon_kit.cameras import axis_rig
from recon_kit.data import dataset as rk_dataset
from recon_kit.render import MeshRenderer, constant_material, get_rasterizer
from recon_kit.train import phases
from recon_kit.train.callbacks import Callback, every
from recon_kit.train.trainer import Trainer


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cap = synth.write_demo_capture(root / "capture", resolution=64, n_test=1)
    rk_dataset.prepare_dataset(cap, root / "data", [48], progress=False)
    return rk_dataset.load_viewset(root / "data" / "48")


def test_trainer_runs_both_phases_through_one_interface_with_callbacks(views):
    cfg = config.resolve("cpu-small", {"pass1.iterations": 3, "pass2.iterations": 2, "data.resolution": 48,
                                       "geometry.grid_res": 24, "geometry.hull_res": 32,
                                       "material.texture_res": 32, "log_every": 1})
    tr = Trainer(cfg, views)
    assert isinstance(tr.phase, phases.Pass1) and tr.pass_name == "pass1" and tr.fixed is None
    assert [c.name for c in tr.callbacks] == ["history", "good_state", "snapshot", "checkpoint"]
    seen = []
    tr.add_callback(Callback("mine", lambda t, r: seen.append((r.pass_name, r.iteration)), every("log_every")))
    assert set(tr.state_dict()) >= {"dmtet", "field"}
    tr.run(progress=False)
    assert tr.done and isinstance(tr.phase, phases.Pass2) and tr.pass_idx == 1
    assert seen == [("pass1", 0), ("pass1", 1), ("pass1", 2), ("pass2", 0), ("pass2", 1)]
    assert len(tr.history) == 5
    state = tr.state_dict()
    assert {"fixed", "textures"} <= set(state) and not {"dmtet", "field"} & set(state)
    fresh = Trainer(cfg, views)
    fresh.load_state_dict(state)   # a pass-2 checkpoint rebuilds pass 2
    assert isinstance(fresh.phase, phases.Pass2)
    torch.testing.assert_close(fresh.textures.kd.data, tr.textures.kd.data)
    torch.testing.assert_close(fresh.current_mesh().v_pos, tr.current_mesh().v_pos)


def test_render_views_does_not_depend_on_the_batch():
    mesh, kd = synth.demo_object(detail=0.3, texture_size=64)
    cams = axis_rig(32, 32)
    renderer = MeshRenderer(get_rasterizer("torch", "cpu"))
    material = synth.texture_material(kd)
    light = synth.demo_light(16)
    one = renderer.render_views(mesh, cams, material, light, 1.0, batch=1)
    all_ = renderer.render_views(mesh, cams, material, light, 1.0, batch=6)
    for k in ("rgb_linear", "alpha", "depth", "mask"):
        assert one[k].shape[0] == 6
        torch.testing.assert_close(one[k], all_[k], rtol=1e-5, atol=1e-5)
    assert float(one["alpha"].mean()) > 0.05
    grey = renderer.render_views(mesh, cams[:2], constant_material(), light, "white", bsdf="kd")
    covered = grey["mask"][..., 0] > 0
    assert np.median(grey["rgb_linear"][covered].numpy()) == pytest.approx(0.6, abs=1e-5)  # edges: antialiased

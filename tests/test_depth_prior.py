"""``loss.depth_prior``: pass 1's SDF kept on the side of the fused depth maps where they are clear."""

import dataclasses

import pytest
import torch

from recon_kit import config
from recon_kit.data.dataset import load_viewset
from recon_kit.model.fusion import fuse_viewset
from recon_kit.train.trainer import Trainer


def _cfg(**extra):
    return config.resolve("cpu-small", {"data.resolution": 32, "geometry.grid_res": 16, "geometry.hull_res": 32,
                                        "pass1.iterations": 3, "pass2.iterations": 2, "device": "cpu", **extra})


def test_sign_targets_inside_outside_and_a_free_band(demo_dataset):
    views = load_viewset(demo_dataset(64, 32, 0))
    fused = fuse_viewset(views, 2.0, res=32)
    centre, corner = torch.zeros(1, 3), torch.full((1, 3), 0.95)
    assert fused.sign_targets(centre).item() == 1.0 and fused.sign_targets(corner).item() == -1.0
    ray = torch.linspace(0.0, 0.95, 200)[:, None] * torch.tensor([[1.0, 0.0, 0.0]])
    signs = fused.sign_targets(ray)
    assert (signs == 0).any() and signs[0] == 1 and signs[-1] == -1  # inside, a free band, then outside
    first_out = int(torch.nonzero(signs == -1)[0])
    assert (signs[:first_out] != -1).all() and (signs[first_out - 1] == 0)  # the band comes before outside


def test_prior_pulls_wrong_sides_back_and_trains(demo_dataset):
    tr = Trainer(_cfg(**{"loss.depth_prior": 1.0}), load_viewset(demo_dataset(64, 32, 0)))
    phase = tr.pass1
    assert phase._prior_idx.numel() > 0 and set(phase._prior_sign.unique().tolist()) <= {-1.0, 1.0}
    with torch.no_grad():
        phase.dmtet.sdf.copy_(-phase.dmtet.sdf)   # every constrained vertex on the wrong side
    reg = phase.regularizers(0.0, tr.cfg)["depth_prior"]
    reg.backward()
    grad = phase.dmtet.sdf.grad.index_select(0, phase._prior_idx)
    assert reg.item() > 0 and torch.all(grad * phase._prior_sign <= 0)  # descent moves each toward its side
    tr2 = Trainer(_cfg(**{"loss.depth_prior": 1.0}), load_viewset(demo_dataset(64, 32, 0)))
    tr2.run(progress=False)
    assert all(torch.isfinite(torch.as_tensor(h["depth_prior"])) for h in tr2.history if "depth_prior" in h)
    assert any("depth_prior" in h for h in tr2.history)


def test_prior_without_depth_is_a_one_line_error(demo_dataset):
    views = dataclasses.replace(load_viewset(demo_dataset(64, 32, 0)), depth=None)
    with pytest.raises(ValueError, match="loss.depth_prior needs depth maps.*set loss.depth_prior=0"):
        Trainer(_cfg(**{"loss.depth_prior": 1.0}), views)
    with pytest.raises(config.ConfigError, match="data.use_depth=false turns off; set loss.depth_prior=0"):
        _cfg(**{"loss.depth_prior": 1.0, "data.use_depth": False})

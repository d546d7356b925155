"""Depth-map fusion (recon_kit.model.fusion), mask holes that survive cleaning, and geometry.init='depth'."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from scipy import ndimage as ndi

from recon_kit import config, evaluate, synth
from recon_kit.data import masks
from recon_kit.data.dataset import load_viewset, prepare_dataset
from recon_kit.model import fusion
from recon_kit.train.trainer import Trainer


@pytest.fixture(scope="module")
def demo_views(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    mesh, kd = synth.demo_object(detail=0.5)
    cap = synth.render_capture(mesh, kd, root / "capture", resolution=96, depth_resolution=48)
    prepare_dataset(cap, root / "data", [96], progress=False)
    return load_viewset(root / "data" / "96"), cap / "gt_mesh.obj", root


def test_fit_depth_to_hull_recovers_an_affine_encoding():
    rng = np.random.default_rng(0)
    true = rng.uniform(2.5, 3.5, (40, 40))
    raw = np.round(1 + 254 * (3.5 - true)).clip(1, 255)
    metric = 3.5 - (raw - 1) / 254  # the depth the raw levels stand for
    hull_depth = metric - np.where(rng.random(true.shape) < 0.4, rng.uniform(0, 0.3, true.shape), 0.0)
    fit = fusion.fit_depth_to_hull(raw, hull_depth)
    assert fit.ok and abs(fit.scale + 1 / 254) < 1e-4 and abs(fit.shift - (3.5 + 1 / 254)) < 5e-3


def test_fused_depth_is_closer_to_the_ground_truth_than_the_hull(demo_views, tmp_path):
    views, gt, _ = demo_views
    fused = fusion.fuse_viewset(views, 2.1, res=64)
    assert all(f.ok for f in fused.fits)
    assert fused.occupancy_fn(np.zeros((1, 3), np.float32)).shape == (1,)
    scores = {}
    for name, fn in (("hull", fused.hull.occupancy_fn), ("fused", fused.occupancy_fn)):
        path = tmp_path / f"{name}.obj"
        fusion.occupancy_mesh(fn, fused.bounds, 63).export(path)
        scores[name] = evaluate.chamfer_fscore(path, gt, n_points=20_000)["chamfer_l1"]
    assert scores["fused"] < scores["hull"], scores


def test_speck_holes_are_filled_and_large_holes_kept():
    m = np.ones((64, 64), bool)
    m[10:12, 10:12] = False  # speck
    m[30:45, 30:45] = False  # opening (5 % of the mask)
    out = masks.clean_mask(m, opening=0, min_component=0)
    assert out[10, 10] and not out[37, 37]
    assert masks.clean_mask(m, opening=0, min_component=0, max_hole=None)[37, 37]
    background = np.zeros_like(m)
    background[10:12, 10:12] = True  # the photo says the speck is background: keep it
    assert not masks.fill_small_holes(m, background=background)[10, 10]


def test_demo_handle_hole_survives_preparation(demo_views):
    views, _, _ = demo_views
    front = views.mask[views.names.index("front")].numpy() > 0.5
    enclosed = ndi.binary_fill_holes(front) & ~front
    assert enclosed.sum() > 0.02 * front.sum()  # the view through the handle stays open


def test_geometry_init_depth_is_validated():
    assert config.resolve("cpu-small", {"geometry.init": "depth"}).geometry.init == "depth"
    with pytest.raises(config.ConfigError, match="geometry.init must be hull, depth"):
        config.resolve("cpu-small", {"geometry.init": "tsdf"})


def test_init_depth_without_depth_maps_falls_back_to_the_hull(demo_views, caplog):
    views, _, _ = demo_views
    cfg = config.resolve("cpu-small", {"geometry.init": "depth", "data.resolution": 96, "geometry.grid_res": 16,
                                       "geometry.hull_res": 32, "compile": "off"})
    no_depth = dataclasses.replace(views, depth=None)
    with caplog.at_level(logging.WARNING, logger="recon_kit.train"):
        trainer = Trainer(cfg, no_depth, None, device="cpu")
    assert "geometry.init='depth'" in caplog.text and "geometry.init='hull'" in caplog.text
    assert trainer.dmtet.extract().t_pos_idx.shape[0] > 0
    with_depth = Trainer(cfg, views, None, device="cpu")
    assert with_depth.dmtet.extract().t_pos_idx.shape[0] > 0

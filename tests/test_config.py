import json
from pathlib import Path

import pytest

from recon_kit import config as C

SHOE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "shoe"


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = C.ReconConfig()
    cfg.save(tmp_path / "c.json")
    assert C.ReconConfig.load(tmp_path / "c.json") == cfg


def test_unknown_key_lists_valid_ones():
    with pytest.raises(C.ConfigError, match=r"unknown key\(s\) pass1.iters.*valid keys in pass1: .*iterations"):
        C.ReconConfig.from_dict({"pass1": {"iters": 10}})


def test_bad_types_and_values_are_named():
    with pytest.raises(C.ConfigError, match="pass1.batch must be int"):
        C.ReconConfig.from_dict({"pass1": {"batch": "two"}})
    with pytest.raises(C.ConfigError, match="geometry.init must be hull, depth, sphere or random"):
        C.ReconConfig.from_dict({"geometry": {"init": "cube"}})
    with pytest.raises(C.ConfigError, match=r"geometry.laplace_floor must be a share of geometry.laplace_scale in "
                                            r"\[0, 1\] \(0 = decay to 0\)"):
        C.resolve("cpu-small", {"geometry.laplace_floor": 1.5})
    with pytest.raises(C.ConfigError, match=r"geometry.cull_views must be >= 0"):
        C.resolve("gpu-default", {"geometry.cull_views": -1})
    assert C.preset("seed-nvdiffrec").geometry.cull_views == 0 and C.preset("gpu-minute").geometry.cull_views == 48


def test_overrides_and_presets():
    cfg = C.resolve("cpu-small", {"pass1.iterations": 7, "loss.depth": 1})
    assert cfg.pass1.iterations == 7 and cfg.loss.depth == 1.0 and cfg.data.resolution == 128
    with pytest.raises(C.ConfigError, match="unknown key"):
        C.resolve("cpu-small", {"pass1.nope": 1})
    with pytest.raises(C.ConfigError, match="unknown preset|does not exist"):
        C.resolve("no-such-preset")
    assert set(C.flatten(cfg)) >= {"pass1.iterations", "seed"}


def test_gpu_fast_is_gpu_default_with_a_shorter_all_view_schedule():
    default, fast = C.preset("gpu-default"), C.preset("gpu-fast")
    assert (fast.pass1.batch, fast.pass2.batch, fast.pass1.iterations, fast.pass2.iterations) == (6, 6, 1000, 1600)
    assert fast.compile == "off" and fast.cuda_graph == default.cuda_graph == "auto" and fast.pass2.lr_decay * fast.pass2.iterations == pytest.approx(1.0)
    same = {k: v for k, v in C.flatten(default).items() if not k.startswith(("pass1.", "pass2."))
            and k not in ("compile", "snapshot_every")}
    assert same == {k: C.flatten(fast)[k] for k in same}
    assert default.pass1.batch == 2 and default.pass1.iterations == 5000  # building gpu-fast left it alone
    minute = C.preset("gpu-minute")
    assert (minute.pass1.iterations, minute.pass2.iterations, minute.pass1.batch) == (300, 400, 6)
    from recon_kit.train.trainer import lr_factor

    for pc in (minute.pass1, minute.pass2):                 # each decay scaled to its pass's length
        assert pc.lr_decay * pc.iterations == pytest.approx(1.0, rel=0.01)
        assert 0.09 < lr_factor(pc.iterations, pc.warmup, pc.lr_decay) < 0.14
    schedule = {f"{p}.{k}" for p in ("pass1", "pass2") for k in ("iterations", "lr_decay")} | {"geometry.unwrap_faces"}
    assert minute.geometry.unwrap_faces == 20000 and fast.geometry.unwrap_faces == 0   # xatlas on fewer faces
    assert {k: v for k, v in C.flatten(minute).items() if k not in schedule} == \
        {k: v for k, v in C.flatten(fast).items() if k not in schedule}    # gpu-fast's recipe, shorter
    assert C.preset("gpu-default").cameras.refine and C.preset("gpu-default").loss.depth_end == 0.0
    calibrated = C.preset("gpu-calibrated")
    assert not calibrated.cameras.refine and calibrated.loss.depth_end == 1.0 and calibrated.loss.edge_px == 8.0
    assert calibrated.pass1 == default.pass1 and calibrated.data == default.data


def test_invalid_json_names_the_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(C.ConfigError, match="bad.json is not valid JSON"):
        C.ReconConfig.load(p)


def test_users_nvdiffrec_config_maps():
    path = SHOE / "reference" / "nvdiffrec_config_seed.json"
    if not path.exists():
        pytest.skip("reference config not available")
    cfg = C.ReconConfig.load(path)
    assert cfg.data.resolution == 1024 and cfg.pass1.batch == 2 and cfg.geometry.grid_res == 128
    assert cfg.pass1.lr_pos == 0.03 and cfg.pass2.lr_mat == 0.01 and cfg.geometry.laplace_scale == 3000
    assert cfg.material.ks_min == (0.0, 0.08, 0.0) and cfg.material.texture_res == 1024
    assert cfg.geometry.init == "random" and cfg.data.val_background == "white"


def test_nvdiffrec_typo_is_rejected(tmp_path):
    p = tmp_path / "n.json"
    p.write_text(json.dumps({"ref_mesh": "x", "learn_lighting": False}))
    with pytest.raises(C.ConfigError, match="learn_lighting"):
        C.ReconConfig.load(p)


def test_partial_sections_keep_their_own_defaults():
    cfg = C.ReconConfig.from_dict({"pass2": {"iterations": 10}})
    assert cfg.pass2.lr_pos == 0.01 and cfg.pass2.warmup == 100 and cfg.pass2.iterations == 10
    assert C.preset("cpu-small").pass2.lr_mat == 0.01

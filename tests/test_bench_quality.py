"""The quality benchmark runs end to end at tiny settings on the demo object (no ../shared) and every metric it
reports is finite. No thresholds: the figures live in docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np

from recon_kit.runs import benchmark

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "scripts" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quality_runs_on_the_demo_object_and_every_metric_is_finite(tmp_path):
    doc = _script().main([
        "synth", "--objects", "demo", "--res", "64", "--n-test", "2", "--baseline-res", "40", "--n-points", "4000",
        "--iterations", "12", "6", "--inits", "depth", "--out", str(tmp_path),
        "--set", "geometry.grid_res=24", "--set", "geometry.hull_res=32", "--set", "material.texture_res=64",
        "--set", "compile=off", "--set", "checkpoint_every=0"])
    methods = [r["method"] for r in doc["rows"]]
    assert methods == ["hull", "fused_depth", "depth_bound", "recon init=depth"]
    for row in doc["rows"]:
        keys = benchmark.GEOMETRY_KEYS + (benchmark.IMAGE_KEYS if row["method"].startswith("recon") else ())
        bad = {k: row.get(k) for k in keys if not (isinstance(row.get(k), float) and math.isfinite(row[k]))}
        assert not bad, (row["method"], bad)
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(doc["rows"], default=float))
    assert "| demo | fused_depth |" in (tmp_path / "quality.md").read_text()
    assert (tmp_path / "demo" / "baselines" / "depth_bound.obj").exists()


def test_set_values_parse_as_json_or_strings():
    assert _script().parse_set(["pass1.iterations=20", "geometry.init=depth", "data.use_depth=false"]) == {
        "pass1.iterations": 20, "geometry.init": "depth", "data.use_depth": False}


def test_bench_quality_shoe_runs_variants_of_a_prepared_capture(tmp_path):
    dataset = benchmark.render_object("demo", tmp_path / "demo", 64, n_test=2, seed=0, device="cpu")
    rows = _script().main([
        "shoe", "--dataset", str(dataset), "--preset", "cpu-small", "--out", str(tmp_path / "shoe"),
        "--variant", "refine:cameras.refine=true,loss.edge_px=2",
        "--set", "data.resolution=64", "--set", "pass1.iterations=8", "--set", "pass2.iterations=4",
        "--set", "geometry.grid_res=24", "--set", "geometry.hull_res=32", "--set", "material.texture_res=64",
        "--set", "compile=off", "--set", "checkpoint_every=0", "--set", "snapshot_every=0"])
    assert [r["variant"] for r in rows] == ["refine"]
    row = rows[0]
    for key in ("train_psnr", "written_psnr", "train_ssim", "train_iou", "fringe", "fringe_photos"):
        assert isinstance(row[key], float) and math.isfinite(row[key]), key
    assert len(row["camera_corrections"]) == 6
    assert (tmp_path / "shoe" / "refine" / "novel.png").exists()
    assert "| refine |" in (tmp_path / "shoe" / "summary.md").read_text()


def test_shoe_variants_parse_with_the_common_overrides_first():
    assert _script().parse_variants(["base:", "r:cameras.refine=true,loss.edge_px=8"], {"loss.edge_px": 0}) == {
        "base": {"loss.edge_px": 0}, "r": {"loss.edge_px": 8, "cameras.refine": True}}


def test_depth_bound_of_a_sphere_covers_it_and_lies_on_it(tmp_path):
    """The 6 axis views see all of a sphere: its depth bound lies on it and covers it (no sheet bridges a jump)."""
    import trimesh

    from recon_kit.cameras import axis_rig

    gt = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=5, radius=0.7).export(gt)
    bound = benchmark.depth_bound_mesh(gt, axis_rig(64, 64), depth_res=48)
    radius = np.linalg.norm(bound.vertices, axis=1)
    assert np.abs(radius - 0.7).max() < 0.01  # vertices on the (faceted) sphere
    assert np.linalg.norm(bound.triangles_center, axis=1).min() > 0.66  # no triangle cuts through it
    scores = benchmark.geometry_scores(bound, gt, 50_000)
    assert scores["recall"] > 0.99 and scores["precision"] > 0.99 and scores["normal_consistency"] > 0.95

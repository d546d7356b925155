"""notebooks/04_inspect_mesh.ipynb: committed clean with typed parameters, and run with papermill on a tiny run
trained on the CPU (metrics merged into metrics.json, turntable GIF and standalone viewer written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_inspect_mesh.ipynb"


def test_nb04_declares_its_parameters():
    import papermill as pm

    params = pm.inspect_notebook(str(NOTEBOOK))  # clean outputs, tags, kernelspec: tests/test_notebooks_clean.py
    assert {"run_dir", "gt_mesh", "dataset_dir", "n_frames", "turntable_res"} <= set(params)
    assert params["workspace"]["default"] == '"outputs/demo"' and params["run_dir"]["default"] == '""'
    assert params["gt_mesh"]["default"] == '""' and params["dataset_dir"]["default"] == '""'
    assert params["n_frames"]["default"] == "24" and params["turntable_res"]["default"] == "192"
    assert all(p["inferred_type_name"] != "None" and p["help"] for p in params.values())


@pytest.mark.slow
def test_nb04_on_a_tiny_run(tmp_path):
    import imageio.v3 as iio
    import nbformat
    import papermill as pm

    from recon_kit import config
    from recon_kit.data import dataset
    from recon_kit.runs import run as rk_run
    from recon_kit import synth

    cap = synth.write_demo_capture(tmp_path / "capture", resolution=96, n_test=2)
    dataset.prepare_dataset(cap, tmp_path / "data", [64], progress=False)
    ds = tmp_path / "data" / "64"
    cfg = config.resolve("cpu-small", {
        "pass1.iterations": 12, "pass2.iterations": 6, "data.resolution": 64, "geometry.grid_res": 32,
        "geometry.hull_res": 48, "material.texture_res": 64, "checkpoint_every": 0, "snapshot_every": 0})
    run_dir = tmp_path / "run"
    tr = rk_run.new_trainer(cfg, dataset.load_viewset(ds), run_dir)
    tr.run(progress=False)
    rk_run.finish(tr, ds)

    out = tmp_path / "04_out.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                        execution_timeout=300,
                        parameters={"run_dir": str(run_dir), "gt_mesh": str(ds / "gt_mesh.obj"),
                                    "dataset_dir": str(tmp_path / "data"), "n_frames": 6, "turntable_res": 64,
                                    "max_views": 2})
    m = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < m["chamfer_l1"] < 0.2, m["chamfer_l1"]
    assert 0 <= m["fscore"] <= 1 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert m["gt_mesh"] == str(ds / "gt_mesh.obj") and "train_psnr" in m
    assert m["mesh"]["faces"] == tr.fixed.mesh().num_faces and m["mesh"]["vertices"] > 0
    html = (run_dir / "viewer.html").read_text()
    assert len(html) > 10_000 and "<html" in html.lower()
    frames = iio.imread(run_dir / "turntable.gif", index=None)
    assert frames.shape[:3] == (6, 64, 64)
    executed = nbformat.read(out, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3      # grid, textures, probe
    assert any("image/gif" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "chamfer_l1" in text and "comparison skipped" not in text

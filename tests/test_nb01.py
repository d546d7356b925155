"""Runs notebooks/01_prepare_data.ipynb with papermill on the user's shoe capture at 128 px."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_prepare_data.ipynb"
SHOE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "shoe"


def test_nb01_declares_its_parameters():
    import papermill as pm

    params = pm.inspect_notebook(str(NOTEBOOK))  # clean outputs, tags, kernelspec: tests/test_notebooks_clean.py
    assert {"input_dir", "output_dir", "resolutions", "mask_source", "align", "camera_angle_x", "distance",
            "overwrite"} <= set(params)
    assert all(p["inferred_type_name"] != "None" and p["help"] for p in params.values())


@pytest.mark.slow
def test_nb01_runs_on_shoe(tmp_path):
    if not SHOE.exists():
        pytest.skip(f"{SHOE} not found (the shoe capture lives in ../shared beside the project)")
    import nbformat
    import papermill as pm

    out_dir = tmp_path / "data"
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "01_out.ipynb"), kernel_name="python3", cwd=str(ROOT),
                        parameters={"input_dir": str(SHOE), "output_dir": str(out_dir), "resolutions": [128]},
                        progress_bar=False, execution_timeout=300)
    ds = out_dir / "128"
    ours = json.loads((ds / "transforms.json").read_text())
    ref = json.loads((SHOE / "reference" / "transforms_seed.json").read_text())
    assert ours["camera_angle_x"] == pytest.approx(ref["camera_angle_x"], abs=1e-9)
    assert [Path(f["file_path"]).stem for f in ours["frames"]] == [Path(f["file_path"]).stem for f in ref["frames"]]
    for a, b in zip(ours["frames"], ref["frames"]):
        np.testing.assert_allclose(a["transform_matrix"], b["transform_matrix"], atol=1e-12)
        rgba, depth = Image.open(ds / a["file_path"]), Image.open(ds / a["depth_file_path"])
        assert rgba.mode == "RGBA" and rgba.size == (128, 128)
        assert depth.mode in ("I;16", "I") and depth.size == (128, 128)
        assert 0.02 < (np.asarray(rgba)[..., 3] > 127).mean() < 0.5
    alignment = ours["recon_kit"]["alignment"]
    assert set(alignment) == {Path(f["file_path"]).stem for f in ref["frames"]}
    executed = nbformat.read(tmp_path / "01_out.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # grids, bar chart, RGBA grid

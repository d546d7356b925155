"""notebooks/02_check_poses.ipynb: committed clean, and run with papermill on a small dataset prepared from the
user's shoe capture, with one view's pose turned by hand (it must be found, fixed and written out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_check_poses.ipynb"
SHOE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "shoe"


def test_nb02_declares_its_parameters():
    import papermill as pm

    params = pm.inspect_notebook(str(NOTEBOOK))  # clean outputs, tags, kernelspec: tests/test_notebooks_clean.py
    assert {"dataset_dir", "transforms", "grid_res", "write_corrected", "apply_calibration", "output_dir"} <= set(params)
    assert params["workspace"]["default"] == '"outputs/demo"'  # the empty paths follow from the workspace
    assert params["dataset_dir"]["default"] == '""' and params["output_dir"]["default"] == '""'
    assert all(p["inferred_type_name"] != "None" and p["help"] for p in params.values())


@pytest.mark.slow
def test_nb02_finds_and_writes_a_fix_on_the_shoe(tmp_path):
    if not SHOE.exists():
        pytest.skip(f"{SHOE} not found (the shoe capture lives in ../shared beside the project)")
    from recon_kit.data.dataset import prepare_dataset
    import nbformat
    import papermill as pm

    prepare_dataset(SHOE, tmp_path / "data", resolutions=(128,), progress=False)
    ds = tmp_path / "data" / "128"
    meta = json.loads((ds / "transforms.json").read_text())
    names = [Path(f["file_path"]).stem for f in meta["frames"]]
    k = names.index("left")
    broken = json.loads(json.dumps(meta))
    m = np.array(broken["frames"][k]["transform_matrix"], float)
    m[:3, :2] = np.stack([m[:3, 1], -m[:3, 0]], 1)  # camera rolled by +90 deg about its view axis
    broken["frames"][k]["transform_matrix"] = m.tolist()
    (ds / "transforms_broken.json").write_text(json.dumps(broken, indent=2))

    out = tmp_path / "posecheck"
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "02_out.ipynb"), kernel_name="python3", cwd=str(ROOT),
                        parameters={"dataset_dir": str(ds), "transforms": str(ds / "transforms_broken.json"),
                                    "mesh_scale": 2.6, "write_corrected": True, "output_dir": str(out)},
                        progress_bar=False, execution_timeout=300)
    for name in ("cameras.png", "cameras.html", "consistency.png", "silhouettes.png", "calibration.png",
                 "report.txt", "consistency.csv"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.txt").read_text()
    assert "left" in report and "roll -90" in report
    fixed = json.loads((ds / "transforms_broken_corrected.json").read_text())
    np.testing.assert_allclose(fixed["frames"][k]["transform_matrix"], meta["frames"][k]["transform_matrix"],
                               atol=1e-12)
    assert json.loads((ds / "transforms_broken.json").read_text()) == broken
    executed = nbformat.read(tmp_path / "02_out.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4

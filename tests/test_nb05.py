"""notebooks/05_compare_runs.ipynb: committed clean with typed parameters, and run with papermill: it trains a
2 x 2 sweep on the demo object from its own cell (tiny CPU settings) into a folder that already holds a failed run,
then draws the table, the plots and the side-by-side views."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from recon_kit.data import dataset as rk_dataset
from recon_kit.runs import sweep as rk_sweep
from recon_kit.runs import table as rk_table
from recon_kit import synth

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_compare_runs.ipynb"
TINY = {"pass1.iterations": 8, "pass2.iterations": 4, "data.resolution": 48, "geometry.hull_res": 32,
        "material.texture_res": 64, "snapshot_every": 4, "checkpoint_every": 0, "log_every": 1}
GRID = {"pass1.lr_mat": [0.01, 0.03], "geometry.grid_res": [24, 32]}


def test_nb05_declares_its_parameters():
    import nbformat
    import papermill as pm

    code = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    params = pm.inspect_notebook(str(NOTEBOOK))  # clean outputs, tags, kernelspec: tests/test_notebooks_clean.py
    assert {"runs_dir", "dataset_dir"} <= set(params)
    assert params["runs_dir"]["default"] == '"outputs/sweeps/demo"' and params["dataset_dir"]["default"] == '""'
    assert all(p["inferred_type_name"] != "None" and p["help"] for p in params.values())
    for line in code[0].source.splitlines():  # papermill's parameter parser trips over '=' inside comments
        assert "=" not in line.partition("#")[2], line
        ast.parse(line)
    assert "at_repo_root()" in code[1].source


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny runs gain nothing from a second torch thread; on 2 shared, busy cores two spinning OpenMP threads make
    them ten times slower. The notebook's kernel inherits OMP_NUM_THREADS."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_nb05_runs_a_sweep_and_compares(tmp_path, one_thread):
    import nbformat

    from recon_kit.notebooks import run_notebook

    cap = synth.write_demo_capture(tmp_path / "capture", resolution=64, n_test=1)
    rk_dataset.prepare_dataset(cap, tmp_path / "data", [48], progress=False)
    dataset = tmp_path / "data" / "48"
    sweep_dir = tmp_path / "sweeps" / "demo"
    rk_sweep.Sweep(sweep_dir, dataset, runs=[{"pass1.lr_mat": "fast"}], base=TINY).run(progress=False)  # fails

    out = run_notebook("05_compare_runs.ipynb", tmp_path / "05_out.ipynb",
                       {"runs_dir": str(sweep_dir), "dataset_dir": str(dataset), "grid": GRID, "base": TINY},
                       timeout=600)
    table = rk_table.load_runs(sweep_dir)
    assert sorted(table.status) == ["failed"] + ["finished"] * 4
    man = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(man["runs"]) == 5 and man["counts"] == {"finished": 4, "failed": 1}
    for name in table.index[table.status == "finished"]:
        assert (sweep_dir / name / "training.gif").exists() and (sweep_dir / name / "mesh.zip").exists()

    executed = nbformat.read(out, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # parameters, loss curves, views
    assert any("image/gif" in o.get("data", {}) for o in outputs)     # the best run's animation
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "pass1.lr_mat=0.03__geometry.grid_res=32" in text and "5 runs in" in text
    assert "must be float" in text  # the failed run's error is shown

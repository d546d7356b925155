"""Committed notebooks are clean and papermill-ready.

For every notebooks/*.ipynb (and each name in recon_kit.notebooks.NOTEBOOKS, skipped while not written yet):
no outputs or execution counts, no papermill leftovers, kernelspec ``python3``, a first code cell tagged
``parameters`` holding only annotated literal assignments, and ``papermill.inspect_notebook`` reads it.
Fix a dirty notebook with ``make strip``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from recon_kit.notebooks import NOTEBOOKS

nbformat = pytest.importorskip("nbformat")  # skipped, not a collection error, where it is missing

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NAMES = sorted(set(NOTEBOOKS) | {p.name for p in NB_DIR.glob("*.ipynb")})


def _load(name: str) -> nbformat.NotebookNode:
    path = NB_DIR / name
    if not path.exists():
        pytest.skip(f"{name} is not written yet")
    return nbformat.read(path, as_version=4)


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cell"
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [0], (
        f"the first code cell must be the only one tagged 'parameters' (tagged code cells: {tagged}); "
        "JupyterLab: property inspector -> Add Tag"
    )
    return code[0]


@pytest.mark.parametrize("name", NAMES)
def test_no_outputs_or_execution_counts(name):
    nb = _load(name)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{name}: cells {dirty} have outputs or execution counts; run `make strip`"
    assert "widgets" not in nb.metadata, f"{name}: saved widget state in metadata; run `make strip`"


@pytest.mark.parametrize("name", NAMES)
def test_no_papermill_leftovers(name):
    nb = _load(name)
    assert "papermill" not in nb.metadata, f"{name} is a papermill output; never save those into notebooks/"
    injected = [i for i, c in enumerate(nb.cells) if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert not injected, f"{name}: cells {injected} are papermill's injected-parameters; delete them"


@pytest.mark.parametrize("name", NAMES)
def test_kernelspec_python3(name):
    nb = _load(name)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{name}: kernelspec name must be 'python3' (found {nb.metadata.get('kernelspec')})"
    )


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_is_annotated_literals(name):
    cell = _parameters_cell(_load(name))
    tree = ast.parse(cell.source)
    assert tree.body, f"{name}: the parameters cell is empty"
    names = []
    for node in tree.body:
        where = f"{name}, parameters cell line {node.lineno}"
        assert isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name), (
            f"{where}: only `name: type = literal  # help` lines are allowed (papermill --help-notebook "
            f"shows the type and help; computed values go in the next cell)"
        )
        assert node.value is not None, f"{where}: {node.target.id} needs a default value"
        try:
            ast.literal_eval(node.value)
        except ValueError:
            pytest.fail(f"{where}: {node.target.id} = {ast.unparse(node.value)} is not a literal; "
                        "derive values in the next cell (papermill does not recompute them)")
        names.append(node.target.id)
    assert len(names) == len(set(names)), f"{name}: a parameter is assigned twice: {names}"


@pytest.mark.parametrize("name", NAMES)
def test_papermill_inspects(name):
    papermill = pytest.importorskip("papermill")
    cell = _parameters_cell(_load(name))
    params = papermill.inspect_notebook(str(NB_DIR / name))
    declared = [n.target.id for n in ast.parse(cell.source).body if isinstance(n, ast.AnnAssign)]
    assert list(params) == declared, f"{name}: papermill sees {list(params)}, the cell assigns {declared}"
    unknown = [k for k, v in params.items() if v["inferred_type_name"] in ("None", "Unknown type")]
    assert not unknown, f"{name}: papermill cannot tell the type of {unknown}; annotate them"


@pytest.mark.parametrize("name", NAMES)
def test_no_install_or_download_cells(name):
    nb = _load(name)
    bad = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and any(line.lstrip().startswith(("!pip", "%pip", "!conda", "%conda", "!wget", "!curl"))
                   for line in c.source.splitlines())]
    assert not bad, f"{name}: cells {bad} install or download; dependencies belong in pyproject.toml"


@pytest.mark.parametrize("name", NAMES)
def test_nbstripout_verify(name):
    """The canonical stripped form (what `make strip` writes), so committing never creates noise diffs."""
    _load(name)
    res = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", str(NB_DIR / name)],
                         capture_output=True, text=True)
    assert res.returncode == 0, f"{name} is not in nbstripout's form; run `make strip`\n{res.stdout}{res.stderr}"

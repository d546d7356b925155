"""run_notebook(stream=True): one line per executed code cell and the notebook's stderr (progress bars) as it
comes; printed results stay in the executed notebook."""

from __future__ import annotations

import pytest

from recon_kit.runs.notebook import run_notebook

nbformat = pytest.importorskip("nbformat")  # skipped, not a collection error, where it is missing


@pytest.mark.slow
def test_stream_prints_a_line_per_cell_and_passes_stderr(tmp_path, capfd):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    params = nbformat.v4.new_code_cell("n: int = 2  # cells")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import sys\nprint('a result')\nsys.stderr.write('bar 50%\\n')"),
                nbformat.v4.new_code_cell("total = n * 21")]
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    run_notebook(tmp_path / "tiny.ipynb", tmp_path / "out.ipynb", {"n": 2}, cwd=tmp_path, stream=True)
    out, err = capfd.readouterr()
    lines = [ln for ln in out.splitlines() if "tiny.ipynb cell" in ln]
    assert len(lines) == 2 and "print('a result')" in lines[0] and "total = n * 21" in lines[1]
    assert "bar 50%" in err and "a result\n" not in out

"""The end-to-end demo (notebooks 01..04 through papermill on the built-in object) at its quickest settings."""

from __future__ import annotations

import json

import pytest

from recon_kit import notebooks as rk_nb


@pytest.mark.slow
def test_quick_demo_writes_mesh_viewer_and_turntable(tmp_path):
    lines: list[str] = []
    out = tmp_path / "demo"
    res = rk_nb.run_demo(out, device="cpu", quick=True, timeout=600,
                         echo=lambda *a: lines.append(" ".join(map(str, a))))
    assert set(res.results) == {"mesh", "viewer", "turntable"} and not res.missing
    text = "\n".join(lines)
    for key, path in res.results.items():
        assert path.exists() and path.stat().st_size > 0, key
        assert str(path) in text, key                       # printed where it is
    assert [p.name for p in res.notebooks] == rk_nb.NOTEBOOKS
    summary = json.loads((out / "demo.json").read_text())
    assert summary["quick"] is True and set(summary["seconds"]) == set(rk_nb.NOTEBOOKS)
    metrics = json.loads((res.run_dir / "metrics.json").read_text())
    assert metrics["gt_mesh"].endswith("gt_mesh.obj")          # 04 got the demo's ground truth
    assert 0 < metrics["chamfer_l1"] < 0.2 and 0 <= metrics["fscore"] <= 1
    assert metrics["iterations"] == {"pass1": rk_nb.QUICK["overrides"]["pass1.iterations"],
                                     "pass2": rk_nb.QUICK["overrides"]["pass2.iterations"]}
    assert (res.run_dir / "turntable.gif").exists() and (res.run_dir / "viewer.html").exists()

"""Notebook 02 -> 03 hand-off: posecheck.json in the dataset folder, applied only when accepted; the fov scan
says when it peaks at the edge of its range."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd

from recon_kit import config
from recon_kit.runs import findings
from recon_kit.posecheck import Calibration, Flag


def _dataset(tmp_path):
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": []}))
    return tmp_path


def test_findings_are_used_only_when_accepted(tmp_path):
    ds = _dataset(tmp_path)
    cfg = config.resolve("cpu-small")
    views = SimpleNamespace(names=[], width=8, height=8)
    assert "no posecheck.json" in findings.apply(cfg, views, ds, True)[2]
    report = SimpleNamespace(flags=[Flag(None, "volume_cuts_object", "the object is cut")], fixes=[])
    path = findings.write(ds, report, checked_mesh_scale=2.1, suggested_mesh_scale=2.75)
    assert path == ds / "posecheck.json" and findings.read(ds)["checked_scale_cuts_object"] is True
    same, _, note = findings.apply(cfg, views, ds, False)
    assert same.geometry.mesh_scale == "auto" and "accept_posecheck=True" in note and "2.10 cuts" in note
    used, _, note = findings.apply(cfg, views, ds, True)
    assert used.geometry.mesh_scale == 2.75 and note.startswith("using notebook 02's findings")


def test_calibration_at_the_edge_of_its_range():
    table = pd.DataFrame({"camera_angle_x": np.linspace(0.6, 1.1, 6), "coverage": np.linspace(0.5, 0.9, 6)})
    assert Calibration(table, 1.1, None, 0.9, 0.85, 0.8).at_edge
    table["coverage"] = [0.5, 0.7, 0.9, 0.8, 0.7, 0.6]
    assert not Calibration(table, 0.8, None, 0.9, 0.85, 0.8).at_edge

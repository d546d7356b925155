"""The workspace folder from which the notebooks' default paths follow; "not found" names the folder."""

from __future__ import annotations

import json
import os
import time

import pytest

from recon_kit.runs.workspace import Workspace


def test_paths_follow_from_the_workspace(tmp_path):
    ws = Workspace(tmp_path / "shoe")
    for res in (64, 256):
        (ws.data_dir / str(res)).mkdir(parents=True)
        (ws.data_dir / str(res) / "transforms.json").write_text("{}")
    assert ws.dataset() == ws.data_dir / "256" and ws.dataset(64) == ws.data_dir / "64"
    assert ws.posecheck_dir == tmp_path / "shoe" / "posecheck"
    old, new = ws.runs_dir / "a", ws.runs_dir / "b"
    for i, run in enumerate((old, new)):
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({}))
        os.utime(run / "metrics.json", (time.time() + i, time.time() + i))
    assert ws.latest_run() == new


def test_not_found_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = Workspace("outputs/nothing")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "outputs" / "nothing" / "data")):
        ws.dataset()
    with pytest.raises(FileNotFoundError, match="outputs/nothing/runs"):
        ws.latest_run()

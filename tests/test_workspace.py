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


def test_cli_follows_the_workspace(tmp_path, capsys):
    """prepare -> check-poses -> train with only --workspace: the folders notebooks 01-03 would use."""
    from recon_kit import synth
    from recon_kit.cli import main

    cap = synth.write_demo_capture(tmp_path / "capture", resolution=64, n_test=0)
    ws = Workspace(tmp_path / "shoe")
    assert main(["prepare", str(cap), "--workspace", str(ws.root), "--resolutions", "32", "64"]) == 0
    assert (ws.data_dir / "64" / "transforms.json").is_file() and ws.dataset() == ws.data_dir / "64"
    assert main(["check-poses", "--workspace", str(ws.root), "--grid-res", "24", "--mask-size", "32",
                 "--no-run-calibration"]) == 0
    assert (ws.posecheck_dir / "report.txt").is_file()
    assert main(["train", "cpu-small", "--workspace", str(ws.root), "--no-progress", "--set", "data.resolution=32",
                 "--set", "geometry.grid_res=16", "--set", "geometry.hull_res=24", "--set", "material.texture_res=32",
                 "--set", "pass1.iterations=2", "--set", "pass2.iterations=2", "--set", "pass2.warmup=0",
                 "--set", "checkpoint_every=0", "--set", "snapshot_every=0"]) == 0
    run = ws.latest_run()
    assert run.parent == ws.runs_dir and json.loads((run / "config.json").read_text())
    assert f"run folder: {run.resolve()}" in capsys.readouterr().out


def test_cli_explicit_paths_win_over_the_workspace(tmp_path, capsys):
    from recon_kit.cli import main, parse

    ws = Workspace(tmp_path / "ws")
    (ws.data_dir / "64").mkdir(parents=True)
    (ws.data_dir / "64" / "transforms.json").write_text("{}")
    other = tmp_path / "other"
    other.mkdir()
    train = parse(["train", "cpu-small", "--workspace", str(ws.root)])
    ds, run = train.paths()
    assert ds == (ws.data_dir / "64").resolve() and run.parent == ws.runs_dir.resolve() and not run.exists()
    train = parse(["train", "cpu-small", "--workspace", str(ws.root), "--dataset-dir", str(other),
                   "--run-dir", str(tmp_path / "r")])
    assert train.paths() == (other.resolve(), (tmp_path / "r").resolve())
    assert main(["train", "cpu-small", "--workspace", str(ws.root), "--resume"]) == 2
    assert main(["prepare", str(other)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--run-dir" in err and "OUTPUT_DIR or --workspace" in err
    assert len(err.strip().splitlines()) == 2

"""RunDir: run folders under outputs/ (naming, overwrite/resume, env.json, atomic JSON, JSONL history, log)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recon_kit.runs.folder import RunDir, RunDirExistsError, safe_rmtree


def test_default_name_is_utc_timestamp_with_suffix(tmp_path):
    a = RunDir.create(tmp_path)
    b = RunDir.create(tmp_path)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ_[0-9a-f]{6}", a.name)
    assert a.dir != b.dir and a.dir.parent == tmp_path
    assert sorted([a.name, b.name])[0][:20] <= b.name[:20]  # sortable by time


def test_env_json(tmp_path):
    run = RunDir.create(tmp_path, "r")
    env = json.loads((tmp_path / "r" / "env.json").read_text())
    for key in ("python", "torch", "cuda", "device_name", "git_sha", "git_dirty", "platform", "created_utc"):
        assert key in env, key
    assert env["python"].count(".") == 2
    assert env["git_dirty"] in (True, False, None)
    assert run.read_json("env.json") == env


def test_existing_non_empty_folder_is_an_error_naming_folder_and_options(tmp_path):
    run = RunDir.create(tmp_path, "r")
    with pytest.raises(RunDirExistsError) as exc:
        RunDir.create(tmp_path, "r")
    msg = str(exc.value)
    assert str(run.dir) in msg and "overwrite=True" in msg and "resume=True" in msg
    assert isinstance(exc.value, FileExistsError)


def test_existing_empty_folder_is_fine(tmp_path):
    (tmp_path / "r").mkdir()
    assert (RunDir.create(tmp_path, "r").dir / "env.json").exists()


def test_overwrite_clears_and_resume_keeps(tmp_path):
    run = RunDir.create(tmp_path, "r")
    run.write_json("metrics.json", {"a": 1})
    kept = RunDir.create(tmp_path, "r", resume=True)
    assert (kept.dir / "metrics.json").exists()
    env = kept.read_json("env.json")
    assert len(env["previous_sessions"]) == 1 and "previous_sessions" not in env["previous_sessions"][0]
    fresh = RunDir.create(tmp_path, "r", overwrite=True)
    assert sorted(p.name for p in fresh.dir.iterdir()) == [".recon-kit", "env.json"]
    with pytest.raises(ValueError, match="not both"):
        RunDir.create(tmp_path, "r", overwrite=True, resume=True)


def test_at_uses_the_exact_path(tmp_path):
    run = RunDir.at(tmp_path / "a" / "b")
    assert run.dir == tmp_path / "a" / "b" and (run.dir / "env.json").exists()
    with pytest.raises(FileNotFoundError):
        RunDir.open(tmp_path / "missing")
    assert RunDir.open(run.dir) == run


def test_overwrite_refuses_source_trees(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    with pytest.raises(ValueError, match="refusing to clear"):
        RunDir.create(tmp_path, "repo", overwrite=True)
    assert (tmp_path / "repo" / "pyproject.toml").exists()
    with pytest.raises(ValueError, match="refusing"):
        safe_rmtree(Path.cwd())


def test_write_json_is_atomic_and_serialises_numpy_and_paths(tmp_path):
    run = RunDir.create(tmp_path, "r")
    p = run.write_json("sub/metrics.json", {"x": np.float32(1.5), "v": np.arange(3), "p": tmp_path, "t": (1, 2)})
    assert p == run.dir / "sub" / "metrics.json"
    assert json.loads(p.read_text()) == {"x": 1.5, "v": [0, 1, 2], "p": str(tmp_path), "t": [1, 2]}
    run.write_json("sub/metrics.json", {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [q.name for q in p.parent.iterdir()] == ["metrics.json"]  # no temporary files left
    with pytest.raises(TypeError):
        run.write_json("bad.json", {"x": object()})
    assert not (run.dir / "bad.json").exists()
    assert [q.name for q in run.dir.iterdir() if q.name.endswith(".tmp")] == []


def test_torch_tensors_serialise(tmp_path):
    torch = pytest.importorskip("torch")
    run = RunDir.create(tmp_path, "r")
    run.write_json("t.json", {"a": torch.tensor([1.0, 2.0], requires_grad=True), "b": torch.tensor(3)})
    assert run.read_json("t.json") == {"a": [1.0, 2.0], "b": 3}


def test_history_roundtrip_and_truncated_last_line(tmp_path):
    run = RunDir.create(tmp_path, "r")
    assert run.read_history().empty
    for step in range(3):
        run.append_jsonl("history.jsonl", {"step": step, "loss": 1.0 / (step + 1), "lr": np.float64(0.01)})
    df = run.read_history()
    assert isinstance(df, pd.DataFrame)
    assert list(df["step"]) == [0, 1, 2] and df["loss"].iloc[-1] == pytest.approx(1 / 3)
    with open(run.dir / "history.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # crash mid-write
    assert len(run.read_history()) == 3
    (run.dir / "bad.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        run.read_jsonl("bad.jsonl")


def test_path_creates_parents(tmp_path):
    run = RunDir.create(tmp_path, "r")
    p = run.path("images", "preview", "000.png")
    assert p.parent.is_dir() and not p.exists()
    assert run.path() == run.dir


def test_logger_one_handler_per_run(tmp_path):
    a = RunDir.create(tmp_path, "a")
    b = RunDir.create(tmp_path, "b")
    la1, la2, lb = a.get_logger(), a.get_logger(), b.get_logger()
    assert la1 is la2 and la1 is not lb
    assert len(la1.handlers) == 1
    # a second RunDir object for the same folder (e.g. a resumed run) shares the logger and its handler
    again = RunDir.create(tmp_path, "a", resume=True).get_logger(stream=True)
    again_2 = RunDir.open(tmp_path / "a").get_logger(stream=True)
    assert again is la1 and again_2 is la1 and len(la1.handlers) == 2  # file + stdout, once each
    la1.info("hello a")
    lb.warning("hello b")
    for h in la1.handlers + lb.handlers:
        h.flush()
    assert "hello a" in a.log_file.read_text() and "hello a" not in b.log_file.read_text()
    assert "WARNING hello b" in b.log_file.read_text()
    assert a.log_file == a.dir / "log.txt"
    a.close()
    b.close()
    assert logging.getLogger(la1.name).handlers == []


def test_overwrite_releases_the_log_file(tmp_path):
    run = RunDir.create(tmp_path, "r")
    run.get_logger().info("first")
    run2 = RunDir.create(tmp_path, "r", overwrite=True)
    log = run2.get_logger()
    log.info("second")
    for h in log.handlers:
        h.flush()
    text = run2.log_file.read_text()
    assert "second" in text and "first" not in text
    run2.close()


def test_fspath(tmp_path):
    run = RunDir.create(tmp_path, "r")
    assert (tmp_path / "r") == Path(run)
    assert str(run) == str(tmp_path / "r")

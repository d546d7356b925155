"""The ray engine (recon_kit.runs.ray_engine) and batch reconstruction (recon_kit.runs.batch) on a local 2-CPU Ray.

One Ray per test session (starting one takes ~10 s); tiny demo-object runs as in tests/test_runs.py. Skipped when
Ray Tune is not installed (the ``cluster`` extra, part of ``dev``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("ray.tune", reason="the ray engine needs the cluster extra: pip install recon-kit[cluster]")

from recon_kit import synth  # noqa: E402
from recon_kit.runs import batch, ray_engine  # noqa: E402
from recon_kit.runs import sweep as rk_sweep  # noqa: E402
from recon_kit.runs import table as rk_table  # noqa: E402
from recon_kit.runs.folder import STOPPED_FILE  # noqa: E402
from recon_kit.runs.ray_engine import RayOptions, random_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"pass1.iterations": 8, "pass2.iterations": 4, "data.resolution": 48, "geometry.hull_res": 32,
        "material.texture_res": 64, "snapshot_every": 4, "checkpoint_every": 0, "log_every": 1,
        "geometry.grid_res": 24}
# what differs between two engines' tables of the same runs: where and when they ran
RUN_SPECIFIC = ("path", "wall_s", "sweep_wall_s", "env.", "timings_s.", "mesh_zip", "glb", "obj", "training_",
                "viewer", "turntable")


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray with 2 CPUs for the whole session; its workers import this checkout's recon_kit."""
    ray = pytest.importorskip("ray")
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1", "RAY_AIR_NEW_OUTPUT": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, configure_logging=False, log_to_driver=False)
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(demo_dataset):
    return demo_dataset(64, 48, 1)


def _comparable(table):
    cols = [c for c in table.columns if not any(c == k or c.startswith(k) for k in RUN_SPECIFIC)]
    return table[cols]


def test_options_and_random_params():
    assert RayOptions(metric="train_psnr").metric_mode == "max" and RayOptions().metric_mode == "min"
    with pytest.raises(rk_sweep.SweepError, match="scheduler"):
        RayOptions(scheduler="hyperband")
    with pytest.raises(rk_sweep.SweepError, match="unknown ray option"):
        RayOptions.coerce({"gpus": 1})
    grid = {"pass1.lr_mat": [0.01, 0.02, 0.03], "seed": [0, 1]}
    drawn = random_params(grid, 4, seed=3)
    assert len(drawn) == 4 and len({rk_sweep.run_name(p) for p in drawn}) == 4
    assert drawn == random_params(grid, 4, seed=3) and len(random_params(grid, 50)) == 6
    with pytest.raises(rk_sweep.SweepError, match="ray options need engine='ray'"):
        rk_sweep.Sweep("x", ".", grid={"seed": [0]}).run(ray=RayOptions())


def test_ray_sweep_equals_sequential(local_ray, dataset, tmp_path, one_thread):
    params = [{"seed": s, "pass1.lr_mat": lr} for s, lr in ((0, 0.01), (1, 0.03), (2, 0.02))]
    seq = rk_sweep.Sweep(tmp_path / "seq", dataset, runs=params, base=TINY).run(progress=False)
    lines: list[str] = []
    sweep = rk_sweep.Sweep(tmp_path / "ray", dataset, runs=params, base=TINY, engine="ray")
    table = sweep.run(progress=False, ray=RayOptions(echo=lines.append))
    assert list(table.index) == list(seq.index) == [rk_sweep.run_name(p) for p in params]
    assert (table.status == "finished").all(), table[["status", "error"]]
    a, b = _comparable(table), _comparable(seq)
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        for x, y in zip(a[col], b[col]):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6) or (math.isnan(x) and math.isnan(y)), col
            else:
                assert x == y, (col, x, y)
    man = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert man["engine"] == "ray" and man["counts"] == {"finished": 3}
    assert sum("running" in ln for ln in lines) == 3 and sum(ln.endswith(" s") for ln in lines) == 3, lines
    for name in table.index:
        assert (tmp_path / "ray" / name / "training.gif").exists() and (tmp_path / "ray" / name / "log.txt").exists()
    # the same command again: nothing to train
    lines.clear()
    again = rk_sweep.Sweep(tmp_path / "ray", dataset, runs=params, base=TINY, engine="ray")
    again.run(progress=False, ray={"echo": lines.append})
    assert lines == [f"trial {n}: skipped (finished)" for n in table.index]


@pytest.mark.slow
def test_asha_stops_a_bad_trial(local_ray, dataset, tmp_path, one_thread):
    base = {**TINY, "pass1.iterations": 24, "pass2.iterations": 4, "snapshot_every": 0}
    # two sound runs first (both CPUs; the same configuration under two names, so neither can lose to the other),
    # then one whose coverage weight makes its loss 1000 x larger: it meets ASHA's rungs after the sound ones
    params = [{"log_every": 1}, {"checkpoint_every": 0}, {"loss.coverage": 1000.0}]
    lines: list[str] = []
    sweep = rk_sweep.Sweep(tmp_path / "asha", dataset, runs=params, base=base, engine="ray")
    table = sweep.run(progress=False, ray=RayOptions(scheduler="asha", grace_period=2, reduction_factor=2,
                                                     echo=lines.append))
    assert table.loc["log_every=1", "status"] == "finished" and table.loc["checkpoint_every=0", "status"] == "finished"
    bad = table.loc["loss.coverage=1000.0"]
    assert bad["status"] == "stopped", (bad["status"], lines)
    marker = json.loads((tmp_path / "asha" / "loss.coverage=1000.0" / STOPPED_FILE).read_text())
    assert marker["metric"] == "total" and marker["log_steps"] < 28
    assert any("loss.coverage=1000.0: stopped early by ASHA" in ln for ln in lines), lines
    man = json.loads((tmp_path / "asha" / "sweep.json").read_text())
    assert man["counts"] == {"finished": 2, "stopped": 1}
    assert rk_table.filter_runs(table, status="failed").empty
    lines.clear()  # a stopped run is a decision, not an interruption: the same command does not train it again
    rk_sweep.Sweep(tmp_path / "asha", dataset, runs=params, base=base, engine="ray").run(
        progress=False, ray=RayOptions(scheduler="asha", echo=lines.append))
    assert "trial loss.coverage=1000.0: skipped (stopped)" in lines


def test_crashing_trial_retried_then_recorded(local_ray, dataset, tmp_path, one_thread):
    flaky_marker = tmp_path / "crashed-once"

    def flaky(preset, dataset_dir, run_dir, overrides, resume, overwrite):
        """seed 1 crashes on its first attempt only (a lost node, an out-of-memory kill), seed 2 always; a run
        "trains" by writing its metrics (training itself is tested above)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        if overrides.get("seed") == 1 and not flaky_marker.exists():
            flaky_marker.write_text("crashed")
            raise RuntimeError("worker lost")
        if overrides.get("seed") == 2:
            raise RuntimeError("always crashes")
        (run_dir / "metrics.json").write_text(json.dumps({"train_psnr": 20.0 + overrides["seed"]}))

    lines: list[str] = []
    sweep = rk_sweep.Sweep(tmp_path / "crash", dataset, grid={"seed": [1, 2, 3]}, base=TINY, engine=flaky)
    table = ray_engine.run_sweep(sweep, RayOptions(echo=lines.append), progress=False)
    assert table.status.tolist() == ["finished", "failed", "finished"], lines
    assert table["train_psnr"].tolist()[::2] == [21.0, 23.0]
    assert "RuntimeError: always crashes" in table.loc["seed=2", "error"]
    assert "Traceback" in (tmp_path / "crash" / "seed=2" / "error.txt").read_text()
    assert any(ln.startswith("trial seed=1: crashed (attempt 1): RuntimeError: worker lost; retrying") for ln in lines), lines
    assert any(ln.startswith("trial seed=2: failed after 2 attempt(s): RuntimeError: always crashes") for ln in lines)
    man = {e["name"]: e for e in json.loads((tmp_path / "crash" / "sweep.json").read_text())["runs"]}
    assert man["seed=1"]["attempts"] == 2 and man["seed=2"]["status"] == "failed" and man["seed=3"]["attempts"] == 1


def test_sequential_engine_needs_no_ray():
    code = ("import sys, recon_kit.runs.sweep, recon_kit.runs.batch, recon_kit.runs.ray_engine, recon_kit.cli; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_cluster_extra_is_in_dev():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("ray[tune]") for r in extras["cluster"]) and "recon-kit[cluster]" in extras["dev"]


def test_ray_missing_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ray_engine.RayMissing, match=r"pip install recon-kit\[cluster\]"):
        ray_engine.require_ray()


@pytest.mark.slow
def test_cli_sweep_ray_random_then_optuna(local_ray, dataset, tmp_path, one_thread, capsys):
    from recon_kit.cli import main

    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "cli"
    common = ["sweep", "--dataset", str(dataset), "--out", str(out), *sets, "--grid", "pass1.lr_mat=0.01,0.02,0.03",
              "--grid", "seed=0,1", "--engine", "ray", "--no-progress"]
    assert main([*common, "--search", "random", "--num-samples", "2", "--seed", "4"]) == 0
    captured = capsys.readouterr()
    names = [p.name for p in out.iterdir() if (p / "metrics.json").exists()]
    assert len(names) == 2 and all(f"trial {n}: finished" in captured.out for n in names), captured.out
    assert main([*common, "--search", "optuna", "--num-samples", "1"]) == 0
    table = rk_table.load_runs(out)
    assert 2 <= len(table) <= 3 and (table.status == "finished").all()
    man = json.loads((out / "sweep.json").read_text())
    assert {e["name"] for e in man["runs"]} == set(table.index)
    assert main(["sweep", "--dataset", str(dataset), "--out", str(out), "--grid", "seed=0",
                 "--gpus-per-trial", "1"]) == 2
    assert "need --engine ray" in capsys.readouterr().err


# ---- batch reconstruction -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("captures")
    synth.write_demo_capture(root / "shoe_a", resolution=64, n_test=1)
    synth.write_demo_capture(root / "catalogue" / "shoe_b", resolution=64, n_test=1)
    (root / "broken" / "multi_views").mkdir(parents=True)  # a capture folder without any image
    (root / "notes").mkdir()  # not a capture
    return root


def test_find_captures(captures):
    assert [p.relative_to(captures).as_posix() for p in batch.find_captures(captures)] == [
        "broken", "catalogue/shoe_b", "shoe_a"]
    assert batch.capture_name(captures / "catalogue" / "shoe_b", captures) == "catalogue-shoe_b"
    with pytest.raises(FileNotFoundError, match="no capture folders"):
        batch.find_captures(captures / "notes")


@pytest.mark.slow
def test_batch_on_ray_then_skip(local_ray, captures, tmp_path, one_thread, capsys):
    from recon_kit.cli import main

    out = tmp_path / "batch"
    sets = [a for k, v in TINY.items() if k != "data.resolution" for a in ("--set", f"{k}={v}")]
    rc = main(["batch", str(captures), "--out", str(out), "--resolution", "48", *sets, "--engine", "ray",
               "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err  # the broken capture failed; the others finished
    summary = batch.Batch(captures, out).summary()
    assert list(summary.index) == ["broken", "catalogue-shoe_b", "shoe_a"]
    assert summary.status.tolist() == ["failed", "finished", "finished"]
    assert list(summary.columns) == ["status", "time_s", "faces", "train_psnr", "test_psnr", "train_iou", "error"]
    done = summary.loc["shoe_a"]
    assert done["faces"] > 0 and 10 < done["train_psnr"] < 60 and 0 < done["train_iou"] <= 1 and done["time_s"] > 0
    assert "broken" in summary.loc["broken", "error"] and "\n" not in summary.loc["broken", "error"]
    assert "capture shoe_a: finished" in captured.out and "shoe_a" in captured.out and "1 of 3 captures" in captured.err
    assert (out / "shoe_a" / "metrics.json").exists() and (out / "shoe_a" / "mesh.zip").exists()
    assert json.loads((out / batch.MANIFEST).read_text())["counts"] == {"failed": 1, "finished": 2}
    # again, sequentially this time: finished captures are skipped, the broken one is tried again
    stamp = (out / "shoe_a" / "metrics.json").stat().st_mtime_ns
    lines: list[str] = []
    table = batch.Batch(captures, out, base={k: v for k, v in TINY.items() if k != "data.resolution"},
                        resolution=48).run(progress=False, echo=lines.append)
    assert (out / "shoe_a" / "metrics.json").stat().st_mtime_ns == stamp
    assert "capture shoe_a: skipped (finished)" in lines and table.loc["broken", "status"] == "failed"
    with pytest.raises(rk_sweep.SweepError, match="pass1.iterations"):  # finished under another configuration
        batch.Batch(captures, out, base={**TINY, "pass1.iterations": 9}).run(progress=False, echo=None)


# ---- one driver per sweep/batch folder (no Ray started: the lock is taken first) ------------------------------
HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from recon_kit.io import locking; "
        "locking.acquire(sys.argv[1], 'sweep'); print('locked', flush=True); time.sleep(60)")


def test_a_second_driver_on_a_locked_folder_fails_at_once(dataset, captures, tmp_path, capsys):
    from recon_kit.cli import main
    from recon_kit.io.locking import RunLockedError

    sweep_dir, batch_dir = tmp_path / "sweep", tmp_path / "batch"
    holders = [subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT)), str(d)], stdout=subprocess.PIPE,
                                text=True) for d in (sweep_dir, batch_dir)]
    try:
        assert [p.stdout.readline().strip() for p in holders] == ["locked", "locked"]
        sweep = rk_sweep.Sweep(sweep_dir, dataset, grid={"seed": [0]}, base=TINY, engine="ray")
        with pytest.raises(RunLockedError, match=f"{sweep_dir}.*PID {holders[0].pid}"):
            sweep.run(progress=False, ray={"num_cpus": 1})
        with pytest.raises(RunLockedError, match=f"PID {holders[1].pid}"):
            batch.Batch(captures, batch_dir).run(progress=False, echo=None, ray={"num_cpus": 1})
        rc = main(["sweep", "--dataset", str(dataset), "--out", str(sweep_dir), "--grid", "seed=0", "--engine", "ray",
                   "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 1 and f"in use by PID {holders[0].pid}" in err.splitlines()[0], err
        assert not (sweep_dir / ray_engine.TRIAL_FOLDER).exists() and not (batch_dir / batch.MANIFEST).exists()
    finally:
        for p in holders:
            p.kill()
            p.wait()

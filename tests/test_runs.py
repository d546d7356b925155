"""Sweeps and the runs table (recon_kit.runs), comparison figures and the training animation (recon_kit.viz.runs),
the ``recon-kit sweep`` command: a 2 x 2 sweep on the demo object at tiny CPU settings, plus one failing run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from recon_kit import config
from recon_kit.data import dataset as rk_dataset
from recon_kit.runs import animation
from recon_kit.runs import run as rk_run
from recon_kit.runs import sweep as rk_sweep
from recon_kit.runs import table as rk_table
from recon_kit.viz import runs as viz_runs

ROOT = Path(__file__).resolve().parents[1]
# Very small settings: about a second per run on 2 CPU cores.
TINY = {"pass1.iterations": 8, "pass2.iterations": 4, "data.resolution": 48, "geometry.hull_res": 32,
        "material.texture_res": 64, "snapshot_every": 4, "checkpoint_every": 0, "log_every": 1}
GRID = {"pass1.lr_mat": [0.01, 0.03], "geometry.grid_res": [24, 32]}
BAD = {"pass1.lr_mat": "fast"}  # not a float: the config rejects it, so this run fails


def _has_ffmpeg() -> bool:
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).exists()
    except Exception:
        return False


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny runs gain nothing from a second torch thread, and on 2 shared, busy cores two spinning OpenMP
    threads make them ten times slower. Papermill kernels inherit OMP_NUM_THREADS."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(demo_dataset):
    return demo_dataset(64, 48, 1)


@pytest.fixture(scope="module")
def swept(dataset, tmp_path_factory):
    """The 2 x 2 grid with the failing run second (so runs come after it)."""
    out = tmp_path_factory.mktemp("sweeps") / "demo"
    params = rk_sweep.grid_params(GRID)
    params.insert(1, BAD)
    sweep = rk_sweep.Sweep(out, dataset, runs=params, base=TINY)
    t0 = time.perf_counter()
    table = sweep.run(progress=False)
    return sweep, table, time.perf_counter() - t0


# ---- parameter sets, names, parsing ----------------------------------------------------------------------
def test_grid_params_and_run_names():
    assert rk_sweep.grid_params(GRID) == [
        {"pass1.lr_mat": 0.01, "geometry.grid_res": 24}, {"pass1.lr_mat": 0.01, "geometry.grid_res": 32},
        {"pass1.lr_mat": 0.03, "geometry.grid_res": 24}, {"pass1.lr_mat": 0.03, "geometry.grid_res": 32}]
    assert rk_sweep.run_name({"pass1.lr_mat": 0.01, "geometry.grid_res": 32}) == "pass1.lr_mat=0.01__geometry.grid_res=32"
    assert rk_sweep.run_name({"data.val_background": "../a b"}) == "data.val_background=.-a-b"
    assert rk_sweep.run_name({"material.kd_min": [0, 0.5, 0]}) == "material.kd_min=0,0.5,0"
    assert rk_sweep.run_name({"light.learn_light": False, "loss.depth": 1.0}) == "light.learn_light=false__loss.depth=1.0"
    assert rk_sweep.run_name({}) == "defaults"
    long_a = rk_sweep.run_name({f"loss.key{i}": 0.123456 for i in range(12)})
    long_b = rk_sweep.run_name({f"loss.key{i}": 0.123457 for i in range(12)})
    assert len(long_a) <= 120 and long_a != long_b and "/" not in long_a
    with pytest.raises(rk_sweep.SweepError, match="repeat"):
        rk_sweep.Sweep("x", "d", runs=[{"seed": 1}, {"seed": 1}])
    with pytest.raises(rk_sweep.SweepError, match="grid"):
        rk_sweep.Sweep("x", "d")
    with pytest.raises(rk_sweep.SweepError, match="list of values"):
        rk_sweep.Sweep("x", "d", grid={"seed": 3})
    sweep = rk_sweep.Sweep("x", "d", grid={"seed": [0, 1]}, runs=[{"seed": 5}])
    assert sweep.names == ["seed=0", "seed=1", "seed=5"] and len(sweep) == 3


def test_parse_grid_values():
    from recon_kit.config import parse_value as _parse_value

    assert rk_sweep.parse_grid_values("0.01,0.03") == [0.01, 0.03]
    assert rk_sweep.parse_grid_values("32, 48") == [32, 48]
    assert rk_sweep.parse_grid_values("white,black", _parse_value) == ["white", "black"]
    assert rk_sweep.parse_grid_values("true,false", _parse_value) == [True, False]
    assert rk_sweep.parse_grid_values("[0,0,0],[1,1,1]") == [[0, 0, 0], [1, 1, 1]]


# ---- the sweep ----------------------------------------------------------------------------------------------
def test_sweep_table_one_row_per_run_with_metrics(swept):
    sweep, table, elapsed = swept
    print(f"sweep of {len(sweep)} runs: {elapsed:.1f} s")
    assert list(table.index) == sweep.names and len(table) == 5
    assert sweep.names[0] == "pass1.lr_mat=0.01__geometry.grid_res=24" and sweep.names[1] == "pass1.lr_mat=fast"
    done = table[table.status == "finished"]
    assert len(done) == 4, table[["status", "error"]]
    for name, row in done.iterrows():
        params = sweep.params[sweep.names.index(name)]
        assert {k: row[k] for k in params} == params
        assert row["pass1.iterations"] == 8 and row["material.texture_res"] == 64
        assert 10 < row["train_psnr"] < 60 and 0 < row["train_iou"] <= 1 and math.isfinite(row["final_loss"])
        assert row["wall_s"] > 0 and row["timings_s.pass1"] > 0 and row["sweep_wall_s"] >= row["wall_s"]
        assert row["metrics.device"] == "cpu" and row["env.torch"]
    assert table.attrs["params"] == ["pass1.lr_mat", "geometry.grid_res"]
    assert rk_table.param_columns(table) == ["pass1.lr_mat", "geometry.grid_res"]
    assert {"train_psnr", "wall_s"} <= set(rk_table.metric_columns(table))
    # the failed run: error.txt, a row with its error, and the manifest entry
    bad = table.loc["pass1.lr_mat=fast"]
    assert bad["status"] == "failed" and "pass1.lr_mat" in bad["error"] and bad["pass1.lr_mat"] == "fast"
    assert "Traceback" in (sweep.out_dir / "pass1.lr_mat=fast" / "error.txt").read_text()
    man = json.loads((sweep.out_dir / "sweep.json").read_text())
    assert [e["name"] for e in man["runs"]] == sweep.names and man["counts"] == {"finished": 4, "failed": 1}
    assert man["base"] == TINY and man["engine"] == "trainer"
    assert Path(man["dataset_dir"]) == sweep.dataset_dir.resolve()
    assert "ConfigError" in man["runs"][1]["error"]
    summary = rk_table.summary(table)
    assert list(summary.columns[:3]) == ["status", "pass1.lr_mat", "geometry.grid_res"] and "error" in summary


def test_rerun_skips_finished_runs(swept, dataset):
    sweep, _, _ = swept
    stamps = {n: (sweep.out_dir / n / "metrics.json").stat().st_mtime_ns
              for n in sweep.names if n != "pass1.lr_mat=fast"}
    again = rk_sweep.Sweep(sweep.out_dir, dataset, runs=sweep.params, base=TINY)
    t0 = time.perf_counter()
    table = again.run(progress=False)
    assert time.perf_counter() - t0 < 10
    assert stamps == {n: (sweep.out_dir / n / "metrics.json").stat().st_mtime_ns for n in stamps}
    man = json.loads((sweep.out_dir / "sweep.json").read_text())
    assert [e.get("skipped", False) for e in man["runs"]] == [True, False, True, True, True]  # the failed one retried
    assert list(table.status) == ["finished", "failed", "finished", "finished", "finished"]
    assert again.plan().status.tolist() == list(table.status)
    # finished runs trained with another configuration are not silently taken as results of this one
    other = rk_sweep.Sweep(sweep.out_dir, dataset, runs=sweep.params, base={**TINY, "pass1.iterations": 9})
    with pytest.raises(rk_sweep.SweepError, match="pass1.iterations"):
        other.run(progress=False)


def test_each_run_folder_has_animation_and_bundle(swept):
    sweep, table, _ = swept
    for name, row in table[table.status == "finished"].iterrows():
        run = sweep.out_dir / name
        assert row["mesh_zip"] == str(run / "mesh.zip") and row["training_gif"] == str(run / "training.gif")
        with zipfile.ZipFile(run / "mesh.zip") as zf:
            assert {"mesh/model.glb", "mesh/mesh.obj", "mesh/texture_kd.png"} <= set(zf.namelist())
        gif = Image.open(run / "training.gif")
        assert gif.n_frames == row["snapshots"] == 3  # pass1 it 4, 8; pass2 it 4
        if _has_ffmpeg():
            assert (run / "training.mp4").stat().st_size > 0 and row["training_mp4"]
        assert (run / "log.txt").exists()


def test_filter_sort_best(swept):
    _, table, _ = swept
    assert len(rk_table.filter_runs(table, status="finished")) == 4
    assert list(rk_table.filter_runs(table, {"geometry.grid_res": 32}).index) == [
        "pass1.lr_mat=0.01__geometry.grid_res=32", "pass1.lr_mat=0.03__geometry.grid_res=32"]
    assert len(rk_table.filter_runs(table, {"pass1.lr_mat": [0.01, "fast"]})) == 3
    assert len(rk_table.filter_runs(table, {"train_psnr": lambda v: v > 0})) == 4
    assert len(rk_table.filter_runs(table, "`geometry.grid_res` == 24 and status == 'finished'")) == 2
    assert len(rk_table.filter_runs(table, lambda r: r["status"] == "failed")) == 1
    ranked = rk_table.sort_runs(table, "train_psnr")
    psnr = ranked["train_psnr"].tolist()
    assert psnr[:4] == sorted(psnr[:4], reverse=True) and math.isnan(psnr[4])
    assert rk_table.best_run(table, "train_psnr") == ranked.index[0]
    fastest = rk_table.sort_runs(table, "wall_s")["wall_s"].tolist()
    assert fastest[:4] == sorted(fastest[:4])
    with pytest.raises(KeyError, match="no column"):
        rk_table.filter_runs(table, {"nope": 1})


def test_load_runs_single_folder_and_list(swept):
    sweep, _, _ = swept
    one = sweep.out_dir / sweep.names[0]
    t1 = rk_table.load_runs(one)
    assert list(t1.index) == [sweep.names[0]] and t1.loc[sweep.names[0], "status"] == "finished"
    t2 = rk_table.load_runs([one, sweep.out_dir / sweep.names[4]])  # lr_mat and grid_res both differ
    assert len(t2) == 2 and set(rk_table.varying_columns(t2)) == {"geometry.grid_res", "pass1.lr_mat"}
    hist = rk_table.load_history(one)
    assert len(hist) == 12 and {"total", "global_it", "pass"} <= set(hist.columns)
    rec = rk_table.read_run(one)
    assert rec.status == "finished" and "mesh_zip" in rec.exports and len(rec.snapshots) == 3


def test_comparison_figures(swept, dataset, tmp_path):
    sweep, table, _ = swept
    fig = viz_runs.metric_vs_params(table, metrics=["train_psnr", "wall_s"], path=tmp_path / "m.png")
    assert len(fig.axes) == 4 and (tmp_path / "m.png").stat().st_size > 0
    assert len(fig.axes[0].lines) == 2  # one line per value of the other parameter
    fig = viz_runs.loss_overlay(table, keys=["total", "color"], path=tmp_path / "l.png")
    assert [len(ax.get_lines()) for ax in fig.axes] == [8, 8]  # 4 runs + their pass-2 markers
    fig = viz_runs.compare_views(table, dataset_dir=dataset, path=tmp_path / "c.png")
    assert len(fig.axes[0].images) == 1 and "pass1.lr_mat=fast" in fig.get_suptitle()
    assert sum(len(ax.images) for ax in fig.axes) == 1 + 4 + 4  # reference, renders, error maps
    fig = viz_runs.compare_views(table)  # reference from the snapshots
    assert (tmp_path / "c.png").stat().st_size > 0


# ---- the training animation ------------------------------------------------------------------------
def test_training_animation_order_and_labels(tmp_path):
    shots = tmp_path / "run" / "snapshots"
    shots.mkdir(parents=True)
    colours = {"pass1_2": (255, 0, 0), "pass1_10": (0, 255, 0), "pass2_3": (0, 0, 255)}  # 10 after 2
    for name, c in colours.items():
        Image.new("RGB", (64, 32), c).save(shots / f"{name}.png")
    (shots / "notes.png").write_bytes(b"")  # not a snapshot: ignored
    (tmp_path / "run" / "config.json").write_text(json.dumps({"pass1": {"iterations": 10}, "pass2": {"iterations": 3}}))
    gif = viz_runs.training_animation(tmp_path / "run", fps=5, mp4=_has_ffmpeg())
    assert gif == tmp_path / "run" / "training.gif"
    frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(gif))]
    assert [tuple(f[-1, -1]) for f in frames] == list(colours.values())
    for f, c in zip(frames, colours.values()):
        assert (np.abs(f[:8, :24].astype(int) - c).sum(-1) > 60).any(), "no label drawn"
    durations = [f.info["duration"] for f in ImageSequence.Iterator(Image.open(gif))]
    assert durations[0] == 200 and durations[-1] > 1000
    if _has_ffmpeg():
        assert (tmp_path / "run" / "training.mp4").stat().st_size > 0
    assert viz_runs.training_animation(tmp_path / "empty") is None


def test_finish_warns_when_the_animation_fails(dataset, tmp_path, monkeypatch):
    def broken(run_dir):
        raise OSError("disk full")

    monkeypatch.setattr(animation, "training_animation", broken)
    cfg = config.resolve("cpu-small", {**TINY, "geometry.grid_res": 24, "pass1.iterations": 4, "pass2.iterations": 2})
    trainer = rk_run.new_trainer(cfg, rk_dataset.load_viewset(dataset), tmp_path / "run")
    trainer.run(progress=False)
    with pytest.warns(RuntimeWarning, match="training animation not written.*disk full"):
        rk_run.finish(trainer, dataset)
    assert (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "training.gif").exists()


# ---- the other engines -----------------------------------------------------------------------------------
def test_callable_engine_and_resume(dataset, tmp_path):
    calls = []

    def engine(preset, dataset_dir, run_dir, overrides, resume, overwrite):
        calls.append((run_dir.name, resume, overwrite))
        run_dir.mkdir(parents=True, exist_ok=True)
        if overrides["seed"] == 1 and len(calls) == 1:
            (run_dir / "config.json").write_text("{}")
            raise KeyboardInterrupt  # killed mid-run
        (run_dir / "metrics.json").write_text(json.dumps({"train_psnr": 20.0 + overrides["seed"]}))

    sweep = rk_sweep.Sweep(tmp_path / "s", dataset, grid={"seed": [1, 2]}, engine=engine)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(progress=False)
    man = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [e["status"] for e in man["runs"]] == ["incomplete", "pending"]
    table = sweep.run(progress=False)
    assert calls == [("seed=1", False, False), ("seed=1", False, True), ("seed=2", False, False)]
    assert table["train_psnr"].tolist() == [21.0, 22.0]


@pytest.mark.slow
def test_cli_sweep(dataset, tmp_path, capsys):
    from recon_kit.cli import main

    out = tmp_path / "cli"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    rc = main(["sweep", "--dataset", str(dataset), "--preset", "cpu-small", "--grid", "pass1.lr_mat=0.02",
               "--grid", "geometry.grid_res=24,7", *sets, "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err  # one of the two runs failed
    assert "1 of 2 runs did not finish" in captured.err and "grid_res must be even" in captured.out
    assert (out / "pass1.lr_mat=0.02__geometry.grid_res=24" / "metrics.json").exists()
    assert (out / "pass1.lr_mat=0.02__geometry.grid_res=7" / "error.txt").exists()
    assert json.loads((out / "sweep.json").read_text())["counts"] == {"finished": 1, "failed": 1}
    assert main(["sweep", "--dataset", str(dataset), "--grid", "pass1.lr_mat=0.02", "--grid", "geometry.grid_res=24,7",
                 *sets, "--out", str(out), "--dry-run"]) == 0
    assert "finished" in capsys.readouterr().out


def test_cli_sweep_help():
    res = subprocess.run([sys.executable, "-m", "recon_kit.cli", "sweep", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "--grid KEY=V1,V2" in res.stdout and "recon-kit sweep" in res.stdout


def test_cli_sweep_usage_errors(tmp_path, capsys):
    from recon_kit.cli import main

    assert main(["sweep", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--grid", "seed"]) == 2
    assert "KEY=V1,V2" in capsys.readouterr().err
    assert main(["sweep", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--grid", "seed=1,2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", "--dataset", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "nothing to sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_papermill_engine(dataset, tmp_path):
    sweep = rk_sweep.Sweep(tmp_path / "pm", dataset, runs=[{"geometry.grid_res": 24}], base=TINY, engine="papermill",
                       timeout=300)
    table = sweep.run(progress=False)
    row = table.loc["geometry.grid_res=24"]
    assert row["status"] == "finished", row["error"]
    assert row["training_gif"] and row["mesh_zip"] and row["pass1.iterations"] == 8
    assert (tmp_path / "pm" / "notebooks" / "geometry.grid_res=24.ipynb").exists()

"""scripts/bench_e2e.py on the demo at tiny settings: every field of its JSON is there, finite where it should be
(no timing thresholds: figures go in docs/benchmarks.md)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_e2e.py"
ARGS = ["demo", "--preset", "cpu-small", "--resolution", "64", "--set", "pass1.iterations=4",
        "--set", "pass2.iterations=3", "--set", "snapshot_every=0", "--set", "checkpoint_every=0", "--no-progress"]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *ARGS, "--out", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=600)


def test_bench_e2e_demo_writes_every_field(tmp_path):
    out = tmp_path / "bench"
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "bench_e2e.json").read_text())
    for phase in ("demo_capture", "prepare", "trainer_init", "pass1", "bake", "pass2", "export", "evaluate",
                  "finish", "fringe"):
        assert math.isfinite(rep["phases_s"][phase]) and rep["phases_s"][phase] >= 0, phase
    for key in ("end_to_end_s", "startup_s", "first_step_s", "peak_memory_gib"):
        assert math.isfinite(rep[key]) and rep[key] > 0, key
    assert rep["startup_s"] >= rep["first_step_s"]
    assert rep["device"] == "cpu" and rep["gpu_busy"] is None and rep["peak_memory_kind"] == "peak_rss"
    assert rep["gpu_busy_trace"] == [] and rep["gpu_busy_by_phase"] == {}   # no nvidia-smi samples on the CPU
    assert rep["iterations"] == {"pass1": 4, "pass2": 3} and rep["views"] == 6 and rep["faces"] > 0
    for key in ("psnr", "psnr_masked", "ssim", "iou", "depth_residual", "fringe", "fringe_photos"):
        assert rep["quality"][key] is not None and math.isfinite(rep["quality"][key]), key
    assert (out / "run" / "mesh" / "model.glb").exists()
    # never overwritten without --overwrite
    again = _run(out)
    assert again.returncode != 0 and "--overwrite" in again.stderr


@pytest.mark.parametrize("capture", ["/nonexistent/capture"])
def test_bench_e2e_names_a_missing_capture(tmp_path, capture):
    proc = subprocess.run([sys.executable, str(SCRIPT), capture, "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and capture in proc.stderr

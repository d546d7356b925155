"""scripts/profile_step.py's trace analysis on a hand-made Chrome trace (the profiling itself needs a GPU)."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"


def _module():
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_idle_gaps_busy_share_and_blame(tmp_path):
    """Kernels 0-40 and 50-100 us (the second launched inside rk.shade), 60-70 overlapping: busy 90 of 100 us,
    the 10-us gap charged to rk.shade, the innermost range open at the launch."""
    events = [
        {"ph": "X", "cat": "user_annotation", "name": "rk.render", "ts": 0, "dur": 100},
        {"ph": "X", "cat": "user_annotation", "name": "rk.shade", "ts": 30, "dur": 20},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 1, "dur": 1, "args": {"correlation": 1}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 45, "dur": 1, "args": {"correlation": 2}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 46, "dur": 1, "args": {"correlation": 3}},
        {"ph": "X", "cat": "kernel", "name": "a", "ts": 0, "dur": 40, "args": {"correlation": 1}},
        {"ph": "X", "cat": "kernel", "name": "b", "ts": 50, "dur": 50, "args": {"correlation": 2}},
        {"ph": "X", "cat": "gpu_memset", "name": "c", "ts": 60, "dur": 10, "args": {"correlation": 3}},
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    report = _module().idle_gaps(trace, steps=1)
    assert "GPU busy 90.0%" in report
    assert "rk.shade" in report and "rk.render" not in report.split("\n", 1)[1]

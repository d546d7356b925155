"""Profile training steps with torch.profiler: the kit's ranges (rk.*) and the top operators.

    python scripts/profile_step.py --dataset path/to/prepared/1024 --preset gpu-default --steps 10 [--pass2]
    python scripts/profile_step.py --dataset ... --steps 0 --time 100     # wall time per step only, no profiler
    python scripts/profile_step.py --dataset ... --steps 0 --syncs 9      # where each host sync comes from
    python scripts/profile_step.py --dataset ... --steps 10 --gaps        # GPU busy share and where it idles
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from recon_kit import config
from recon_kit.data import dataset as rk_dataset
from recon_kit.train import trainer


def launch_summary(prof, steps: int) -> str:
    """Per step: the device activities (kernels, memcpy and memset) with their summed time, and the most frequent
    CUDA runtime calls (launches, synchronisations, copies).

    Summed device time far below the wall time per step means the GPU waits on the host (launch- or sync-bound).
    """
    events = prof.events()
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    kernel_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    runtime = {}
    for e in events:
        if e.name.startswith("cuda") and getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU:
            runtime[e.name] = runtime.get(e.name, 0) + 1
    calls = ", ".join(f"{k} {v / steps:.1f}" for k, v in sorted(runtime.items(), key=lambda kv: -kv[1])[:8])
    return (f"per step: {len(kernels) / steps:.0f} device activities, {kernel_ms / steps:.2f} ms summed device time; "
            f"runtime calls per step: {calls}")


def idle_gaps(trace_path: Path, steps: int, min_us: float = 5.0) -> str:
    """GPU busy share over the profiled steps and its idle time by kit range, from a Chrome trace.

    Busy is the union of the device activities (kernels, copies, memsets) over the window from the first to the
    last; an idle gap of at least ``min_us`` is charged to the innermost ``rk.*`` range that was open on the host
    when the activity ending the gap was launched (where the host was while the GPU waited for work).
    """
    events = json.loads(trace_path.read_text())["traceEvents"]
    device = sorted((e["ts"], e["ts"] + e.get("dur", 0), e.get("args", {}).get("correlation"))
                    for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    if not device:
        return "no device activity in the trace"
    launch_ts = {e["args"]["correlation"]: e["ts"] for e in events
                 if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    ranges = [(e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in events
              if e.get("ph") == "X" and e.get("cat") == "user_annotation" and e["name"].startswith("rk.")]

    def range_at(ts: float) -> str:
        open_ = [(end - start, name) for start, end, name in ranges if start <= ts <= end]
        return min(open_)[1] if open_ else "(outside rk ranges)"

    busy, idle, cur_end = 0.0, collections.Counter(), device[0][0]
    count: collections.Counter = collections.Counter()
    for start, end, corr in device:
        if start - cur_end >= min_us:
            where = range_at(launch_ts.get(corr, start))
            idle[where] += start - cur_end
            count[where] += 1
        busy += max(0.0, end - max(start, cur_end))
        cur_end = max(cur_end, end)
    window = cur_end - device[0][0]
    lines = [f"GPU busy {busy / window:.1%} of {window / 1e3 / steps:.2f} ms per step (profiler trace; idle gaps "
             f">= {min_us:g} us by the kit range launching the work that ended them, ms per step):"]
    lines += [f"  {ms / 1e3 / steps:7.3f} ms  {count[k] / steps:6.1f} gaps  {k}" for k, ms in idle.most_common()]
    return "\n".join(lines)


def sync_sites(tr, steps: int) -> collections.Counter:
    """Host syncs PyTorch reports (``set_sync_debug_mode``) over ``steps`` steps, by the innermost recon_kit
    frame and the line that synced. nvdiffrast's own ``cudaStreamSynchronize`` is not among them (the profiler's
    runtime-call count in :func:`launch_summary` has it)."""
    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        kit = [f for f in traceback.extract_stack()[:-1] if "recon_kit" in f.filename]
        where = f"{Path(kit[-1].filename).name}:{kit[-1].lineno} {kit[-1].name}" if kit else "-"
        sites[(where, f"{Path(filename).name}:{lineno}")] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            tr.run(steps, progress=False)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--preset", default="gpu-default")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--pass2", action="store_true", help="profile pass-2 steps (runs 2 pass-1 steps, then bakes)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--by-count", type=int, default=0, help="also list this many operators with the most calls "
                    "per step (where a launch-bound step's kernel launches come from)")
    ap.add_argument("--time", type=int, default=0, help="also time this many steps without the profiler")
    ap.add_argument("--syncs", type=int, default=0, help="list the host syncs of this many steps (CUDA only)")
    ap.add_argument("--gaps", action="store_true", help="the profiled steps' GPU busy share and idle gaps by kit "
                    "range (CUDA only; reads the profiler's Chrome trace)")
    ap.add_argument("--trace", default=None, help="also keep that Chrome trace at this new path")
    a = ap.parse_args()
    if a.trace and Path(a.trace).exists():
        raise SystemExit(f"profile_step: --trace {a.trace} exists; choose another path (it is never overwritten)")
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.pass2:
        overrides.setdefault("pass1.iterations", 2)
    cfg = config.resolve(a.preset, overrides)
    tr = trainer.Trainer(cfg, rk_dataset.load_viewset(a.dataset, resolution=cfg.data.resolution), None)
    if a.pass2:
        tr.run(cfg.pass1.iterations, progress=False)
    tr.run(a.warmup, progress=False)
    if a.time:
        sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        tr.run(a.time, progress=False)
        sync()
        ms = 1e3 * (time.perf_counter() - t0) / a.time
        print(f"{tr.pass_name}: {ms:.1f} ms/step over {a.time} steps ({tr.device}, {cfg.data.resolution}px, "
              f"batch {tr._pass_cfg.batch}, overrides {overrides})")
    if a.syncs and tr.device.type == "cuda":
        first = tr.it
        sites = sync_sites(tr, a.syncs)
        print(f"{tr.pass_name} steps {first + 1}-{tr.it} (log_every {cfg.log_every}, guard_every {cfg.guard_every}): "
              f"{sum(sites.values()) / a.syncs:.1f} reported host syncs per step")
        for (kit, where), n in sites.most_common():
            print(f"  {n / a.syncs:5.1f}/step  {kit:45s} {where}")
    if a.steps <= 0:
        return
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tr.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        tr.run(a.steps, progress=False)
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if tr.device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages()
    if tr.device.type == "cuda":
        print(launch_summary(prof, a.steps))
        if a.gaps:
            with tempfile.TemporaryDirectory() as tmp:
                trace = Path(a.trace) if a.trace else Path(tmp) / "trace.json"
                prof.export_chrome_trace(str(trace))
                print(idle_gaps(trace, a.steps))
    print("per step, kit ranges:")
    for ev in sorted((e for e in table if e.key.startswith("rk.")), key=lambda e: e.key):
        dev_t = getattr(ev, "device_time_total", getattr(ev, "cuda_time_total", 0))
        print(f"  {ev.key:18s} cpu {ev.cpu_time_total / 1e3 / a.steps:8.2f} ms   device {dev_t / 1e3 / a.steps:8.2f} ms")
    print(table.table(sort_by=key.replace("cuda", "device") if tr.device.type == "cuda" else key, row_limit=a.rows))
    if a.by_count:
        # On CUDA only operators that run device work themselves (views and metadata ops launch nothing).
        def launches(ev) -> bool:
            return tr.device.type != "cuda" or getattr(ev, "self_device_time_total", 0) > 0
        print("most called operators (calls per step" + (", with device work of their own):" if tr.device.type
                                                         == "cuda" else "):"))
        ranked = sorted((e for e in table if not e.key.startswith("rk.") and launches(e)), key=lambda e: -e.count)
        for ev in ranked[:a.by_count]:
            print(f"  {ev.count / a.steps:7.1f}  {ev.key}")


if __name__ == "__main__":
    main()

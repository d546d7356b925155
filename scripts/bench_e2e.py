"""End-to-end timing of one capture: prepare, pass 1, bake, pass 2, export and evaluation, through the kit's own
functions (:func:`recon_kit.data.dataset.prepare_dataset`, :func:`recon_kit.runs.run.new_trainer`,
:func:`recon_kit.runs.run.finish`), written to ``<out>/bench_e2e.json``.

The JSON holds each phase's wall time (``phases_s``), the start-up time (process start to the end of the first
training step: imports, nvdiffrast plugin load, the trainer's set-up, the first compiled step; the data
phases are left out), ``end_to_end_s`` (prepare to metrics, the demo's rendering left out), the GPU busy share (``nvidia-smi``
sampled every 0.5 s during training; null without a GPU; ``gpu_busy_by_phase`` splits it into the first step,
pass 1, the bake, pass 2's first step and pass 2; ``gpu_busy_trace`` keeps every sample with its label), peak memory (``torch.cuda.max_memory_allocated`` on
CUDA, the process's peak RSS on the CPU) and the quality metrics (6-view PSNR/SSIM/IoU, depth residual, fringe).

The shoe on the GPU machine (issue 15; run it twice: the second run shows the warm start-up)::

    python scripts/bench_e2e.py ../shared/datasets/shoe --align --preset gpu-default \
        --set geometry.mesh_scale=2.5 --out outputs/bench_e2e/shoe-cold      # then again with --out .../shoe-warm

The demo on the CPU at tiny settings (what tests/test_bench_e2e.py runs)::

    OMP_NUM_THREADS=2 python scripts/bench_e2e.py demo --preset cpu-small --resolution 64 \\
        --set pass1.iterations=4 --set pass2.iterations=3 --out outputs/bench_e2e/demo
"""

from __future__ import annotations

import time

PROCESS_T0 = time.time()  # replaced by the OS's process start time when psutil knows it

import argparse  # noqa: E402 - the clock starts before the imports it measures
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recon_kit, not another install


def process_start() -> float:
    """Wall-clock time this process started (psutil), else when this module started running."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - psutil missing or unsupported: the module's own start is close enough
        return PROCESS_T0


class GpuSampler:
    """``nvidia-smi --query-gpu=utilization.gpu`` every ``period`` s in a thread; ``busy`` is the mean share (0-1)
    of the samples, or None when nvidia-smi is not there."""

    def __init__(self, period: float = 0.5, gpu: int = 0) -> None:
        self.period, self.gpu, self.samples = period, gpu, []
        self.phase = "start"               # the label the next samples get (see ``busy_by_phase``)
        self.phases: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      f"--id={self.gpu}"], capture_output=True, text=True, timeout=5).stdout
                value, phase = float(out.strip().splitlines()[0]) / 100.0, self.phase
                self.samples.append(value)
                self.phases.append(phase)
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue

    def __enter__(self) -> "GpuSampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def busy(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None

    @property
    def busy_by_phase(self) -> dict[str, dict]:
        """Mean busy share and sample count per phase label: the training passes' steady state apart from the
        first step, the bake (CPU-side unwrapping) and the rest."""
        out: dict[str, dict] = {}
        for label in dict.fromkeys(self.phases):
            vals = [v for v, p in zip(self.samples, self.phases) if p == label]
            out[label] = {"busy": sum(vals) / len(vals), "samples": len(vals)}
        return out


def peak_memory_gib(device) -> tuple[float, str]:
    """Peak allocated CUDA memory on a GPU, else the process's peak resident set (GiB), and which it is."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_memory_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_rss"  # ru_maxrss is KiB on Linux


def _timed(obj, name: str, phases: dict, sync) -> None:
    """Wrap the bound method ``obj.name`` so its wall time (synchronised) is added to ``phases[name]``."""
    inner = getattr(obj, name)

    def wrapper(*args, **kw):
        sync()
        t0 = time.perf_counter()
        try:
            return inner(*args, **kw)
        finally:
            sync()
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
    setattr(obj, name, wrapper)


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run(capture: str, out: Path, preset: str, overrides: dict, resolution: int | None, overwrite: bool,
        progress: bool = True, mask_source: str = "depth", align: bool = False, trim_px: float = 0.0) -> dict:
    """The benchmark itself (see the module docstring); returns what it writes to ``out/bench_e2e.json``."""
    import torch

    from recon_kit import config
    from recon_kit.data.dataset import load_viewset, prepare_dataset
    from recon_kit.runs.run import finish, new_trainer
    from recon_kit.evaluate import fringe as rk_fringe

    t_start = process_start()
    cfg = config.resolve(preset, {**overrides, **({"data.resolution": resolution} if resolution else {})})
    res = cfg.data.resolution
    phases: dict[str, float] = {}
    if capture == "demo":
        from recon_kit.synth import write_demo_capture

        t0 = time.perf_counter()
        capture_dir = write_demo_capture(out / "capture", resolution=max(res, 64), n_test=0, overwrite=overwrite)
        phases["demo_capture"] = time.perf_counter() - t0
    else:
        capture_dir = Path(capture)
        if not capture_dir.is_dir():
            raise SystemExit(f"bench_e2e: capture folder {capture_dir} does not exist (or pass 'demo')")
    t0 = time.perf_counter()
    prepared = prepare_dataset(capture_dir, out / "dataset", resolutions=(res,), overwrite=overwrite,
                               progress=progress, mask_source=mask_source, align=align, trim_px=trim_px)
    dataset_dir = prepared.folders[res]
    views = load_viewset(dataset_dir, resolution=res)
    phases["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    trainer = new_trainer(cfg, views, out / "run", overwrite=overwrite)
    phases["trainer_init"] = time.perf_counter() - t0
    dev = trainer.device

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    try:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with GpuSampler() as sampler:
            switch = trainer._switch_to_pass2   # label the samples taken while pass 1 is baked into pass 2

            def labelled_switch() -> None:
                sampler.phase = "bake"
                switch()
                sampler.phase = "pass2_first_step"     # compiles pass 2's shading when compile is on

            def label_pass2(tr, result) -> None:
                if sampler.phase == "pass2_first_step" and result.pass_name == "pass2":
                    sampler.phase = "pass2"
            trainer._switch_to_pass2 = labelled_switch
            trainer.add_callback(label_pass2)
            sampler.phase = "first_step"
            trainer.step()
            sync()
            startup = time.time() - t_start - phases.get("demo_capture", 0.0) - phases["prepare"]
            first_step = trainer.timings["pass1"]
            sampler.phase = "pass1"
            trainer.run(progress=progress)
            sync()
        for name in ("export", "evaluate"):
            _timed(trainer, name, phases, sync)
        t0 = time.perf_counter()
        result = finish(trainer, dataset_dir)
        phases["finish"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fringe = rk_fringe(trainer.render_views, trainer.views)
        phases["fringe"] = time.perf_counter() - t0
    finally:
        if trainer.run_lock is not None:
            trainer.run_lock.release()
    phases.update({k: trainer.timings[k] for k in ("pass1", "bake", "pass2")})
    peak, peak_kind = peak_memory_gib(dev)
    quality_keys = ("train_psnr", "train_psnr_masked", "train_ssim", "train_iou", "train_depth_residual")
    quality = {k.removeprefix("train_"): _finite(result.get(k)) for k in quality_keys}
    quality.update({k: _finite(v) for k, v in fringe.items() if k != "fringe_images" and not isinstance(v, list)})
    end_to_end = sum(phases[k] for k in ("prepare", "trainer_init", "pass1", "bake", "pass2", "finish"))
    report = {
        "capture": str(capture), "align": align, "mask_source": mask_source, "preset": preset, "overrides": overrides, "resolution": res,
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "backend": trainer.rast.name, "torch": torch.__version__,
        "bytecode_cache": not sys.dont_write_bytecode,   # off (PYTHONDONTWRITEBYTECODE): every start compiles torch's Python
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
        "iterations": result["iterations"], "faces": result["faces"], "views": len(views),
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
        "end_to_end_s": round(end_to_end, 4),
        "startup_s": round(startup, 4), "first_step_s": round(first_step, 4),
        "gpu_busy": sampler.busy, "gpu_busy_samples": len(sampler.samples), "gpu_busy_by_phase": sampler.busy_by_phase,
        "gpu_busy_trace": [[p, v] for p, v in zip(sampler.phases, sampler.samples)],
        "peak_memory_gib": round(peak, 4), "peak_memory_kind": peak_kind,
        "quality": quality,
    }
    (out / "bench_e2e.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", help="capture folder (photos + depth), or 'demo' for the built-in synthetic capture")
    ap.add_argument("--preset", default="gpu-default", help="config preset or config JSON")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--resolution", type=int, default=None, help="training resolution (default: the preset's)")
    ap.add_argument("--mask-source", default="depth", help="prepare_dataset's mask_source (the shoe: depth)")
    ap.add_argument("--align", action="store_true", help="align depth to the photos when preparing (the shoe)")
    ap.add_argument("--trim-px", type=float, default=0.0, help="prepare_dataset's trim_px: trim the masks' rim where "
                    "the photo shows background (px at 1024 width; 0 = off)")
    ap.add_argument("--out", required=True, help="output folder (dataset/, run/, bench_e2e.json)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier benchmark in --out")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    import logging

    from recon_kit.config import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(a.out)
    if (out / "bench_e2e.json").exists() and not a.overwrite:
        raise SystemExit(f"bench_e2e: {out / 'bench_e2e.json'} exists; pass --overwrite or another --out")
    out.mkdir(parents=True, exist_ok=True)
    report = run(a.capture, out, a.preset, parse_overrides(a.set), a.resolution, a.overwrite,
                 progress=not a.no_progress, mask_source=a.mask_source, align=a.align, trim_px=a.trim_px)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""Frame rate of the live 3-D view (recon_kit.viz.live_view) and what it costs a training run beside it.

    .venv/bin/python scripts/bench_live_view.py [--device cpu|cuda] [--out docs/bench/live_view_cpu.json]

1. Frames per second of the view's frame (``render_view`` at the framed orbit camera, what ``LiveView.render()``
   draws: the kit's renderer, eager shading, PNG not included) on the demo object (16k faces, textured) at
   128/160/256 px for PBR, albedo, normals and PBR + edges.
2. Training steps per second on the demo dataset (64 px, grid 32) alone, then with a LiveView following the
   trainer (a frame every 5 steps, at most 4 per second, rendered in the view's worker thread); skipped where
   ipywidgets is not installed (a bare GPU box).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from recon_kit import config, synth
from recon_kit.data.dataset import load_viewset, prepare_dataset
from recon_kit.runs.run import new_trainer
from recon_kit.render import get_rasterizer
from recon_kit.viz.live_view import render_view
from recon_kit.viz.orbit import OrbitCamera


def frame_rates(device: str, repeats: int = 5) -> list[dict]:
    mesh, kd = synth.demo_object()
    mesh = mesh.to(device)
    rast = get_rasterizer("auto", device)
    material = synth.texture_material(kd, device=device)
    light = synth.demo_light(device=device)
    orbit = OrbitCamera()
    orbit.frame(mesh.v_pos.detach().cpu().numpy())   # what LiveView.render() does, without the widgets around it
    rows = []
    for res in (128, 160, 256):
        cam = orbit.camera(res, res)
        for shading, edges in (("PBR", False), ("albedo", False), ("normals", False), ("PBR", True)):
            def frame():
                return render_view(mesh, cam, material, light, shading, edges, rast)
            frame()  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeats):
                frame()
            if device == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / repeats
            rows.append({"resolution": res, "shading": shading + (" + edges" if edges else ""),
                         "ms_per_frame": round(1000 * dt, 1), "fps": round(1 / dt, 1)})
            print(rows[-1])
    return rows


def training_cost(device: str, steps: int = 60) -> dict | None:
    try:
        from recon_kit.viz.live_view import LiveView
        import ipywidgets  # noqa: F401 - the view's widgets; a GPU box without Jupyter measures frames only
    except ImportError as err:
        print(f"training cost skipped ({err})")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        cap = synth.write_demo_capture(Path(tmp) / "cap", resolution=96, n_test=0)
        prepare_dataset(cap, Path(tmp) / "data", [64], progress=False)
        views = load_viewset(Path(tmp) / "data" / "64")
        over = {"data.resolution": 64, "geometry.grid_res": 32, "geometry.hull_res": 48, "pass1.iterations": 10_000,
                "device": device, "checkpoint_every": 0, "snapshot_every": 0}
        out = {}
        for label, with_view in (("alone", False), ("with live view", True), ("alone again", False)):
            tr = new_trainer(config.resolve("cpu-small", over), views, None)
            view = LiveView.for_trainer(tr) if with_view else None
            for _ in range(5):
                tr.step()
            t0 = time.perf_counter()
            for _ in range(steps):
                tr.step()
                if view is not None:
                    view.step_done(tr)
            dt = (time.perf_counter() - t0) / steps
            out[label] = {"ms_per_step": round(1000 * dt, 1)}
            if view is not None:
                time.sleep(1.0)
                out[label].update(frames=view.frames, skipped=view.skipped,
                                  ms_per_frame=round(1000 * view.render_seconds / max(view.frames, 1), 1))
            print(label, out[label])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    result = {"device": a.device, "torch_threads": torch.get_num_threads(), "cpu": platform.processor(),
              "frame_rates": frame_rates(a.device), "training": training_cost(a.device)}
    if a.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

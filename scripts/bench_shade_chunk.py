"""Peak memory and time of one training-like render forward + backward with the shading in one call or in
checkpointed chunks (``render_mesh(shade_chunk=N)``, config ``shade_chunk``), and with the hash grid keeping its
corner lookups for the backward or recomputing them in point chunks (``HashGridEncoder(point_chunk=N)``), each
setting in a fresh process.

    OMP_NUM_THREADS=2 python scripts/bench_shade_chunk.py --res 512 --batch 2 --chunks 0 65536      # CPU
    python scripts/bench_shade_chunk.py --device cuda --res 2048 --batch 6 --chunks 0 262144 1048576  # GPU
    ... --point-chunks 0 131072                                   # hash grid: keep (0) or recompute per chunk

``saved_gib`` is what autograd keeps for the backward during the step (each storage once, parameters included):
the activation memory, the same on any device, so a CPU run tells what a setting saves on the GPU.

The scene is a sphere covering ~40 % of each view, the pass-1 material (hash-grid MaterialField, evaluated on the
covered pixels) under a learned 256² light. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the
process's peak RSS on the CPU (which includes the interpreter and torch, ~0.4 GiB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recon_kit, not another install


def one(res: int, batch: int, chunk: int, device: str, compile: bool, point_chunk: int = 0) -> dict:
    import resource

    import torch
    import trimesh

    from recon_kit import cameras as C
    from recon_kit.mesh import Mesh
    from recon_kit.model.materials import MaterialField
    from recon_kit.render import get_rasterizer, render_mesh
    from recon_kit.render.envlight import EnvLight

    dev = torch.device(device)
    m = trimesh.creation.icosphere(subdivisions=5, radius=0.9)
    mesh = Mesh(torch.tensor(m.vertices, dtype=torch.float32, device=dev), torch.tensor(m.faces, device=dev))
    cams = C.stack_matrices([C.Camera.from_fov(c2w, 0.85, res, res) for c2w in C.sphere_views(batch, 3.0, seed=1)],
                            device=dev)
    rast = get_rasterizer("auto", dev)
    field = MaterialField([[-1.0] * 3, [1.0] * 3], device=dev)
    field.encoder.point_chunk = point_chunk
    light = EnvLight(256, device=dev)
    bg = torch.ones(batch, res, res, 3, device=dev)

    def material(gb, rasterizer):
        return field(gb.pos, gb.mask[..., 0], gb.pixels())

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def step() -> None:
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = render_mesh(rast, mesh, cams, (res, res), material, light, bg, compile=compile, shade_chunk=chunk)
        out["rgb_linear"].square().mean().backward()

    step()  # warm-up (and compile)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"res": res, "batch": batch, "shade_chunk": chunk, "point_chunk": point_chunk, "device": device,
            "step_s": time.perf_counter() - t0, "saved_gib": sum(saved.values()) / 2**30, "peak_gib": peak,
            "peak_kind": "cuda_max_memory_allocated" if dev.type == "cuda" else "peak_rss"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 65536])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--point-chunks", type=int, nargs="+", default=[0],
                    help="hash grid point_chunk values (0 = keep the corner lookups for the backward)")
    ap.add_argument("--compile", action="store_true", help="compiled shading (the CUDA default in training)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.res, a.batch, a.chunks[0], a.device, a.compile, a.point_chunks[0])))
        return
    rows = []
    for chunk in a.chunks:   # a fresh process each: peak RSS / peak allocation of that setting alone
        for point_chunk in a.point_chunks:
            cmd = [sys.executable, __file__, "--one", "--res", str(a.res), "--batch", str(a.batch), "--chunks",
                   str(chunk), "--point-chunks", str(point_chunk), "--device", a.device] + (
                       ["--compile"] if a.compile else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()

"""Forward+backward time per view of the rendering core (rasterise, interpolate, texture, antialias, PBR).

    python scripts/bench_render.py --backend torch --device cpu --res 256 --faces 20000
    python scripts/bench_render.py --backend nvdiffrast --device cuda --res 256 1024 --faces 20000 200000

Prints one markdown row per (resolution, faces): the figures docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import time

import torch
import trimesh

from recon_kit import cameras as C
from recon_kit.render.envlight import EnvLight
from recon_kit.mesh import Mesh
from recon_kit.render import get_rasterizer, render_mesh


def sphere_mesh(faces: int, device) -> Mesh:
    n = max(4, round((faces / 4) ** 0.5))
    m = trimesh.creation.uv_sphere(radius=0.8, count=[n, n])
    v = torch.tensor(m.vertices, dtype=torch.float32, device=device)
    f = torch.tensor(m.faces, dtype=torch.int64, device=device)
    uv = torch.stack([torch.atan2(v[:, 0], v[:, 2]) / (2 * torch.pi) + 0.5, torch.acos(v[:, 1].clamp(-0.8, 0.8) / 0.8) / torch.pi], -1)
    return Mesh(v, f, uv, f.clone())


def bench(backend: str, device: str, res: int, faces: int, batch: int, iters: int, env_res: int = 256) -> dict:
    dev = torch.device(device)
    rast = get_rasterizer(backend, dev)
    mesh = sphere_mesh(faces, dev)
    offset = torch.zeros_like(mesh.v_pos, requires_grad=True)
    kd = torch.rand(1, 1024, 1024, 3, device=dev, requires_grad=True)
    ks = torch.tensor([0.0, 0.5, 0.0], device=dev).expand(1, 1024, 1024, 3).contiguous().requires_grad_(True)
    light = EnvLight(env_res).to(dev)
    views = C.stack_matrices(C.axis_rig(res, res)[:batch], device=dev)
    bg = torch.ones(batch, res, res, 3, device=dev)

    def material(gb, rast):
        return {"kd": rast.texture(kd, gb.uv, gb.uv_da), "ks": rast.texture(ks, gb.uv, gb.uv_da),
                "normal": torch.tensor([0.0, 0.0, 1.0], device=dev).expand_as(gb.pos)}

    def once():
        out = render_mesh(rast, mesh.with_positions(mesh.v_pos + offset), views, (res, res), material, light, bg)
        out["rgb_linear"].mean().backward()

    for _ in range(3):
        once()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        once()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters / batch
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else float("nan")
    return {"backend": rast.name, "device": device, "res": res, "faces": mesh.num_faces, "ms_per_view": 1e3 * dt,
            "peak_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--res", type=int, nargs="+", default=[256])
    ap.add_argument("--faces", type=int, nargs="+", default=[20000])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--env-res", type=int, default=256, help="cube face size of the learned light")
    a = ap.parse_args()
    print("| backend | device | resolution | faces | fwd+bwd ms/view | peak GiB |\n|---|---|---|---|---|---|")
    for res in a.res:
        for faces in a.faces:
            r = bench(a.backend, a.device, res, faces, a.batch, a.iters, a.env_res)
            print(f"| {r['backend']} | {r['device']} | {r['res']}² | {r['faces']} | {r['ms_per_view']:.2f} | {r['peak_gib']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()

"""Time the pass switch's mesh work: clean-up/decimation, xatlas UV unwrap and texture bake of a ~45k-face mesh
(the size of the shoe's pass-1 mesh, issue 15), with the kit's settings or the earlier ones.

    OMP_NUM_THREADS=2 python scripts/bench_bake.py                                        # the kit's path
    OMP_NUM_THREADS=2 python scripts/bench_bake.py --unwrap-faces 0 --chart-iterations 1  # before
    python scripts/bench_bake.py --device cuda                                             # GPU machine

The mesh is a marching-tets surface of a bumpy sphere on the kit's grid-128 DMTet (~45k faces, slivers like a
pass-1 mesh; ``--mesh sphere`` gives a decimated icosphere of ``--faces``); the field is the kit's hash-grid
MaterialField (untrained), evaluated at the covered texels only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recon_kit, not another install

import numpy as np  # noqa: E402
import torch  # noqa: E402


def bumpy_sphere(faces: int, seed: int = 0):
    import trimesh

    from recon_kit import mesh as rk_mesh

    ico = trimesh.creation.icosphere(subdivisions=6)   # 81,920 faces
    rng = np.random.default_rng(seed)
    v = np.asarray(ico.vertices, np.float32)
    k = rng.normal(size=(6, 3)).astype(np.float32)
    v = v * (1 + 0.08 * np.sin(v @ k.T * 3).sum(-1, keepdims=True) / 6)
    m = rk_mesh.Mesh(torch.from_numpy(v), torch.from_numpy(np.asarray(ico.faces, np.int64)))
    return rk_mesh.simplify(m, faces)


def dmtet_surface(radius: float = 0.655, grid_res: int = 128, seed: int = 0):
    """Marching tets of a bumpy sphere on the kit's DMTet grid with randomly deformed vertices: the sliver-rich
    triangulation a pass-1 surface has (radius 0.655 at grid 128 gives ~45k faces)."""
    from recon_kit.model.dmtet import DMTet, kuhn_res_for

    d = DMTet(kuhn_res_for(grid_res), mesh_scale=2.1, init="sphere")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = d.v0 * d.mesh_scale
        k = torch.randn(6, 3, generator=g)
        r = radius * (1 + 0.08 * torch.sin(x @ k.T * 3).sum(-1) / 6)
        d.sdf.copy_((r - x.norm(dim=-1)) / d.cell_size)
        d.deform.copy_(torch.randn(d.deform.shape, generator=g))
    return d.extract()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", choices=("dmtet", "sphere"), default="dmtet", help="a marching-tets surface "
                    "(~45k faces) or a decimated bumpy icosphere of --faces faces")
    ap.add_argument("--faces", type=int, default=45000)
    ap.add_argument("--unwrap-faces", type=int, default=None, help="decimate to this before xatlas (0 = never; "
                    "default: the config's geometry.unwrap_faces)")
    ap.add_argument("--chart-iterations", type=int, default=0, help="xatlas ChartOptions.max_iterations "
                    "(xatlas' default, before: 1)")
    ap.add_argument("--texture-res", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from recon_kit import bake, mesh as rk_mesh
    from recon_kit.config import GeometryConfig
    from recon_kit.model.materials import MaterialField
    from recon_kit.render.raster import get_rasterizer

    dev = torch.device(a.device)
    geometry = GeometryConfig() if a.unwrap_faces is None else GeometryConfig(unwrap_faces=a.unwrap_faces)
    unwrap_faces = geometry.unwrap_faces
    src = (dmtet_surface() if a.mesh == "dmtet" else bumpy_sphere(a.faces)).to(dev)
    rast = get_rasterizer("auto", dev)
    field = MaterialField([[-1.2] * 3, [1.2] * 3], device=dev)
    rows = []
    for _ in range(a.repeat):
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        m = rk_mesh.clean_mesh(src, target_faces=geometry.unwrap_target())
        t1 = time.perf_counter()
        m = bake.uv_unwrap(m, texture_res=a.texture_res, chart_iterations=a.chart_iterations)
        t2 = time.perf_counter()
        tex = bake.bake_field(rast, m, lambda pos, normal, tangent: field(pos), texture_res=a.texture_res)
        sync()
        t3 = time.perf_counter()
        print(f"clean {t1 - t0:.2f} s, unwrap {t2 - t1:.2f} s, bake {t3 - t2:.2f} s", file=sys.stderr, flush=True)
        rows.append({"faces_in": src.num_faces, "faces_unwrapped": m.num_faces, "clean_s": t1 - t0,
                     "unwrap_s": t2 - t1, "bake_s": t3 - t2, "total_s": t3 - t0,
                     "covered": float(tex["mask"].float().mean()), "uv_vertices": int(m.v_tex.shape[0])})
    print(json.dumps({"device": str(dev), "texture_res": a.texture_res, "unwrap_faces": unwrap_faces, "chart_iterations": a.chart_iterations,
                      "runs": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Which triangles of a mesh can be seen from outside it.

A DMTet surface can grow closed pockets and tunnels inside the object: the photos never see them, so no loss
removes them, yet they are surface (on the demo object at 512², 97 % of the mesh's points farther than 1 % of
the diagonal from the true surface lay inside the object; docs/benchmarks.md section 18). Rendering the mesh from
many directions around it and keeping the triangles that show up in some view removes them; the rasteriser's
triangle-id buffer gives the answer directly, with no shading.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from recon_kit.cameras import Camera, look_at, stack_matrices
from recon_kit.mesh import Mesh
from recon_kit.render.raster import Rasterizer
from recon_kit.render.renderer import clip_positions


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (a Fibonacci lattice), ``[n,3]``."""
    k = np.arange(n) + 0.5
    y = 1.0 - 2.0 * k / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * k
    r = np.sqrt(1.0 - y * y)
    return np.stack([r * np.cos(phi), y, r * np.sin(phi)], -1)


@torch.no_grad()
def visible_faces(rasterizer: Rasterizer, mesh: Mesh, n_views: int = 48, resolution: int = 512,
                  cameras: Sequence[Camera] = (), batch: int = 8) -> torch.Tensor:
    """``[F]`` bool: the faces seen in at least one render, from ``n_views`` directions spread evenly around the
    mesh (:func:`fibonacci_directions`; ``resolution``², the bounding sphere filling the frame) and from each of
    ``cameras`` (e.g. the training views, at their own size).

    A face smaller than a pixel in every view can be missed; :func:`recon_kit.mesh.keep_faces` with ``fill``
    closes such pinholes."""
    v = mesh.v_pos.detach()
    centre = 0.5 * (v.min(0).values + v.max(0).values)
    radius = float(torch.linalg.norm(v - centre, dim=1).max().clamp_min(1e-6))
    fov = 2.0 * math.asin(1.02 / 3.0)                # from 3 radii away: the bounding sphere plus 2 %
    around = [Camera.from_fov(look_at(d * 3.0 * radius + centre.cpu().numpy(), centre.cpu().numpy()), fov,
                              resolution, resolution) for d in fibonacci_directions(n_views)]
    tri = mesh.t_pos_idx.int()
    seen = torch.zeros(mesh.num_faces, dtype=torch.bool, device=v.device)
    by_size: dict[tuple[int, int], list[Camera]] = {}
    for cam in [*around, *cameras]:
        by_size.setdefault((cam.height, cam.width), []).append(cam)
    for size, cams in by_size.items():
        for s in range(0, len(cams), batch):
            mvp = stack_matrices(cams[s:s + batch], device=v.device)["mvp"]
            rast, _ = rasterizer.rasterize(clip_positions(v, mvp), tri, size)
            ids = rast[..., 3].reshape(-1).long()
            seen[ids[ids > 0] - 1] = True
    return seen

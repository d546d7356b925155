"""CPU tests of the PyTorch rasteriser: conventions, exactness, and the gradients training relies on."""

import math

import numpy as np
import pytest
import torch
import trimesh

from recon_kit import cameras as C
from recon_kit.mesh import Mesh
from recon_kit.render import clip_positions, get_rasterizer, rasterize_mesh
from recon_kit.render.torch_backend import mip_chain

R = get_rasterizer("torch", "cpu")


def icosphere(sub=3, radius=1.0):
    m = trimesh.creation.icosphere(subdivisions=sub, radius=radius)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.int64)


def views(res, names=C.AXIS_VIEWS, angle=0.85, dist=3.0):
    return C.stack_matrices(C.axis_rig(res, res, angle, dist, names))


def test_row_zero_is_image_top():
    v = torch.tensor([[-0.5, 0.2, 0.0], [0.5, 0.2, 0.0], [0.0, 0.9, 0.0]])
    f = torch.tensor([[0, 1, 2]])
    m = views(32, ("front",))
    rast, _ = R.rasterize(clip_positions(v, m["mvp"]), f, (32, 32))
    rows = torch.nonzero(rast[0, ..., 3] > 0)[:, 0]
    assert rows.numel() > 0 and rows.max() < 16


def test_perspective_correct_interpolation_matches_ray_cast():
    v = torch.tensor([[-1.0, -1.0, -0.5], [1.0, -1.0, 0.5], [0.0, 1.0, 0.0]])
    f = torch.tensor([[0, 1, 2]])
    cam = C.Camera.from_fov(C.axis_rig_c2w("front"), 0.85, 48, 48)
    m = C.stack_matrices([cam])
    rast, _ = R.rasterize(clip_positions(v, m["mvp"]), f, (48, 48))
    pos, _ = R.interpolate(v, rast, f)
    covered = rast[0, ..., 3] > 0
    ii, jj = torch.nonzero(covered, as_tuple=True)
    # The interpolated point must lie on the triangle's plane and on the pixel's ray.
    p = pos[0, ii, jj].double().numpy()
    n = np.cross((v[1] - v[0]).numpy(), (v[2] - v[0]).numpy())
    np.testing.assert_allclose((p - v[0].numpy()) @ n, 0, atol=1e-5)
    xy, _ = cam.project(p)
    np.testing.assert_allclose(xy[:, 0], jj.numpy() + 0.5, atol=1e-3)
    np.testing.assert_allclose(xy[:, 1], ii.numpy() + 0.5, atol=1e-3)


def test_sphere_coverage_matches_analytic():
    v, f = icosphere(5, 0.8)
    cam = C.Camera.from_fov(C.axis_rig_c2w("front"), 0.85, 128, 128)
    rast, _ = R.rasterize(clip_positions(v, C.stack_matrices([cam])["mvp"]), f, (128, 128))
    r_px = cam.fx * math.tan(math.asin(0.8 / 3.0))
    assert (rast[..., 3] > 0).float().mean().item() == pytest.approx(math.pi * r_px ** 2 / 128 ** 2, rel=0.02)


def test_nearest_triangle_wins():
    quad = lambda z: torch.tensor([[-1, -1, z], [1, -1, z], [0, 1, z]], dtype=torch.float32)  # noqa: E731
    v = torch.cat([quad(-0.5), quad(0.5)])
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    rast, _ = R.rasterize(clip_positions(v, views(16, ("front",))["mvp"]), f, (16, 16))
    ids = rast[0, ..., 3][rast[0, ..., 3] > 0]
    assert torch.all(ids == 2)


def test_silhouette_gradients_are_finite_nonzero_and_point_outwards():
    v, f = icosphere(3, 0.6)
    scale = torch.tensor(1.0, requires_grad=True)
    m = views(64)
    pc = clip_positions(v * scale, m["mvp"])
    rast, _ = R.rasterize(pc, f, (64, 64))
    alpha = R.antialias((rast[..., 3:4] > 0).float(), rast, pc, f)
    alpha.mean().backward()
    assert torch.isfinite(scale.grad) and scale.grad > 0


def test_sphere_radius_and_offset_recovered_from_silhouettes():
    v, f = icosphere(3, 1.0)
    m = views(64)

    def silhouettes(radius, offset):
        pc = clip_positions(v * radius + offset, m["mvp"])
        rast, _ = R.rasterize(pc, f, (64, 64))
        return R.antialias((rast[..., 3:4] > 0).float(), rast, pc, f)

    with torch.no_grad():
        target = silhouettes(torch.tensor(0.7), torch.tensor([0.15, -0.1, 0.05]))
    radius = torch.tensor(0.5, requires_grad=True)
    offset = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([radius, offset], lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        loss = ((silhouettes(radius, offset) - target) ** 2).mean()
        loss.backward()
        opt.step()
    assert radius.item() == pytest.approx(0.7, abs=0.02)
    np.testing.assert_allclose(offset.detach().numpy(), [0.15, -0.1, 0.05], atol=0.02)


def textured_cube():
    m = trimesh.creation.box(extents=(1.2, 1.2, 1.2))
    v = torch.tensor(m.vertices, dtype=torch.float32)
    f = torch.tensor(m.faces, dtype=torch.int64)
    # Simple planar UVs per face from the two largest-varying coordinates, packed into one atlas.
    uv = torch.zeros(len(f) * 3, 2)
    for i, tri in enumerate(f):
        p = v[tri]
        axis = int(torch.argmax(torch.abs(torch.cross(p[1] - p[0], p[2] - p[0], dim=0))))
        other = [a for a in range(3) if a != axis]
        tile = i // 2
        uv[3 * i:3 * i + 3] = (p[:, other] / 1.2 + 0.5) * torch.tensor([1 / 6, 1.0]) + torch.tensor([tile / 6, 0.0])
    return Mesh(v, f, uv, torch.arange(len(f) * 3).view(-1, 3))


def test_texture_recovered_from_renders_of_known_mesh():
    mesh = textured_cube()
    g = torch.Generator().manual_seed(0)
    target_tex = torch.rand(1, 16, 96, 3, generator=g)
    vs = C.stack_matrices([C.Camera.from_fov(c2w, 0.85, 64, 64) for c2w in C.sphere_views(12, 3.0, seed=1)])
    gb = rasterize_mesh(R, mesh, vs["mvp"], vs["w2c"], (64, 64))

    def render(tex):
        return R.texture(tex, gb.uv, gb.uv_da, filter_mode="linear-mipmap-linear") * gb.mask

    with torch.no_grad():
        target = render(target_tex)
    tex = torch.full_like(target_tex, 0.5).requires_grad_(True)
    opt = torch.optim.Adam([tex], lr=0.05)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = ((render(tex) - target) ** 2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert tex.grad is not None and torch.isfinite(tex.grad).all()
    assert loss.item() < 0.02 * first


def test_mip_chain_and_minified_lookup_average():
    tex = torch.rand(1, 32, 32, 3)
    levels = mip_chain(tex)
    assert [lv.shape[1] for lv in levels] == [32, 16, 8, 4, 2, 1]
    torch.testing.assert_close(levels[-1][0, 0, 0], tex.mean((0, 1, 2)))
    uv = torch.rand(1, 4, 4, 2)
    uv_da = torch.full((1, 4, 4, 4), 2.0)  # huge footprint: coarsest level
    out = R.texture(tex, uv, uv_da)
    torch.testing.assert_close(out, tex.mean((0, 1, 2)).expand_as(out), atol=1e-5, rtol=0)


def test_interpolate_derivatives_match_finite_differences():
    v = torch.tensor([[-1.0, -1.0, -0.5], [1.0, -1.0, 0.5], [0.0, 1.0, 0.0]])
    f = torch.tensor([[0, 1, 2]])
    m = views(64, ("front",))
    rast, db = R.rasterize(clip_positions(v, m["mvp"]), f, (64, 64))
    attr = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    out, da = R.interpolate(attr, rast, f, rast_db=db, diff_attrs="all")
    inner = (rast[0, 1:-1, 1:-1, 3] > 0) & (rast[0, 1:-1, 2:, 3] > 0) & (rast[0, 2:, 1:-1, 3] > 0)
    fd_x = (out[0, 1:-1, 2:] - out[0, 1:-1, 1:-1])[inner]
    fd_y = (out[0, 2:, 1:-1] - out[0, 1:-1, 1:-1])[inner]
    torch.testing.assert_close(da[0, 1:-1, 1:-1][inner][:, 0::2], fd_x, atol=2e-3, rtol=0.05)
    torch.testing.assert_close(da[0, 1:-1, 1:-1][inner][:, 1::2], fd_y, atol=2e-3, rtol=0.05)

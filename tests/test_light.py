"""Tests of recon_kit.light: cube convention, seam-free lookups, split-sum pre-integration, shading, probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon_kit.render import cubemap
from recon_kit.render import envlight
from recon_kit.render import shading as rk_shading

R = 32


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _sphere_normals(n: int = 24) -> torch.Tensor:
    """Normals of a unit sphere seen by an orthographic-ish grid, [n, n, 3] (only the front hemisphere)."""
    t = (torch.arange(n) + 0.5) / n * 2 - 1
    y, x = torch.meshgrid(-t, t, indexing="ij")
    z = (1 - x * x - y * y).clamp_min(0).sqrt()
    keep = (x * x + y * y) < 0.95
    return _unit(torch.stack((x, y, z), -1)[keep])


def test_face_convention_and_round_trip():
    g = torch.Generator().manual_seed(0)
    d = _unit(torch.randn(4096, 3, generator=g))
    face, uv = cubemap.dir_to_face_uv(d)
    assert uv.abs().max() <= 1.0
    assert torch.allclose(cubemap.face_uv_to_dir(face, uv), d, atol=1e-6)
    axes = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    f, uv = cubemap.dir_to_face_uv(axes)
    assert f.tolist() == [0, 1, 2, 3, 4, 5] and uv.abs().max() == 0
    corner = cubemap.face_uv_to_dir(torch.tensor(2), torch.tensor([-1.0, -1.0]), normalize=False)
    assert corner.tolist() == [-1.0, 1.0, -1.0]  # +y face, row 0 / column 0 corner looks to -x, -z
    td = cubemap.texel_dirs(8)
    f, uv = cubemap.dir_to_face_uv(td)
    assert (f == torch.arange(6).view(6, 1, 1)).all()
    c = (torch.arange(8) + 0.5) / 4 - 1
    assert torch.allclose(uv[..., 0], c.view(1, 1, 8).expand(6, 8, 8), atol=1e-6)
    assert torch.allclose(uv[..., 1], c.view(1, 8, 1).expand(6, 8, 8), atol=1e-6)
    assert torch.isclose(cubemap.texel_solid_angles(16).sum(), torch.tensor(4 * math.pi), rtol=1e-5)


def test_cube_lookup_is_seam_free_and_exact_at_texels():
    cube = cubemap.texel_dirs(R)
    assert torch.allclose(cubemap.cube_lookup(cube, cube), cube, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    d = _unit(torch.randn(20000, 3, generator=g))
    err = (cubemap.cube_lookup(cube, d) - d).norm(dim=-1)
    assert err.max() < 2.0 / R  # bilinear on a smooth function: no jumps at edges or corners
    eps = 1e-5
    for a, b in [((1.0, 0.3, 1.0 - eps), (1.0, 0.3, 1.0 + eps)), ((1.0, 1.0 - eps, 1.0 - eps), (1.0, 1.0 + eps, 1.0))]:
        v = cubemap.cube_lookup(torch.rand(6, R, R, 2, generator=g), torch.tensor([a, b]))
        assert torch.allclose(v[0], v[1], atol=1e-3)


def test_constant_environment_is_preserved():
    c = torch.tensor([0.7, 0.4, 1.3])
    light = envlight.EnvLight(R, init=c.expand(6, R, R, 3).clone())
    light.build_mips()
    assert light.diffuse.shape == (6, 16, 16, 3)
    assert torch.allclose(light.diffuse, c.expand_as(light.diffuse), rtol=1e-5)
    assert [s.shape[1] for s in light.specular] == [32, 16]
    assert [lv.roughness for lv in light.levels] == [0.08, 1.0]
    for s in light.specular:
        assert torch.allclose(s, c.expand_as(s), rtol=1e-5)
    light64 = envlight.EnvLight(64, init=0.25)
    light64.build_mips()
    assert [round(lv.roughness, 3) for lv in light64.levels] == [0.08, 0.5, 1.0]
    for s in light64.specular:
        assert torch.allclose(s, torch.full_like(s, 0.25), rtol=1e-5)
    g = torch.Generator().manual_seed(2)
    d = torch.randn(500, 3, generator=g)
    r = torch.rand(500, 1, generator=g)
    assert torch.allclose(light.prefiltered(d, r), c.expand(500, 3), rtol=1e-5)
    assert torch.allclose(light.irradiance(d), c.expand(500, 3), rtol=1e-5)


def test_roughness_to_level_matches_nvdiffrec():
    lv = rk_shading.roughness_to_level(torch.tensor([0.0, 0.08, 0.29, 0.5, 0.75, 1.0]), 6)
    assert torch.allclose(lv, torch.tensor([0.0, 0.0, 2.0, 4.0, 4.5, 5.0]))


def test_ggx_filter_matches_brute_force_and_is_symmetric():
    res, rough = 16, 0.3
    f = cubemap.ggx_filter(res, rough)
    d = cubemap.texel_dirs(res).reshape(-1, 3)
    nl = d @ d.T
    a2 = rough ** 4
    dd = (a2 - 1) * (1 + nl) * 0.5 + 1
    k = a2 / (math.pi * dd * dd) * nl * (nl >= cubemap.ggx_cutoff_cos(rough))
    K = f.K.to_dense()
    assert f.nnz == int((k > 0).sum())
    assert torch.allclose(K, k, rtol=1e-4, atol=1e-6 * float(k.max()))
    assert torch.equal(K, K.T)
    x = torch.rand(6 * res * res, 3, dtype=torch.float32, requires_grad=True)
    W = f.inv_z * K * f.omega.T
    gy = torch.rand(6 * res * res, 3)
    y = cubemap.apply_filter(f, x.view(6, res, res, 3)).reshape(-1, 3)
    assert torch.allclose(y, W @ x, atol=1e-5)
    (gx,) = torch.autograd.grad((y * gy).sum(), x)
    assert torch.allclose(gx, W.T @ gy, atol=1e-5)


def test_fg_lut_properties():
    lut = rk_shading.fg_lut()
    assert lut.shape == (256, 256, 2)
    assert lut.min() >= 0 and lut.max() <= 1.0 + 1e-3
    assert lut.sum(-1).max() < 1.03
    assert abs(float(lut[0, -1].sum()) - 1.0) < 1e-3 and float(lut[0, -1, 0]) > 0.99
    assert rk_shading.fg_lut() is lut
    rng = np.random.default_rng(0)
    n = 400000
    rough, nv = (128 + 0.5) / 256, (128 + 0.5) / 256
    z = rng.random(n)
    phi = 2 * np.pi * rng.random(n)
    l = np.stack((np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z), -1)
    v = np.array([np.sqrt(1 - nv * nv), 0.0, nv])
    h = l + v
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    a2 = rough ** 4
    D = a2 / (np.pi * (h[:, 2] ** 2 * (a2 - 1) + 1) ** 2)
    vis = 0.5 / (z * np.sqrt(nv * nv * (1 - a2) + a2) + nv * np.sqrt(z * z * (1 - a2) + a2))
    fc = (1 - h @ v) ** 5
    ref = np.array([(D * vis * z * (1 - fc)).mean(), (D * vis * z * fc).mean()]) * 2 * np.pi
    assert np.allclose(lut[128, 128].numpy(), ref, atol=0.01)


def test_shade_constant_light_closed_form_and_broadcasting():
    c = 0.8
    light = envlight.EnvLight(R, init=c)
    n = _sphere_normals(12)
    pos = n.clone()
    B = 2
    kd = torch.tensor([0.5, 0.3, 0.2]).expand(B, *n.shape)
    ks = torch.tensor([0.1, 0.4, 0.25]).expand(B, *n.shape)
    campos = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.5, 3.0]])
    rgb = envlight.shade(light, pos.expand(B, -1, -1), n.expand(B, -1, -1), kd, ks, campos)
    assert rgb.shape == (B, n.shape[0], 3)
    wo = _unit(campos[:, None] - pos)
    nv = (n * wo).sum(-1).clamp_min(1e-4)
    fg = rk_shading.lut_lookup(rk_shading.fg_lut(), nv, torch.full_like(nv, 0.4))
    m, o = 0.25, 0.1
    spec_col = 0.04 * (1 - m) + kd * m
    expect = (c * kd * (1 - m) + c * (spec_col * fg[..., :1] + fg[..., 1:])) * (1 - o)
    assert torch.allclose(rgb, expect, rtol=1e-4)
    diff = light.shade(pos, n, kd[0], ks[0], campos[0], bsdf="diffuse")
    assert torch.allclose(diff, c * kd[0] * (1 - o), rtol=1e-5)
    with pytest.raises(ValueError):
        envlight.shade(light, pos, n, kd[0], ks[0], campos[0], bsdf="phong")


def test_gradients_reach_every_base_texel():
    g = torch.Generator().manual_seed(3)
    light = envlight.EnvLight(R, init=0.5 + torch.rand(6, R, R, 3, generator=g))
    n = cubemap.texel_dirs(16).reshape(-1, 3)
    kd = torch.rand(n.shape[0], 3, generator=g)
    ks = torch.rand(n.shape[0], 3, generator=g) * torch.tensor([0.0, 1.0, 1.0])
    nrm = n.clone().requires_grad_()
    rgb = envlight.shade(light, n, nrm, kd, ks, torch.zeros(3))
    (rgb.square().mean() + light.regularizer()).backward()
    grad = light.base.grad
    assert torch.isfinite(grad).all() and torch.isfinite(nrm.grad).all() and nrm.grad.abs().sum() > 0
    assert (grad.abs().sum(-1) > 0).all()
    light.base.grad = None
    d = cubemap.texel_dirs(R)
    rgb = light.prefiltered(d, torch.full(d.shape[:-1], 0.08))
    rgb.sum().backward()
    assert (light.base.grad.abs().sum(-1) > 0).all()


def test_rebuild_after_optimizer_step_and_optimisation_recovers_constant_light():
    colour = torch.tensor([0.9, 0.6, 0.3])
    target = envlight.EnvLight(R, init=colour.expand(6, R, R, 3).clone())
    n = cubemap.texel_dirs(8).reshape(-1, 3)
    views = 3.0 * torch.cat((torch.eye(3), -torch.eye(3)))
    B = views.shape[0]
    pos, nrm = n.expand(B, -1, -1), n.expand(B, -1, -1)
    kd = torch.full(pos.shape, 0.6)
    ks = torch.tensor([0.0, 0.5, 0.0]).expand(pos.shape)
    with torch.no_grad():
        ref = envlight.shade(target, pos, nrm, kd, ks, views)
    light = envlight.EnvLight(R, init=0.5)
    opt = torch.optim.Adam(light.parameters(), lr=0.05)
    for _ in range(40):
        loss = (envlight.shade(light, pos, nrm, kd, ks, views) - ref).abs().mean() + 0.005 * light.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        light.clamp_(0.0)
    assert loss.item() < 0.01
    assert torch.allclose(light.base.detach().mean((0, 1, 2)), colour, atol=0.05)


def test_perturb_normal():
    n = torch.tensor([[0.0, 0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0]])
    v = torch.tensor([[0.0, 0.0, 1.0]])
    flat = torch.tensor([[0.0, 0.0, 1.0]])
    assert torch.allclose(rk_shading.perturb_normal(n, n, t, flat, v), n)
    assert torch.allclose(rk_shading.perturb_normal(n, n, t, None, v), n)
    p = _unit(torch.tensor([[0.0, 0.5, 1.0]]))
    out = rk_shading.perturb_normal(n, n, t, p, v)
    b = torch.linalg.cross(t, n)
    assert torch.allclose(out, _unit(-b * p[:, 1:2] + n * p[:, 2:3]), atol=1e-6)  # OpenGL: minus bitangent
    assert torch.allclose(rk_shading.perturb_normal(n, n, t, p, v, opengl=False),
                          _unit(b * p[:, 1:2] + n * p[:, 2:3]), atol=1e-6)
    back = rk_shading.perturb_normal(n, n, t, flat, -v)
    assert torch.allclose(back, -n)  # two-sided: flipped towards the viewer
    assert torch.allclose(rk_shading.perturb_normal(n, n, t, flat, -v, two_sided=False), n)
    grazing = _unit(torch.tensor([[1.0, 0.0, 0.02]]))
    tilted = _unit(torch.tensor([[-0.9, 0.0, 0.44]]))
    out = rk_shading.perturb_normal(n, n, t, tilted, grazing)
    assert float((out * grazing).sum()) > float((tilted * grazing).sum())  # bent towards the geometric normal


def test_latlong_round_trip():
    H = 64
    d = cubemap.latlong_dirs(H)
    assert d.shape == (H, 2 * H, 3)
    assert torch.allclose(d[0, 0, 1], torch.tensor(math.cos(math.pi * 0.5 / H)))  # +Y up: first row is the top
    u = torch.atan2(d[..., 0], -d[..., 2]) / (2 * math.pi) + 0.5
    assert torch.allclose(u[0], (torch.arange(2 * H) + 0.5) / (2 * H), atol=1e-5)

    def field(x):
        return torch.stack((1.0 + 0.5 * x[..., 0], 1.0 + 0.3 * x[..., 1] ** 2, 2.0 + 0.4 * x[..., 2]), -1)

    img = field(d)
    cube = cubemap.latlong_to_cube(img, R)
    assert torch.allclose(cube, field(cubemap.texel_dirs(R)), atol=0.01)
    back = cubemap.cube_to_latlong(cube, H)
    assert (back - img).abs().max() < 0.01
    light = envlight.EnvLight.from_latlong(img.numpy(), res=R)
    assert torch.allclose(light.base.detach(), cube)


def test_hdr_write_read_round_trip(tmp_path):
    g = np.random.default_rng(4)
    img = (g.random((6, 10, 3)) * np.array([1e-3, 1.0, 50.0])).astype(np.float32)
    img[0, 0] = 0
    envlight.write_hdr(tmp_path / "a.hdr", img)
    back = envlight.read_hdr(tmp_path / "a.hdr")
    assert back.shape == img.shape and back.dtype == np.float32
    assert np.all(np.abs(back - img) <= img.max(-1, keepdims=True) / 128 + 1e-30)
    assert np.all(back[0, 0] == 0)

    light = envlight.EnvLight(R, init=torch.tensor([2.0, 0.5, 0.25]).expand(6, R, R, 3).clone())
    envlight.save_probe_hdr(tmp_path / "probe.hdr", light)
    assert envlight.read_hdr(tmp_path / "probe.hdr").shape == (2 * R, 4 * R, 3)
    loaded = envlight.load_probe(tmp_path / "probe.hdr", res=R)
    assert ((loaded.base.detach() - light.base.detach()).abs() <= 2.0 / 128).all()


def test_read_hdr_rle_scanlines(tmp_path):
    W, H = 10, 2
    rows = []
    rgbe = np.zeros((H, W, 4), dtype=np.uint8)
    for y in range(H):
        line = bytearray([2, 2, 0, W])
        for ch in range(4):
            vals = [100 + ch] * 6 + [10 * ch + k for k in range(4)]
            rgbe[y, :, ch] = vals
            line += bytes([128 + 6, 100 + ch, 4] + vals[6:])
        rows.append(bytes(line))
    (tmp_path / "rle.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 10\n" + b"".join(rows))
    out = envlight.read_hdr(tmp_path / "rle.hdr")
    e = rgbe[..., 3].astype(np.int32)
    expect = (rgbe[..., :3] + 0.5) * np.ldexp(1.0, e - 136)[..., None]
    assert np.allclose(out, expect)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(5)
    init = 0.5 + torch.rand(6, 64, 64, 3, generator=g)
    n = _unit(torch.randn(4096, 3, generator=g))
    kd = torch.rand(4096, 3, generator=g)
    ks = torch.rand(4096, 3, generator=g)
    out = []
    for dev in ("cpu", "cuda"):
        light = envlight.EnvLight(64, init=init, device=dev)
        rgb = envlight.shade(light, n.to(dev), n.to(dev), kd.to(dev), ks.to(dev), torch.tensor([0.0, 0.0, 3.0], device=dev))
        rgb.sum().backward()
        out.append((rgb.detach().cpu(), light.base.grad.cpu()))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-4, atol=1e-5)
    assert torch.allclose(out[0][1], out[1][1], rtol=1e-3, atol=1e-6)

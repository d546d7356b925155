"""UV unwrapping and field baking: layout validity, bake -> sample round trip, gutter dilation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from recon_kit.bake import bake_field, dilate, uv_unwrap
from recon_kit.cameras import Camera, look_at
from recon_kit.mesh import Mesh
from recon_kit.render.raster import get_rasterizer


def _mesh(tm: trimesh.Trimesh) -> Mesh:
    return Mesh(torch.tensor(np.asarray(tm.vertices), dtype=torch.float32),
                torch.tensor(np.asarray(tm.faces), dtype=torch.int64))


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    return uv_unwrap(_mesh(trimesh.creation.icosphere(subdivisions=2)), texture_res=128, padding=2)


def field(pos: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"kd": pos * 0.5 + 0.5}


def test_uv_unwrap_sphere_and_cube(sphere):
    ico = _mesh(trimesh.creation.icosphere(subdivisions=2))
    for src, out in ((ico, sphere), (_mesh(trimesh.creation.box()), None)):
        out = out if out is not None else uv_unwrap(src)
        assert out.has_uv and out.num_faces == src.num_faces
        assert torch.equal(out.v_pos, src.v_pos)
        assert torch.equal(out.t_pos_idx, src.t_pos_idx)                     # topology kept
        assert out.t_tex_idx.shape == out.t_pos_idx.shape
        assert out.v_tex.min() >= 0 and out.v_tex.max() <= 1
        t = out.v_tex[out.t_tex_idx]
        area = 0.5 * ((t[:, 1] - t[:, 0])[:, 0] * (t[:, 2] - t[:, 0])[:, 1]
                      - (t[:, 2] - t[:, 0])[:, 0] * (t[:, 1] - t[:, 0])[:, 1]).abs()
        assert area.min() > 0 and area.sum() < 1                               # non-degenerate, no overlap budget
    with pytest.raises(ValueError, match="max_faces"):
        uv_unwrap(ico, max_faces=100)


def test_bake_reproduces_field_at_texels_and_in_a_render(sphere):
    rast = get_rasterizer("torch", "cpu")
    res = 128
    out = bake_field(rast, sphere, field, texture_res=res, gutter=None)
    kd, mask = out["kd"], out["mask"]
    assert kd.shape == (res, res, 3) and mask.shape == (res, res) and mask.dtype == torch.bool
    assert 0.3 < mask.float().mean() < 0.95

    # Face centroids in UV land on the texture; the baked value there is the field at the 3-D centroid.
    uv_c = sphere.v_tex[sphere.t_tex_idx].mean(1)
    pos_c = sphere.v_pos[sphere.t_pos_idx].mean(1)
    sampled = rast.texture(kd[None], uv_c[None, None], filter_mode="linear")[0, 0]
    err = (sampled - field(pos_c)["kd"]).abs().max(-1).values
    assert err.median() < 2e-3 and err.max() < 0.05

    # Render the sphere, look the texture up at the rendered UVs (mip-mapped), compare to the field there.
    cam = Camera.from_fov(look_at((1.6, 1.2, 2.0)), math.radians(40), 96, 96)
    v_hom = torch.cat([sphere.v_pos, torch.ones_like(sphere.v_pos[:, :1])], -1)
    pos_clip = (v_hom @ torch.tensor(cam.mvp(), dtype=torch.float32).T)[None]
    r, r_db = rast.rasterize(pos_clip, sphere.t_pos_idx.int(), (96, 96))
    hit = r[0, ..., 3] > 0
    uv, uv_da = rast.interpolate(sphere.v_tex, r, sphere.t_tex_idx.int(), rast_db=r_db, diff_attrs="all")
    pos, _ = rast.interpolate(sphere.v_pos, r, sphere.t_pos_idx.int())
    looked_up = rast.texture(kd[None], uv, uv_da)[0][hit]
    diff = (looked_up - field(pos[0][hit])["kd"]).abs().max(-1).values
    assert hit.sum() > 2000
    assert diff.mean() < 5e-3 and torch.quantile(diff, 0.99) < 0.03


def test_gutter_dilation_and_normalised_normals(sphere):
    rast = get_rasterizer("torch", "cpu")

    def fn(pos, normal=None, tangent=None):
        assert normal is not None and tangent is not None
        torch.testing.assert_close(normal.norm(dim=-1), torch.ones(len(pos)))
        torch.testing.assert_close(tangent.norm(dim=-1), torch.ones(len(pos)))  # as the pipeline interpolates it
        return {"kd": pos * 0.5 + 0.5, "normal": 3.0 * pos + torch.tensor([0.0, 0.0, 5.0])}

    out = bake_field(rast, sphere, fn, texture_res=64, gutter=2)
    mask = out["mask"]
    assert not (out["kd"][~mask] == 0).all(-1).any()                          # no empty texel left at zero
    torch.testing.assert_close(out["normal"].norm(dim=-1), torch.ones(64, 64))
    full = bake_field(rast, sphere, fn, texture_res=64, gutter=None)
    torch.testing.assert_close(full["kd"][mask], out["kd"][mask])             # charts untouched
    pooled = torch.nn.functional.avg_pool2d(full["kd"].permute(2, 0, 1)[None], 8)[0]
    assert pooled.min() > 0                                                   # coarse mips see no zeros


def test_dilate_copies_the_nearest_covered_texel():
    cov = torch.zeros(5, 6, dtype=torch.bool)
    cov[1, 1] = cov[3, 4] = True
    tex = torch.zeros(5, 6, 1)
    tex[1, 1], tex[3, 4] = 1.0, 2.0
    out = dilate({"a": tex}, cov, gutter=None)["a"][..., 0]
    assert out[0, 0] == 1.0 and out[4, 5] == 2.0 and out[1, 1] == 1.0 and out[3, 4] == 2.0
    limited = dilate({"a": tex}, cov, gutter=1)["a"][..., 0]
    assert limited[1, 2] == 1.0 and limited[0, 5] == 1.5                      # beyond the gutter: mean of charts


def test_unwrap_faces_decimates_before_xatlas():
    """geometry.unwrap_faces caps the face count xatlas sees (the trainer's pass switch), max_faces still applies."""
    import trimesh

    from recon_kit.config import ConfigError, GeometryConfig, ReconConfig
    from recon_kit.mesh import Mesh, clean_mesh

    assert GeometryConfig(unwrap_faces=20_000).unwrap_target() == 20_000
    assert GeometryConfig().unwrap_target() == GeometryConfig().max_faces   # off by default
    assert GeometryConfig(unwrap_faces=0, max_faces=5000).unwrap_target() == 5000
    assert GeometryConfig(unwrap_faces=9000, max_faces=5000).unwrap_target() == 5000
    with pytest.raises(ConfigError, match="unwrap_faces"):
        ReconConfig.from_dict({"geometry": {"unwrap_faces": -1}})
    ico = trimesh.creation.icosphere(subdivisions=5)   # 20,480 faces
    mesh = Mesh(torch.tensor(ico.vertices, dtype=torch.float32), torch.tensor(ico.faces, dtype=torch.int64))
    small = clean_mesh(mesh, target_faces=GeometryConfig(unwrap_faces=2000).unwrap_target())
    assert 1500 <= small.num_faces <= 2100
    uv = uv_unwrap(small, max_faces=2100, texture_res=256)
    assert uv.has_uv and uv.num_faces == small.num_faces

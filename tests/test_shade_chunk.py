"""render_mesh(shade_chunk=N): the chunked, checkpointed shading gives the one-call images and gradients (CPU)."""

import pytest
import torch
import trimesh

from recon_kit import cameras as C
from recon_kit.config import ConfigError, ReconConfig
from recon_kit.mesh import Mesh
from recon_kit.render import get_rasterizer, render_mesh
from recon_kit.render.envlight import EnvLight


def _render(shade_chunk: int):
    m = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    pos = torch.tensor(m.vertices, dtype=torch.float32).requires_grad_(True)
    mesh = Mesh(pos, torch.tensor(m.faces, dtype=torch.int64))
    cams = C.stack_matrices(C.axis_rig(48, 48, 0.85, 3.0, C.AXIS_VIEWS[:2]))
    r = get_rasterizer("torch", "cpu")
    torch.manual_seed(0)
    light = EnvLight(32)
    with torch.no_grad():
        light.base.copy_(torch.rand_like(light.base) * 2)
    kd = torch.rand(mesh.num_vertices, 3).requires_grad_(True)
    nrm = torch.tensor([0.1, 0.0, 1.0]).requires_grad_(True)

    def material(gb, rasterizer):
        return {"kd": r.interpolate(kd, gb.rast, gb.tri)[0], "ks": torch.tensor([0.0, 0.4, 0.2]).expand_as(gb.pos),
                "normal": nrm.expand_as(gb.pos)}
    out = render_mesh(r, mesh, cams, (48, 48), material, light, torch.ones(2, 48, 48, 3), compile=False,
                      shade_chunk=shade_chunk)
    (out["rgb_linear"].square().mean() + out["normal"].mean()).backward()
    return out["rgb_linear"].detach(), out["normal"].detach(), kd.grad, nrm.grad, light.base.grad, pos.grad


def test_chunked_shading_matches_one_call():
    full = _render(0)
    covered = int((full[0] != 1).any(-1).sum())
    assert covered > 700   # several chunks of 256 covered pixels
    for a, b in zip(full, _render(256)):
        assert b is not None and torch.isfinite(b).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shade_chunk_config():
    assert ReconConfig().shade_chunk == 0
    assert ReconConfig.from_dict({"shade_chunk": 65536}).shade_chunk == 65536
    with pytest.raises(ConfigError, match="shade_chunk"):
        ReconConfig.from_dict({"shade_chunk": -1})

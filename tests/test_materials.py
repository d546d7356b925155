"""Hash-grid encoder (against a plain per-level reference), material field, textures, tcnn probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon_kit.model import hashgrid
from recon_kit.model.hashgrid import HashGridEncoder, make_encoder, tcnn_available
from recon_kit.model.materials import MaterialField, Texture2D, TexturedMaterial

PRIMES = (1, 2654435761, 805459861)


def reference_encode(enc: HashGridEncoder, x: torch.Tensor) -> torch.Tensor:
    """Textbook multiresolution hash encoding, level by level and corner by corner, autograd through indexing."""
    feats = []
    size = enc.table.shape[1]
    tables = enc.table.unbind(0)
    bits = torch.tensor([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], device=x.device)  # [8,3]
    for level, res in enumerate(enc.resolutions):
        pos = x * float(res)                                                     # fp32, as tiny-cuda-nn
        cell = torch.clamp(torch.floor(pos), max=res - 1)
        frac = pos - cell
        c = cell.long()[None] + bits[:, None, :]                                 # [8,N,3]
        if (res + 1) ** 3 <= size:
            i = c[..., 0] + c[..., 1] * (res + 1) + c[..., 2] * (res + 1) ** 2
        else:
            i = ((c[..., 0] * PRIMES[0]) ^ (c[..., 1] * PRIMES[1]) ^ (c[..., 2] * PRIMES[2])) % size
        weight = torch.where(bits[:, None, :].bool(), frac[None], 1.0 - frac[None]).prod(-1)   # [8,N]
        rows = tables[level][i.reshape(-1)].view(8, -1, tables[level].shape[-1])
        feats.append((weight[..., None] * rows).sum(0))
    return torch.cat(feats, -1)


CONFIGS = [
    dict(),                                                                      # nvdiffrec: 5 dense + 11 hashed
    dict(n_levels=6, n_features=2, log2_table=10, base_res=4, max_res=256),     # heavy collisions
    dict(n_levels=3, n_features=1, log2_table=22, base_res=16, max_res=2048),   # int64 index arithmetic
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_hashgrid_matches_reference_forward_and_backward(cfg):
    torch.manual_seed(0)
    enc = HashGridEncoder(**cfg)
    with torch.no_grad():
        enc.table.uniform_(-1.0, 1.0)
    x = torch.rand(300, 3)
    x[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.999999, 1e-7, 0.25]])
    out = enc(x)
    ref = reference_encode(enc, x)
    assert out.shape == (300, enc.n_output_dims)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    g = torch.randn_like(out)
    (grad_ours,) = torch.autograd.grad((out * g).sum(), enc.table)
    (grad_ref,) = torch.autograd.grad((ref * g).sum(), enc.table)
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-5, rtol=1e-5)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward while ``fn()`` runs (each storage once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_hashgrid_point_chunks_match_and_keep_positions_only():
    """Above ``point_chunk`` points the encoder runs in chunks and looks the corners up again in the backward:
    the same features and table gradient, and ~12 bytes a point kept instead of ~1 KB."""
    torch.manual_seed(0)
    kept = HashGridEncoder(n_levels=8, log2_table=14, max_res=512, point_chunk=0)
    chunked = HashGridEncoder(n_levels=8, log2_table=14, max_res=512, point_chunk=1000)
    with torch.no_grad():
        kept.table.uniform_(-1.0, 1.0)
    chunked.load_state_dict(kept.state_dict())
    x = torch.rand(4321, 3)
    g = torch.randn(4321, kept.n_output_dims)
    out_kept, bytes_kept = _saved_bytes(lambda: kept(x))
    out_chunked, bytes_chunked = _saved_bytes(lambda: chunked(x))
    torch.testing.assert_close(out_chunked, out_kept, atol=0, rtol=0)
    (grad_kept,) = torch.autograd.grad((out_kept * g).sum(), kept.table)
    (grad_chunked,) = torch.autograd.grad((out_chunked * g).sum(), chunked.table)
    torch.testing.assert_close(grad_chunked, grad_kept, atol=1e-6, rtol=1e-5)
    points = x.numel() // 3
    assert bytes_kept >= points * 8 * 8 * 8                       # int32 rows + fp32 weights, 8 corners, 8 levels
    assert bytes_chunked - chunked.table.untyped_storage().nbytes() <= points * 12 + 4096


@pytest.mark.gpu
def test_hashgrid_cuda_eager_and_compiled_match_reference():
    torch.manual_seed(0)
    eager = HashGridEncoder(device="cuda", compile=False)
    with torch.no_grad():
        eager.table.uniform_(-1.0, 1.0)
    compiled = HashGridEncoder(device="cuda")                                   # compiles by default on CUDA
    compiled.load_state_dict(eager.state_dict())
    x = torch.rand(20000, 3, device="cuda")
    grid_x = torch.randint(0, 1024, (20000, 3), device="cuda") / 1024.0        # x * res exact in fp32
    for points, enc, tol in ((x, eager, 1e-5), (grid_x, compiled, 1e-5), (x, compiled, 1e-3)):
        # Random points: the fused kernel may contract x * res - floor(x * res) into an FMA, which moves the
        # trilinear weights by up to one ulp of x * res (2.4e-4 at res 4096).
        ref = reference_encode(eager, points)
        g = torch.randn_like(ref)
        (grad_ref,) = torch.autograd.grad((ref * g).sum(), eager.table)
        out = enc(points)
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
        (grad,) = torch.autograd.grad((out * g).sum(), enc.table)
        torch.testing.assert_close(grad, grad_ref, atol=10 * tol, rtol=10 * tol)  # atomics: order varies
    assert compiled._compiled is not None and compiled._compiled[0] is not hashgrid._gather


def test_hashgrid_layout_and_options():
    enc = HashGridEncoder()
    assert enc.resolutions[0] == 16 and enc.resolutions[-1] == 4096
    assert math.isclose(enc.per_level_scale, math.exp(math.log(256) / 15))
    assert enc.n_dense == sum((r + 1) ** 3 <= 2 ** 19 for r in enc.resolutions) == 5
    assert enc.table.shape == (16, 2 ** 19, 2)
    x = torch.rand(2, 5, 3)
    assert enc(x).shape == (2, 5, 32)
    assert enc(torch.rand(0, 3)).shape == (0, 32)
    idx, w = enc.corner_lookup(torch.rand(7, 3))
    assert idx.dtype == torch.int32 and idx.shape == w.shape == (16, 7, 8)
    torch.testing.assert_close(w.sum(-1), torch.ones(16, 7))

    scaled = HashGridEncoder(grad_scale=0.125)
    with torch.no_grad():
        scaled.table.copy_(enc.table)
    x = torch.rand(50, 3)
    enc(x).sum().backward()
    scaled(x).sum().backward()
    torch.testing.assert_close(scaled.table.grad, enc.table.grad * 0.125)
    pos = torch.rand(10, 3, requires_grad=True)
    enc(pos).sum().backward()
    assert pos.grad is None  # positions get no gradient, by design


@pytest.fixture
def one_thread():
    """Tiny tensors: a second thread only adds barriers (and stalls badly on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hashgrid_fits_a_function_with_adam(one_thread):
    torch.manual_seed(0)
    enc = HashGridEncoder(n_levels=6, log2_table=12, base_res=4, max_res=64)
    head = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam([{"params": enc.parameters(), "lr": 2e-2}, {"params": head.parameters(), "lr": 1e-2}])

    def target(p: torch.Tensor) -> torch.Tensor:
        return torch.sin(6 * p[:, :1]) * torch.cos(4 * p[:, 1:2]) + p[:, 2:3] ** 2

    x_val = torch.rand(1024, 3)
    loss0 = ((head(enc(x_val)) - target(x_val)) ** 2).mean().item()
    for _ in range(100):
        x = torch.rand(1024, 3)
        loss = ((head(enc(x)) - target(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        val = ((head(enc(x_val)) - target(x_val)) ** 2).mean().item()
    assert val < 1e-3 < loss0


def test_tcnn_probe_is_false_here_and_crash_safe(monkeypatch):
    tcnn_available.cache_clear()
    try:
        assert tcnn_available() is False
        # Force the subprocess probe: the child fails (no tinycudann / no CUDA) and we still just get False.
        monkeypatch.setattr(hashgrid.torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(hashgrid.importlib.util, "find_spec", lambda name: object())
        tcnn_available.cache_clear()
        assert tcnn_available(timeout=60.0) is False
    finally:
        monkeypatch.undo()
        tcnn_available.cache_clear()
    assert isinstance(make_encoder("auto", device="cpu"), HashGridEncoder)
    assert isinstance(make_encoder("torch", device="cpu", n_levels=4), HashGridEncoder)
    with pytest.raises(RuntimeError, match="tiny-cuda-nn"):
        make_encoder("tcnn", device="cpu")
    with pytest.raises(ValueError):
        make_encoder("bogus")


def test_material_field_ranges_and_regulariser():
    torch.manual_seed(0)
    aabb = torch.tensor([[-2.0, -1.0, 0.0], [2.0, 1.0, 4.0]])
    field = MaterialField(aabb, encoder="torch", n_levels=4, log2_table=12, max_res=64, ks_min=(0.0, 0.2, 0.0),
                          device="cpu")
    assert [m.bias for m in field.mlp if isinstance(m, torch.nn.Linear)] == [None, None, None]
    with torch.no_grad():
        field.encoder.table.uniform_(-1, 1)
    pos = torch.rand(4, 64, 3) * 6 - 3                                           # partly outside the AABB
    out = field(pos)
    assert set(out) == {"kd", "ks", "normal"} and all(v.shape == (4, 64, 3) for v in out.values())
    assert out["kd"].min() >= 0 and out["kd"].max() <= 1
    assert out["ks"][..., 1].min() >= 0.2
    torch.testing.assert_close(out["normal"].norm(dim=-1), torch.ones(4, 64))
    assert out["normal"][..., 2].min() >= 0
    norm = field.normalized(aabb)
    torch.testing.assert_close(norm, torch.tensor([[0.0, 0, 0], [1, 1, 1]]))

    mask = (torch.rand(4, 64) > 0.5).float()
    masked = field(pos, mask)
    for k in out:
        torch.testing.assert_close(masked[k], out[k] * mask[..., None])

    reg = field.kd_smoothness(pos, mask)
    assert reg.ndim == 0 and reg.item() > 0
    reg.backward()
    assert field.encoder.table.grad is not None and field.encoder.table.grad.abs().sum() > 0
    assert field.kd_smoothness(pos, mask, kd=out["kd"], sigma=0.0).item() < 1e-6       # batch-size rounding only
    torch.manual_seed(1)
    full = field.kd_smoothness(pos, torch.ones(4, 64))
    torch.manual_seed(1)
    unmasked = field.kd_smoothness(pos)
    torch.testing.assert_close(full, unmasked)


class _NearestTexturer:
    """Stand-in rasteriser for texture lookups only: nearest texel, uv (0,0) = first texel row."""

    name = "stub"

    def texture(self, tex, uv, uv_da=None, filter_mode="auto"):
        h, w = tex.shape[1:3]
        col = (uv[..., 0] * w).floor().long() % w
        row = (uv[..., 1] * h).floor().long() % h
        return tex[0][row, col]


def test_texture2d_clamp_sample_and_roundtrip():
    data = np.random.default_rng(0).uniform(-0.5, 1.5, (8, 16, 3)).astype(np.float32)
    tex = Texture2D.from_array(data, vmin=(0, 0, 0), vmax=(1, 1, 1))
    assert tex.data.shape == (1, 8, 16, 3) and tex.resolution == (8, 16) and tex.channels == 3
    tex.clamp_()
    assert tex.data.min() >= 0 and tex.data.max() <= 1
    np.testing.assert_allclose(tex.to_numpy(), np.clip(data, 0, 1))
    assert Texture2D.from_array(np.full((2, 2, 3), 255, np.uint8)).data.max() == 1.0
    uv = torch.tensor([[[[0.01, 0.01], [0.99, 0.99]]]])                          # first and last texel
    s = tex.sample(_NearestTexturer(), uv)
    torch.testing.assert_close(s[0, 0, 0], tex.data[0, 0, 0])
    torch.testing.assert_close(s[0, 0, 1], tex.data[0, -1, -1])
    with pytest.raises(ValueError):
        Texture2D(torch.zeros(2, 4, 4, 3))


def test_textured_material_normalises_normals():
    rng = np.random.default_rng(1)
    kd = rng.uniform(0, 1, (4, 4, 3))
    ks = rng.uniform(0, 1, (4, 4, 3))
    nrm = rng.uniform(-1, 1, (4, 4, 3))
    mat = TexturedMaterial.from_arrays(kd, ks, nrm)
    n = mat.normal.data[0]
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(4, 4))
    assert n[..., 2].min() >= 0 and mat.ks.data[..., 1].min() >= 0.08
    uv = torch.rand(2, 5, 5, 2)
    out = mat(_NearestTexturer(), uv)
    assert all(v.shape == (2, 5, 5, 3) for v in out.values())
    torch.testing.assert_close(out["normal"].norm(dim=-1), torch.ones(2, 5, 5))
    reg = mat.kd_smoothness(_NearestTexturer(), uv, mask=torch.ones(2, 5, 5))
    assert reg.ndim == 0 and reg.item() >= 0

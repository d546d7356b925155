"""Tests for recon_kit.geometry: Kuhn tet grids, marching tets, DMTet, FixedMesh and mesh clean-up."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import trimesh

from recon_kit.model.dmtet import NUM_TRIANGLES, TET_EDGES, DMTet, TetGrid, kuhn_res_for, marching_tets, nvdiffrec_equivalent, sdf_reg_weight, tet_edge_topology
from recon_kit.model.fixed_mesh import FixedMesh
from recon_kit.mesh import clean_mesh, keep_faces, merge_close_vertices, remove_small_components, simplify
from recon_kit.mesh import Mesh, face_normals


def to_trimesh(mesh: Mesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(mesh.v_pos.detach().cpu().numpy(), mesh.t_pos_idx.cpu().numpy(), process=False)


def sphere_dmtet(res: int = 24, radius: float = 0.6) -> DMTet:
    geo = DMTet(res, mesh_scale=2.0)
    geo.init_sdf("sphere", radius=radius)
    return geo


@pytest.mark.parametrize("res", [1, 2, 5])
def test_grid_counts_bbox_orientation(res: int) -> None:
    grid = TetGrid.generate(res)
    n = res
    assert grid.vertices.dtype == torch.float32 and grid.tets.dtype == torch.int64
    assert grid.num_vertices == (n + 1) ** 3 and grid.num_tets == 6 * n ** 3
    assert torch.equal(grid.vertices.min(0).values, torch.full((3,), -0.5))
    assert torch.equal(grid.vertices.max(0).values, torch.full((3,), 0.5))
    v = grid.vertices.double()[grid.tets]
    vol = torch.linalg.det(v[:, 1:] - v[:, :1]) / 6
    assert (vol > 0).all(), "every tet must be positively oriented"
    assert vol.sum().item() == pytest.approx(1.0)
    L = n + 1
    assert grid.unique_edges.shape[0] == 3 * n * L * L + 3 * n * n * L + n ** 3
    assert grid.is_lattice


def test_every_interior_face_shared_by_two_tets() -> None:
    grid = TetGrid.generate(4)
    faces = torch.cat([grid.tets[:, [1, 2, 3]], grid.tets[:, [0, 2, 3]], grid.tets[:, [0, 1, 3]],
                       grid.tets[:, [0, 1, 2]]])
    uniq, counts = torch.unique(torch.sort(faces, 1).values, dim=0, return_counts=True)
    assert set(counts.tolist()) <= {1, 2}
    boundary = uniq[counts == 1]
    on_cube_face = (grid.vertices[boundary].abs() == 0.5).all(1).any(-1)  # one coordinate at +-0.5 for all 3 verts
    assert on_cube_face.all(), "faces used once must lie on the cube boundary"
    assert boundary.shape[0] == 6 * 2 * 4 ** 2


def test_lattice_topology_matches_generic_edges() -> None:
    grid = TetGrid.generate(3)
    edges, tet_edges = tet_edge_topology(grid.tets, grid.num_vertices)
    pairs = torch.sort(grid.tets[:, torch.tensor(TET_EDGES)], -1).values
    assert torch.equal(grid.unique_edges[grid.tet_edges], pairs)
    assert torch.equal(edges[tet_edges], pairs)
    assert grid.unique_edges.shape == edges.shape


def test_resolution_mapping() -> None:
    assert kuhn_res_for(64) == 32 and kuhn_res_for(128) == 64
    sizes = nvdiffrec_equivalent(64)
    assert (sizes.vertices, sizes.tets, sizes.nvdiffrec_res) == (274_625, 1_572_864, 128)
    assert nvdiffrec_equivalent(32).vertices == 35_937
    with pytest.raises(ValueError):
        kuhn_res_for(1)


def test_triangle_table_winding_every_case() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        pos = torch.rand(4, 3, generator=gen, dtype=torch.float64)
        if torch.linalg.det(pos[1:] - pos[:1]) < 0:
            pos = pos[[0, 2, 1, 3]]
        tets = torch.tensor([[0, 1, 2, 3]])
        for case in range(16):
            occ = torch.tensor([(case >> i) & 1 for i in range(4)], dtype=torch.bool)
            mag = torch.rand(4, generator=gen, dtype=torch.float64) + 0.1
            sdf = torch.where(occ, mag, -mag)
            verts, faces = marching_tets(pos, sdf, tets)
            assert faces.shape[0] == NUM_TRIANGLES[case]
            if faces.shape[0] == 0:
                continue
            out_dir = pos[~occ].mean(0) - pos[occ].mean(0)
            assert (face_normals(verts, faces) @ out_dir > 0).all(), f"case {case:04b} winds inwards"


def test_sphere_is_watertight_outward_and_accurate() -> None:
    radius = 0.6
    mesh = sphere_dmtet(24, radius).extract()
    tm = to_trimesh(mesh)
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0
    assert tm.volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.02)
    assert tm.area == pytest.approx(4 * math.pi * radius ** 2, rel=0.02)
    centroids = mesh.v_pos[mesh.t_pos_idx].mean(1)
    assert ((face_normals(mesh.v_pos, mesh.t_pos_idx) * centroids).sum(-1) > 0).all()
    assert torch.allclose(mesh.v_pos.norm(dim=-1), torch.full((mesh.num_vertices,), radius), atol=0.02)


def test_deformed_grid_stays_watertight_and_generic_path_agrees() -> None:
    geo = sphere_dmtet(12)
    with torch.no_grad():
        geo.deform.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(1))
    pos = geo.grid_positions()
    step = (pos - geo.v0 * geo.mesh_scale).abs().max().item()
    assert step <= 0.5 * geo.cell_size + 1e-6
    mesh = geo.extract()
    assert to_trimesh(mesh).is_watertight
    v2, f2 = marching_tets(pos, geo.sdf, geo.tets)
    assert torch.allclose(v2[f2].sum(1).sort(0).values, mesh.v_pos[mesh.t_pos_idx].sum(1).sort(0).values, atol=1e-5)


def test_gradients_reach_sdf_and_deform() -> None:
    geo = sphere_dmtet(8)
    mesh = geo.extract()
    (mesh.v_pos ** 2).sum().backward()
    for p in (geo.sdf, geo.deform):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_sdf_reg_loss_value_and_gradient() -> None:
    geo = sphere_dmtet(6, radius=0.5)
    loss = geo.sdf_reg_loss()
    s = geo.sdf.detach()
    a, b = s[geo.unique_edges[:, 0]], s[geo.unique_edges[:, 1]]
    m = (a > 0) != (b > 0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(a[m], (b[m] > 0).float()) + bce(b[m], (a[m] > 0).float())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    g = geo.sdf.grad
    assert torch.isfinite(g).all()
    touched = g != 0
    assert touched.any()
    assert (torch.sign(g[touched]) == torch.sign(s[touched])).all(), "descent must pull crossing values to zero"

    geo.init_sdf("sphere", radius=10.0)  # everything inside: no sign change
    empty = geo.sdf_reg_loss()
    assert empty.item() == 0.0 and empty.requires_grad


def test_sdf_reg_weight_schedule() -> None:
    assert sdf_reg_weight(0.0) == pytest.approx(0.2)
    assert sdf_reg_weight(0.125) == pytest.approx(0.105)
    assert sdf_reg_weight(0.25) == pytest.approx(0.01) and sdf_reg_weight(0.9) == pytest.approx(0.01)
    assert DMTet.sdf_reg_weight(0.0, s0=0.5) == pytest.approx(0.5)


def test_random_init_matches_nvdiffrec_range() -> None:
    geo = DMTet(4, generator=torch.Generator().manual_seed(0))
    assert geo.sdf.min() >= -0.1 and geo.sdf.max() < 0.9
    assert torch.equal(geo.deform, torch.zeros_like(geo.deform))
    assert set(geo.state_dict()) == {"sdf", "deform"}


def test_occupancy_init_from_box() -> None:
    lo, hi = torch.tensor([-0.6, -0.3, -0.8]), torch.tensor([0.5, 0.7, 0.2])

    def box(p: torch.Tensor) -> torch.Tensor:
        return ((p >= lo) & (p <= hi)).all(-1).float()

    geo = DMTet(20, mesh_scale=2.1)
    geo.init_sdf_from_occupancy(box)
    mesh = geo.extract()
    assert to_trimesh(mesh).is_watertight
    mlo, mhi = mesh.aabb()
    assert torch.allclose(mlo.detach(), lo, atol=geo.cell_size)
    assert torch.allclose(mhi.detach(), hi, atol=geo.cell_size)
    inside = box(geo.v0 * geo.mesh_scale) > 0.5
    assert ((geo.sdf > 0) == inside).all()

    geo.init_sdf_from_occupancy(box, truncation=2.0)
    assert geo.sdf.abs().max() <= 2.0 + 1e-6  # truncation is in cells
    with pytest.warns(UserWarning):
        geo.init_sdf_from_occupancy(lambda p: torch.zeros(p.shape[0]))


def test_fixed_mesh_laplacian_and_uvs() -> None:
    base = sphere_dmtet(8).extract()
    uv = torch.rand(base.num_vertices, 2)
    fixed = FixedMesh(Mesh(base.v_pos.detach(), base.t_pos_idx, uv, base.t_pos_idx.clone()))
    assert fixed.laplacian(0.0, 1e4).item() == 0.0
    with torch.no_grad():
        fixed.offset.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(0))
    loss = fixed.laplacian(0.25, 1e4)
    assert loss.item() > 0
    assert fixed.laplacian(1.0, 1e4).item() == 0.0
    # geometry.laplace_floor: the weight decays as 1 - t but stays at the floor for the rest of pass 2
    assert fixed.laplacian(0.5, 1e4, floor=0.3).item() == pytest.approx(loss.item() * 0.5 / 0.75)
    assert fixed.laplacian(1.0, 1e4, floor=0.3).item() == pytest.approx(loss.item() * 0.3 / 0.75)
    assert fixed.laplacian(0.9, 1e4, floor=0.3).item() == pytest.approx(loss.item() * 0.3 / 0.75)
    loss.backward()
    assert fixed.offset.grad.abs().sum() > 0
    mesh = fixed.mesh()
    assert torch.allclose(mesh.v_pos, fixed.v_init + fixed.offset) and mesh.has_uv
    assert torch.equal(mesh.v_tex, uv)


def test_remove_small_components_and_merge() -> None:
    big = trimesh.creation.icosphere(subdivisions=3)
    small = trimesh.creation.icosphere(subdivisions=0, radius=0.1)
    small.apply_translation([3.0, 0.0, 0.0])
    both = trimesh.util.concatenate([big, small])
    mesh = Mesh(torch.tensor(both.vertices, dtype=torch.float32), torch.tensor(both.faces))
    kept = remove_small_components(mesh, 0.05)
    assert kept.num_faces == len(big.faces) and kept.num_vertices == len(big.vertices)

    soup = trimesh.Trimesh(big.vertices[big.faces].reshape(-1, 3), np.arange(len(big.faces) * 3).reshape(-1, 3),
                           process=False)  # every face has its own vertices
    merged = merge_close_vertices(Mesh(torch.tensor(soup.vertices, dtype=torch.float32), torch.tensor(soup.faces)))
    assert merged.num_vertices == len(big.vertices) and to_trimesh(merged).is_watertight

    pinched = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1e-9, 0, 0]]),
                   torch.tensor([[0, 1, 2], [0, 3, 2]]))
    assert merge_close_vertices(pinched).num_faces == 1


def test_keep_faces_fills_pinholes_but_not_regions() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    keep = torch.ones(mesh.num_faces, dtype=torch.bool)
    keep[[5, 300]] = False                                   # two pinholes
    assert keep_faces(mesh, keep).num_faces == mesh.num_faces - 2
    assert keep_faces(mesh, keep, fill=1).num_faces == mesh.num_faces
    cap = torch.tensor(sphere.triangles_center[:, 1] > 0.5)  # a cap: a region with a smooth border
    kept = keep_faces(mesh, ~cap, fill=2)
    assert kept.num_faces < mesh.num_faces - 0.8 * int(cap.sum())
    assert kept.num_vertices < mesh.num_vertices             # unused vertices go


@pytest.mark.parametrize("backend", ["torch", pytest.param("nvdiffrast", marks=pytest.mark.gpu)])
def test_visible_faces_drop_a_pocket_inside(backend: str) -> None:
    """A sphere holding a smaller, inward-facing one (a closed pocket, as DMTet grows inside objects): renders
    from around it see every outer face and none of the pocket's."""
    from recon_kit.render import get_rasterizer
    from recon_kit.render.visibility import fibonacci_directions, visible_faces

    if backend == "nvdiffrast" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = "cuda" if backend == "nvdiffrast" else "cpu"

    d = fibonacci_directions(64)
    assert np.allclose(np.linalg.norm(d, axis=1), 1) and abs(d.mean(0)).max() < 0.05
    outer = trimesh.creation.icosphere(subdivisions=3)
    pocket = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    pocket.invert()
    both = trimesh.util.concatenate([outer, pocket])
    mesh = Mesh(torch.tensor(both.vertices, dtype=torch.float32, device=device),
                torch.tensor(both.faces, device=device))
    seen = visible_faces(get_rasterizer(backend), mesh, n_views=24, resolution=128).cpu()
    n_out = len(outer.faces)
    assert seen[:n_out].all() and not seen[n_out:].any()
    assert keep_faces(mesh, seen, fill=2).num_faces == n_out


def test_merge_welds_vertices_where_sdf_is_exactly_zero() -> None:
    geo = DMTet(8, mesh_scale=1.0)
    with torch.no_grad():
        geo.sdf.copy_(0.25 - geo.v0.abs().max(1).values)  # zero exactly on lattice vertices
    mesh = geo.extract()
    welded = merge_close_vertices(mesh)
    assert welded.num_vertices < mesh.num_vertices
    tm = to_trimesh(welded)
    assert tm.is_watertight and tm.volume == pytest.approx(to_trimesh(mesh).volume)


def test_simplify_and_clean() -> None:
    pytest.importorskip("fast_simplification")
    mesh = sphere_dmtet(16).extract()
    mesh = Mesh(mesh.v_pos.detach(), mesh.t_pos_idx)
    small = simplify(mesh, 500)
    assert 300 <= small.num_faces <= 600
    assert to_trimesh(small).volume > 0
    assert simplify(mesh, 10 ** 9) is mesh
    cleaned = clean_mesh(mesh, target_faces=800)
    assert cleaned.num_faces <= 900 and cleaned.v_pos.dtype == torch.float32


@pytest.mark.gpu
def test_extract_on_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = sphere_dmtet(16)
    gpu = sphere_dmtet(16).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = cpu.extract(), gpu.extract()
    assert torch.equal(a.t_pos_idx, b.t_pos_idx.cpu())
    assert torch.allclose(a.v_pos, b.v_pos.cpu(), atol=1e-5)
    (b.v_pos ** 2).sum().backward()
    assert gpu.sdf.grad.abs().sum() > 0 and gpu.sdf_reg_loss().is_cuda


def test_true_indices_match_nonzero_with_one_read():
    from recon_kit.model.dmtet import true_indices

    g = torch.Generator().manual_seed(3)
    masks = [torch.rand(1000, generator=g) > 0.7, torch.zeros(17, dtype=torch.bool), torch.ones(5, dtype=torch.bool),
             torch.rand(1, generator=g) > 2.0]
    for mask, idx in zip(masks, true_indices(*masks)):
        assert torch.equal(idx, torch.nonzero(mask).squeeze(1))

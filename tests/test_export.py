"""OBJ folder / GLB / zip export round trips, UV orientation, overwrite protection and the k3d HTML snapshot."""

import base64
import re
import zipfile
import zlib

import msgpack
import numpy as np
import pygltflib
import pytest
import torch
import trimesh

from recon_kit.io.meshfile import bundle_zip, load_obj_folder, read_hdr, split_uv_seams, write_glb, write_hdr, write_obj_folder
from recon_kit.mesh import Mesh
from recon_kit.viz.mesh import k3d_mesh_plot, probe_panel, save_html, texture_panel

H, W = 32, 48
RED_TOP = np.array([1.0, 0.0, 0.0])
BLUE_BOTTOM = np.array([0.0, 0.0, 1.0])


def _cube_mesh() -> Mesh:
    """Unit cube, one UV island per side in a 3x2 grid (24 UV vertices in a separate index stream)."""
    box = trimesh.creation.box()
    normals = np.asarray(box.face_normals)
    axis = np.abs(normals).argmax(1)
    side = 2 * axis + (normals[np.arange(len(normals)), axis] > 0)
    order = np.argsort(side, kind="stable")
    faces, side = np.asarray(box.faces)[order], side[order]
    v_tex, t_tex = [], []
    for s in range(6):
        u_ax, v_ax = [a for a in range(3) if a != s // 2]
        lookup = {}
        for c in np.unique(faces[side == s]):
            p = box.vertices[c] + 0.5
            lookup[c] = len(v_tex)
            v_tex.append([(s % 3 + 0.1 + 0.8 * p[u_ax]) / 3, (s // 3 + 0.1 + 0.8 * p[v_ax]) / 2])
        t_tex += [[lookup[c] for c in f] for f in faces[side == s]]
    return Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(faces),
                torch.tensor(v_tex, dtype=torch.float32), torch.tensor(t_tex))


def _textures(seed: int = 0):
    rng = np.random.default_rng(seed)
    kd = rng.random((H, W, 3)).astype(np.float32)
    kd[: H // 2] = RED_TOP  # rows near v = 0 are red, the bottom ones blue
    kd[H // 2:] = BLUE_BOTTOM
    ks = rng.random((H, W, 3)).astype(np.float32)
    n = rng.normal(size=(H, W, 3)).astype(np.float32)
    n[..., 2] = np.abs(n[..., 2])
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    probe = np.exp(rng.normal(size=(8, 16, 3))).astype(np.float32)
    return kd, ks, n, probe


@pytest.fixture(scope="module")
def mesh():
    return _cube_mesh()


def test_obj_folder_round_trip(tmp_path, mesh):
    kd, ks, n, probe = _textures()
    folder = write_obj_folder(tmp_path / "mesh", mesh, kd, ks, n, probe)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["mesh.mtl", "mesh.obj", "probe.hdr", "texture_kd.png", "texture_ks.png", "texture_n.png"]
    mtl = (folder / "mesh.mtl").read_text()
    for line in ("map_Kd texture_kd.png", "map_Ks texture_ks.png", "bump texture_n.png", "norm texture_n.png"):
        assert line in mtl
    obj = (folder / "mesh.obj").read_text()
    assert obj.splitlines()[1] == "mtllib mesh.mtl" and re.search(r"^f \d+/\d+/\d+ ", obj, re.M)

    back, tex = load_obj_folder(folder)
    assert torch.allclose(back.v_pos, mesh.v_pos, atol=1e-6)
    assert torch.allclose(back.v_tex, mesh.v_tex, atol=1e-6)
    assert torch.equal(back.t_pos_idx, mesh.t_pos_idx) and torch.equal(back.t_tex_idx, mesh.t_tex_idx)
    np.testing.assert_allclose(tex["ks"], ks, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(tex["normal_ts"], n, atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(tex["kd_linear"], kd, atol=0.01)  # 8-bit sRGB: steps up to ~0.009 in linear
    rgbe_step = probe.max(-1, keepdims=True) / 128  # RGBE: 8-bit mantissas share the largest channel's exponent
    assert np.all(np.abs(tex["probe_latlong"] - probe) <= rgbe_step)


def test_obj_uv_orientation_seen_by_trimesh(tmp_path, mesh):
    """An independent reader must see the top texel rows at small internal v (the OBJ stores 1 - v)."""
    kd, ks, n, _ = _textures()
    write_obj_folder(tmp_path / "mesh", mesh, kd, ks, n)
    tm = trimesh.load(tmp_path / "mesh" / "mesh.obj", process=False)
    colours = trimesh.visual.uv_to_color(tm.visual.uv, tm.visual.material.image)[:, :3] / 255.0
    internal_v = 1.0 - tm.visual.uv[:, 1]
    assert np.allclose(colours[internal_v < 0.45], RED_TOP)
    assert np.allclose(colours[internal_v > 0.55], BLUE_BOTTOM)


def test_refuses_to_overwrite(tmp_path, mesh):
    kd, ks, n, probe = _textures()
    folder = write_obj_folder(tmp_path / "mesh", mesh, kd, ks, n, probe)
    with pytest.raises(FileExistsError, match=r"mesh.*overwrite=True"):
        write_obj_folder(folder, mesh, kd, ks, n)
    write_obj_folder(folder, mesh, kd * 0.5, ks, n, overwrite=True)
    assert not (folder / "probe.hdr").exists()
    assert load_obj_folder(folder)[1]["kd_linear"].max() <= 0.51


def test_hdr_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    for shape in [(7, 200, 3), (3, 5, 3)]:  # run-length scanlines, and flat ones for narrow images
        img = np.exp(rng.normal(size=shape) * 3).astype(np.float32)
        img[0, 0] = 0.0
        back = read_hdr(write_hdr(tmp_path / "p.hdr", img))
        assert back.shape == img.shape
        assert np.all(np.abs(back - img) <= img.max(-1, keepdims=True) / 128)
        assert (back[0, 0] == 0).all()
    assert (tmp_path / "p.hdr").read_bytes().startswith(b"#?RADIANCE\n")


def test_glb_round_trip(tmp_path, mesh):
    kd, ks, n, _ = _textures()
    path = write_glb(tmp_path / "mesh.glb", mesh, kd, ks, n)

    scene = trimesh.load(path)
    (geom,) = scene.geometry.values()
    mat = geom.visual.material
    assert isinstance(mat, trimesh.visual.material.PBRMaterial)
    assert mat.baseColorTexture is not None and mat.metallicRoughnessTexture is not None
    assert mat.normalTexture is not None
    assert mat.baseColorTexture.size == (W, H)
    orm = np.asarray(mat.metallicRoughnessTexture.convert("RGB")) / 255.0
    np.testing.assert_allclose(orm[..., 0], 1.0 - ks[..., 0], atol=0.5 / 255 + 1e-6)  # glTF occlusion, 1 = open
    np.testing.assert_allclose(orm[..., 1:], ks[..., 1:], atol=0.5 / 255 + 1e-6)
    colours = trimesh.visual.uv_to_color(geom.visual.uv, mat.baseColorTexture)[:, :3] / 255.0
    internal_v = 1.0 - geom.visual.uv[:, 1]  # trimesh flips glTF v on load
    assert np.allclose(colours[internal_v < 0.45], RED_TOP)
    assert np.allclose(colours[internal_v > 0.55], BLUE_BOTTOM)
    assert np.isclose(geom.area, 6.0)

    gltf = pygltflib.GLTF2().load(str(path))
    m = gltf.materials[0]
    assert m.occlusionTexture is not None and m.normalTexture is not None
    assert m.occlusionTexture.index == m.pbrMetallicRoughness.metallicRoughnessTexture.index  # one ORM image
    assert len(gltf.images) == 3
    acc = gltf.accessors[gltf.meshes[0].primitives[0].attributes.TEXCOORD_0]
    view = gltf.bufferViews[acc.bufferView]
    raw = np.frombuffer(gltf.binary_blob()[view.byteOffset:view.byteOffset + view.byteLength], np.float32)
    _, uvs, _, _ = split_uv_seams(mesh)
    np.testing.assert_array_equal(raw.reshape(-1, 2), uvs)  # written unflipped


def test_bundle_zip(tmp_path, mesh):
    kd, ks, n, _ = _textures()
    folder = write_obj_folder(tmp_path / "mesh", mesh, kd, ks, n)
    zpath = bundle_zip(folder, tmp_path / "out" / "mesh.zip")
    with zipfile.ZipFile(zpath) as zf:
        assert sorted(zf.namelist()) == sorted(f"mesh/{p.name}" for p in folder.iterdir())
        assert zf.read("mesh/mesh.obj") == (folder / "mesh.obj").read_bytes()


def test_k3d_html_contains_mesh(tmp_path, mesh):
    kd_srgb = np.round(_textures()[0] * 255).astype(np.uint8)
    plot = k3d_mesh_plot(mesh, kd_srgb, show_wireframe=True)
    by_name = {o.name: o for o in plot.objects}
    assert by_name["wireframe"].visible and not by_name["normals"].visible
    path = save_html(plot, tmp_path / "viewer" / "mesh.html")
    html = path.read_text()
    data = re.search(r"var data = '([A-Za-z0-9+/=]+)'", html).group(1)
    snapshot = msgpack.unpackb(zlib.decompress(base64.b64decode(data)))
    (obj,) = [o for o in snapshot["objects"] if o.get("name") == "mesh"]
    positions, uvs, _, _ = split_uv_seams(mesh)
    verts = np.frombuffer(obj["vertices"]["data"], np.float32).reshape(obj["vertices"]["shape"])
    np.testing.assert_array_equal(verts, positions)
    np.testing.assert_array_equal(np.frombuffer(obj["uvs"]["data"], np.float32).reshape(-1, 2), uvs)
    assert obj["texture"]["data"].startswith(b"\x89PNG")
    assert "[K3D_SOURCE]" not in html and len(html) > 100_000  # the library is embedded: works offline


def test_matplotlib_panels():
    kd, ks, n, probe = _textures()
    assert len(texture_panel(kd, ks, n).axes) == 3
    assert len(texture_panel(None, ks, np.round((n + 1) * 127.5).astype(np.uint8)).axes) == 3
    assert probe_panel(probe, exposure=-1).axes[0].images

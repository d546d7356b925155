"""Writing the textured, relightable mesh: nvdiffrec's OBJ folder, a glTF 2.0 binary, and a zip bundle.

Material semantics follow nvdiffrec: ``kd`` is linear base colour; ``ks`` holds (occlusion o, roughness,
metallic) with o a darkening factor applied as ``1 - o``; ``normal_ts`` is a tangent-space normal in [-1, 1].
UVs are in the internal convention ((0, 0) = first texel row, as glTF); only the OBJ stores ``1 - v``.

OBJ folder layout (nvdiffrec ``mesh/``): ``mesh.obj``, ``mesh.mtl``, ``texture_kd.png`` (sRGB 8-bit),
``texture_ks.png`` (linear 8-bit, channels as stored), ``texture_n.png`` (``(n + 1) / 2``) and ``probe.hdr``
(linear lat-long Radiance RGBE, +Y up as nvdiffrec's probe).
"""

from __future__ import annotations


import os
import tempfile
import zipfile
from pathlib import Path
from typing import Union

import imageio.v3 as iio
import numpy as np
import torch

from recon_kit import __version__
from recon_kit.io.images import read_hdr, write_hdr  # noqa: F401
from recon_kit.mesh import Mesh, vertex_normals
from recon_kit.io.files import shareable


from PIL import Image

from recon_kit.color import linear_to_srgb, srgb_to_linear


ArrayLike = Union[np.ndarray, torch.Tensor]


OBJ_NAME, MTL_NAME = "mesh.obj", "mesh.mtl"


KD_NAME, KS_NAME, NORMAL_NAME, PROBE_NAME = "texture_kd.png", "texture_ks.png", "texture_n.png", "probe.hdr"


OUTPUT_NAMES = (OBJ_NAME, MTL_NAME, KD_NAME, KS_NAME, NORMAL_NAME, PROBE_NAME)


def _image(x: ArrayLike, name: str, channels: tuple[int, ...] = (3,)) -> np.ndarray:
    """A float32 ``[H,W,C]`` numpy copy of a texture, checked for shape."""
    a = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if a.ndim != 3 or a.shape[-1] not in channels:
        raise ValueError(f"{name} must be [H,W,C] with C in {channels}, got shape {a.shape}")
    return a.astype(np.float32, copy=False)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _kd_uint8(kd_linear: np.ndarray) -> np.ndarray:
    """8-bit sRGB base colour; a 4th (coverage) channel stays linear, as nvdiffrec writes it."""
    out = kd_linear.copy()
    out[..., :3] = linear_to_srgb(out[..., :3])
    return _to_uint8(out)


def _png_bytes(img: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", img, extension=".png")


def _check_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"refusing to write into the non-empty folder {folder}; "
                              f"pass overwrite=True to replace its mesh files")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def write_obj_folder(folder: str | Path, mesh: Mesh, kd_linear: ArrayLike, ks: ArrayLike, normal_ts: ArrayLike,
                     probe_latlong: ArrayLike | None = None, overwrite: bool = False) -> Path:
    """Write the mesh and its textures in nvdiffrec's ``mesh/`` layout (see the module docstring).

    ``kd_linear`` may carry a 4th coverage channel (kept linear, like nvdiffrec). The OBJ keeps separate position
    and UV index streams and smooth per-position normals. Refuses a non-empty ``folder`` unless
    ``overwrite=True``, which replaces the files above and removes a stale ``probe.hdr``.
    """
    if not mesh.has_uv:
        raise ValueError("the mesh has no UVs (v_tex/t_tex_idx); unwrap and bake it before exporting")
    folder = Path(folder)
    _check_folder(folder, overwrite)
    kd = _image(kd_linear, "kd_linear", (3, 4))
    ks_img = _image(ks, "ks")
    nrm = _image(normal_ts, "normal_ts")
    probe = None if probe_latlong is None else _image(probe_latlong, "probe_latlong")
    folder.mkdir(parents=True, exist_ok=True)

    with open(folder / OBJ_NAME, "w", encoding="ascii", newline="\n") as fh:
        fh.write(f"# recon-kit {__version__}\nmtllib {MTL_NAME}\ng default\n")
        _write_obj_vertices(fh, mesh, normals=True)
        fh.write("s 1\ng pMesh1\nusemtl defaultMat\n")
        _write_obj_faces(fh, mesh, normals=True)
    (folder / MTL_NAME).write_text(
        "# recon-kit material (nvdiffrec semantics), 8-bit PNG textures:\n"
        f"#   {KD_NAME}: base colour, sRGB\n"
        f"#   {KS_NAME}: linear; R = occlusion factor o (shading uses 1 - o), G = roughness, B = metallic\n"
        f"#   {NORMAL_NAME}: tangent-space normal stored as (n + 1) / 2\n"
        "newmtl defaultMat\nbsdf pbr\nKd 1 1 1\nKs 0 0 0\n"
        f"map_Kd {KD_NAME}\nmap_Ks {KS_NAME}\nbump {NORMAL_NAME}\nnorm {NORMAL_NAME}\n",
        encoding="ascii")
    iio.imwrite(folder / KD_NAME, _kd_uint8(kd))
    iio.imwrite(folder / KS_NAME, _to_uint8(ks_img))
    iio.imwrite(folder / NORMAL_NAME, _to_uint8((nrm + 1.0) * 0.5))
    if probe is not None:
        write_hdr(folder / PROBE_NAME, probe)
    else:
        (folder / PROBE_NAME).unlink(missing_ok=True)
    return folder


def _write_obj_vertices(fh, mesh: Mesh, normals: bool) -> None:
    """OBJ ``v``, ``vt`` (when the mesh has UVs; v flipped to OBJ's bottom-up convention) and, with ``normals``,
    smooth per-position ``vn`` records."""
    np.savetxt(fh, _np(mesh.v_pos).astype(np.float64), fmt="v %.6f %.6f %.6f")
    if mesh.has_uv:
        vt = _np(mesh.v_tex).astype(np.float64)
        np.savetxt(fh, np.stack([vt[:, 0], 1.0 - vt[:, 1]], -1), fmt="vt %.6f %.6f")
    if normals:
        vn = _np(vertex_normals(mesh.v_pos.detach().float(), mesh.t_pos_idx)).astype(np.float64)
        np.savetxt(fh, vn, fmt="vn %.6f %.6f %.6f")


def _write_obj_faces(fh, mesh: Mesh, normals: bool) -> None:
    """OBJ ``f`` records (1-based): ``p/t/n`` with UVs and normals, ``p/t`` with UVs only, else ``p``."""
    fp = _np(mesh.t_pos_idx).astype(np.int64) + 1
    if not mesh.has_uv:
        np.savetxt(fh, fp, fmt="f %d %d %d")
        return
    ft = _np(mesh.t_tex_idx).astype(np.int64) + 1
    if normals:
        np.savetxt(fh, np.stack([fp, ft, fp], -1).reshape(-1, 9), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    else:
        np.savetxt(fh, np.stack([fp, ft], -1).reshape(-1, 6), fmt="f %d/%d %d/%d %d/%d")


def _mtl_maps(mtl_path: Path) -> dict[str, str]:
    """Lower-cased MTL keys of the first material mapped to the file name (last token) they reference."""
    maps: dict[str, str] = {}
    for line in mtl_path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0].lower() in ("map_kd", "map_ks", "bump", "map_bump", "norm"):
            maps.setdefault(parts[0].lower(), parts[-1])
    return maps


def load_obj_folder(folder: str | Path) -> tuple[Mesh, dict[str, np.ndarray]]:
    """Read a folder written by :func:`write_obj_folder` (or nvdiffrec) back into a Mesh and float textures.

    The Mesh keeps the OBJ's separate index streams and has UVs in the internal convention. Textures are
    float32 numpy arrays keyed like :func:`write_obj_folder`'s arguments: ``kd_linear`` (decoded from sRGB),
    ``ks``, ``normal_ts`` (in [-1, 1], not renormalised) and ``probe_latlong`` when the files exist.
    """
    folder = Path(folder)
    obj_path = folder / OBJ_NAME
    if not obj_path.exists():
        raise FileNotFoundError(f"{obj_path} does not exist")
    pos, tex, tris_p, tris_t = [], [], [], []
    mtl_name = MTL_NAME
    for line in obj_path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        key = parts[0]
        if key == "v":
            pos.append(parts[1:4])
        elif key == "vt":
            tex.append(parts[1:3])
        elif key == "mtllib":
            mtl_name = line.split(None, 1)[1].strip()
        elif key == "f":
            corners = [c.split("/") for c in parts[1:]]
            ip = [int(c[0]) for c in corners]
            it = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners]
            for k in range(1, len(corners) - 1):
                tris_p.append((ip[0], ip[k], ip[k + 1]))
                tris_t.append((it[0], it[k], it[k + 1]))
    v = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    vt = np.asarray(tex, dtype=np.float64).reshape(-1, 2)
    fp, ft = np.asarray(tris_p, np.int64).reshape(-1, 3), np.asarray(tris_t, np.int64).reshape(-1, 3)
    fp = np.where(fp < 0, fp + len(v), fp - 1)
    has_uv = len(vt) > 0 and bool((ft != 0).all())
    ft = np.where(ft < 0, ft + len(vt), ft - 1)
    v_tex = torch.tensor(np.stack([vt[:, 0], 1.0 - vt[:, 1]], -1), dtype=torch.float32) if has_uv else None
    mesh = Mesh(torch.tensor(v, dtype=torch.float32), torch.tensor(fp), v_tex,
                torch.tensor(ft) if has_uv else None)

    textures: dict[str, np.ndarray] = {}
    maps = _mtl_maps(folder / mtl_name) if (folder / mtl_name).exists() else {}
    kd_file, ks_file = maps.get("map_kd"), maps.get("map_ks")
    n_file = maps.get("bump") or maps.get("map_bump") or maps.get("norm")
    if kd_file and (folder / kd_file).exists():
        kd = iio.imread(folder / kd_file).astype(np.float32) / 255.0
        kd[..., :3] = srgb_to_linear(kd[..., :3])
        textures["kd_linear"] = kd.astype(np.float32)
    if ks_file and (folder / ks_file).exists():
        textures["ks"] = iio.imread(folder / ks_file)[..., :3].astype(np.float32) / 255.0
    if n_file and (folder / n_file).exists():
        textures["normal_ts"] = iio.imread(folder / n_file)[..., :3].astype(np.float32) / 127.5 - 1.0
    if (folder / PROBE_NAME).exists():
        textures["probe_latlong"] = read_hdr(folder / PROBE_NAME)
    return mesh, textures


def split_uv_seams(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (position, UV) pair, as glTF and WebGL need.

    Returns positions [N,3] float32, UVs [N,2] float32 (internal convention), triangles [F,3] uint32 and, per new
    vertex, the index of its source position [N] (to carry per-position data such as normals).
    """
    if not mesh.has_uv:
        raise ValueError("the mesh has no UVs (v_tex/t_tex_idx)")
    fp, ft = _np(mesh.t_pos_idx).astype(np.int64), _np(mesh.t_tex_idx).astype(np.int64)
    n_tex = max(int(mesh.v_tex.shape[0]), 1)
    keys, inverse = np.unique(fp.reshape(-1) * n_tex + ft.reshape(-1), return_inverse=True)
    src, tex_idx = keys // n_tex, keys % n_tex
    positions = _np(mesh.v_pos).astype(np.float32)[src]
    uvs = _np(mesh.v_tex).astype(np.float32)[tex_idx]
    return positions, uvs, inverse.reshape(-1, 3).astype(np.uint32), src


def write_glb(path: str | Path, mesh: Mesh, kd_linear: ArrayLike, ks: ArrayLike, normal_ts: ArrayLike) -> Path:
    """Write a glTF 2.0 binary with one metallic-roughness material.

    Textures: ``baseColorTexture`` (sRGB; RGBA with alphaMode BLEND when kd has 4 channels), one ORM image shared
    by ``occlusionTexture`` (R = 1 - o, glTF's 1 = unoccluded) and ``metallicRoughnessTexture`` (G = roughness,
    B = metallic), and ``normalTexture`` ((n + 1) / 2). UVs are written unflipped (glTF's (0, 0) is the top-left
    texel, like ours); positions are written in the world frame as they are (no axis swap to glTF's +Y up).
    No TANGENT attribute is written, so viewers derive tangents (MikkTSpace).
    """
    import pygltflib as gl

    kd = _image(kd_linear, "kd_linear", (3, 4))
    ks_img = _image(ks, "ks")
    nrm = _image(normal_ts, "normal_ts")
    positions, uvs, faces, src = split_uv_seams(mesh)
    normals = _np(vertex_normals(mesh.v_pos.detach().float(), mesh.t_pos_idx)).astype(np.float32)[src]
    orm = np.concatenate([1.0 - ks_img[..., :1], ks_img[..., 1:3]], -1)
    images = [_png_bytes(_kd_uint8(kd)), _png_bytes(_to_uint8(orm)), _png_bytes(_to_uint8((nrm + 1.0) * 0.5))]

    blob = bytearray()
    views: list[gl.BufferView] = []

    def add_view(data: bytes, target: int | None) -> int:
        blob.extend(b"\x00" * (-len(blob) % 4))
        views.append(gl.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
        blob.extend(data)
        return len(views) - 1

    accessors = [
        gl.Accessor(bufferView=add_view(positions.tobytes(), gl.ARRAY_BUFFER), componentType=gl.FLOAT,
                    count=len(positions), type=gl.VEC3, min=positions.min(0).tolist(), max=positions.max(0).tolist()),
        gl.Accessor(bufferView=add_view(normals.tobytes(), gl.ARRAY_BUFFER), componentType=gl.FLOAT,
                    count=len(normals), type=gl.VEC3),
        gl.Accessor(bufferView=add_view(uvs.tobytes(), gl.ARRAY_BUFFER), componentType=gl.FLOAT,
                    count=len(uvs), type=gl.VEC2),
        gl.Accessor(bufferView=add_view(faces.reshape(-1).tobytes(), gl.ELEMENT_ARRAY_BUFFER),
                    componentType=gl.UNSIGNED_INT, count=int(faces.size), type=gl.SCALAR),
    ]
    image_objs = [gl.Image(bufferView=add_view(png, None), mimeType="image/png") for png in images]
    material = gl.Material(
        name="defaultMat",
        pbrMetallicRoughness=gl.PbrMetallicRoughness(
            baseColorTexture=gl.TextureInfo(index=0), metallicRoughnessTexture=gl.TextureInfo(index=1),
            metallicFactor=1.0, roughnessFactor=1.0),
        occlusionTexture=gl.OcclusionTextureInfo(index=1, strength=1.0),
        normalTexture=gl.NormalMaterialTexture(index=2, scale=1.0),
        alphaMode=gl.BLEND if kd.shape[-1] == 4 else gl.OPAQUE,
        doubleSided=False,
    )
    gltf = gl.GLTF2(
        asset=gl.Asset(version="2.0", generator=f"recon-kit {__version__}"),
        scene=0, scenes=[gl.Scene(nodes=[0])], nodes=[gl.Node(mesh=0, name="mesh")],
        meshes=[gl.Mesh(name="mesh", primitives=[gl.Primitive(
            attributes=gl.Attributes(POSITION=0, NORMAL=1, TEXCOORD_0=2), indices=3, material=0)])],
        accessors=accessors, bufferViews=views, buffers=[gl.Buffer(byteLength=len(blob))],
        samplers=[gl.Sampler(magFilter=gl.LINEAR, minFilter=gl.LINEAR_MIPMAP_LINEAR,
                             wrapS=gl.CLAMP_TO_EDGE, wrapT=gl.CLAMP_TO_EDGE)],
        images=image_objs, textures=[gl.Texture(sampler=0, source=i) for i in range(len(image_objs))],
        materials=[material],
    )
    gltf.set_binary_blob(bytes(blob))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gltf.save_binary(str(path))
    return path


def bundle_zip(folder: str | Path, zip_path: str | Path) -> Path:
    """Zip ``folder`` (files stored under a top-level ``<folder name>/``) to ``zip_path``, written atomically."""
    folder, zip_path = Path(folder), Path(zip_path)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".tmp", dir=zip_path.parent)
    os.close(fd)
    skip = {zip_path.resolve(), Path(tmp).resolve()}
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.resolve() not in skip):
                zf.write(f, Path(folder.name) / f.relative_to(folder))
        shareable(tmp)
        os.replace(tmp, zip_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return zip_path


def write_obj(path: str | Path, mesh: Mesh, kd_srgb: np.ndarray | None = None) -> Path:
    """Write ``mesh`` as OBJ (UV v flipped to the OBJ convention) with ``<stem>.mtl`` and ``gt_texture.png``
    beside it when a kd texture is given."""
    path = Path(path)
    with open(path, "w", encoding="ascii", newline="\n") as fh:
        if kd_srgb is not None and mesh.has_uv:
            tex_name = "gt_texture.png"
            Image.fromarray(np.asarray(kd_srgb, np.uint8)[..., :3]).save(path.parent / tex_name)
            mtl = path.with_suffix(".mtl")
            mtl.write_text(f"newmtl material0\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nmap_Kd {tex_name}\n")
            fh.write(f"mtllib {mtl.name}\nusemtl material0\n")
        _write_obj_vertices(fh, mesh, normals=False)
        _write_obj_faces(fh, mesh, normals=False)
    return path

"""Tests for recon_kit.data (captures, masks, alignment, transforms.json, ViewSet) and recon_kit.viz.images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from recon_kit import color
from recon_kit.data import align as rk_align
from recon_kit.data import capture as rk_capture
from recon_kit import synth
from recon_kit.data import dataset as rk_dataset
from recon_kit.data import masks as rk_masks
from recon_kit.io import images as rk_images
from recon_kit.io import transforms as rk_transforms
from recon_kit.cameras import AXIS_VIEWS, axis_rig_c2w, focal_from_fov
from recon_kit.io.images import DataError
from recon_kit.data.capture import Similarity
from recon_kit.viz import images


# ------------------------------------------------------------------------------------------------ helpers


def disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def write_capture(root: Path, views=AXIS_VIEWS, size=(64, 64), depth_size=(32, 32), depth_bits: int = 8,
                  alpha: bool = False, depth: bool = True, depth_shift=(0.0, 0.0), depth_scale: float = 1.0,
                  speck: bool = True) -> Path:
    """A capture with a coloured disc on a near-white background per view, and depth discs (0 = background)."""
    (root / "multi_views").mkdir(parents=True, exist_ok=True)
    if depth:
        (root / "depth_renders").mkdir(exist_ok=True)
    W, H = size
    for i, v in enumerate(views):
        m = disc(H, W, W / 2, H / 2, 0.3 * min(W, H))
        rgb = np.full((H, W, 3), 250, np.uint8)
        rgb[m] = (200 - 10 * i, 40, 60)
        img = np.dstack([rgb, m.astype(np.uint8) * 255]) if alpha else rgb
        Image.fromarray(img).save(root / "multi_views" / f"{v}.png")
        if depth:
            w, h = depth_size
            dm = disc(h, w, w / 2 + depth_shift[0] * w, h / 2 + depth_shift[1] * h, 0.3 * min(w, h) * depth_scale)
            dt = np.uint8 if depth_bits == 8 else np.uint16
            d = np.zeros((h, w), dt)
            d[dm] = 100 + i if depth_bits == 8 else 30000 + i
            if speck:
                d[1, 1] = 7
            Image.fromarray(d).save(root / "depth_renders" / f"{v}.png")
    return root


@pytest.fixture
def capture_dir(tmp_path) -> Path:
    return write_capture(tmp_path / "cap")


def assert_names(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    for p in parts:
        assert p in msg, f"{p!r} not in error message: {msg}"


# ------------------------------------------------------------------------------------------------- colour


def test_srgb_linear_roundtrip_numpy_and_torch():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    lin = color.srgb_to_linear(x)
    assert lin.dtype == np.float32
    assert lin[0] == 0 and abs(lin[-1] - 1) < 1e-6 and abs(color.srgb_to_linear(np.float32(0.5)) - 0.21404) < 1e-4
    np.testing.assert_allclose(color.linear_to_srgb(lin), x, atol=1e-5)
    t = torch.tensor(x, requires_grad=True)
    lt = color.srgb_to_linear(t)
    np.testing.assert_allclose(lt.detach().numpy(), lin, atol=1e-6)
    np.testing.assert_allclose(color.linear_to_srgb(lt).detach().numpy(), x, atol=1e-5)
    color.linear_to_srgb(lt).sum().backward()
    assert torch.isfinite(t.grad).all()
    assert color.srgb_to_linear(np.array([0, 255], np.uint8) / 255.0)[1] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ resizing


def test_fit_size_and_resize_nearest_keep_values():
    assert rk_images.fit_size(2048, 2048, 512) == (512, 512)
    assert rk_images.fit_size(200, 100, 64) == (64, 32)
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    up = rk_images.resize_nearest(a, 8, 8)
    assert up.shape == (8, 8) and set(np.unique(up)) == set(np.unique(a)) and up[7, 7] == 15
    down = rk_images.resize_nearest(a, 2, 2)
    assert set(down.ravel()) <= set(a.ravel())
    area = rk_images.resize_area(np.ones((4, 4), np.float32), 2, 2)
    np.testing.assert_allclose(area, 1.0)


# --------------------------------------------------------------------------------------------------- masks


def test_clean_mask_removes_specks_and_fills_holes():
    m = disc(64, 64, 32, 32, 20)
    m[30:34, 30:34] = False  # hole
    m[2, 2] = m[60, 5:7] = True  # specks
    m[5:8, 50:53] = True  # a small blob that survives the opening (9 px < 1% of the disc)
    out = rk_masks.clean_mask(m)
    assert out[32, 32] and not out[2, 2] and not out[60, 5] and not out[6, 51]
    assert rk_masks.mask_iou(out, disc(64, 64, 32, 32, 20)) > 0.97
    keep = rk_masks.clean_mask(m, opening=0, min_component=0, fill_holes=False)
    np.testing.assert_array_equal(keep, m)


def test_mask_from_background_alpha_depth_and_iou():
    rgb = np.full((48, 48, 3), 252, np.uint8)
    m = disc(48, 48, 24, 24, 12)
    rgb[m] = (180, 30, 30)
    assert np.allclose(rk_masks.estimate_background(rgb), 252)
    fg = rk_masks.mask_from_background(rgb)
    assert rk_masks.mask_iou(fg, m) > 0.97
    assert rk_masks.mask_iou(rk_masks.mask_from_alpha(m.astype(np.uint8) * 255), m) == 1.0
    depth = np.zeros((24, 24), np.float32)
    depth[disc(24, 24, 12, 12, 6)] = 3.0
    assert rk_masks.mask_iou(rk_masks.mask_from_depth(depth, (48, 48)), m) > 0.9  # 2x nearest upsampling of a small disc
    assert rk_masks.mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert rk_masks.mask_iou(m, ~m) == 0.0


def test_clean_depth_zeroes_specks_and_fills_holes_with_neighbours():
    d = np.zeros((32, 32), np.float32)
    d[disc(32, 32, 16, 16, 10)] = 5.0
    d[16, 16] = 0.0  # hole
    d[1, 1] = 9.0  # speck
    out = rk_masks.clean_depth(d)
    assert out[1, 1] == 0 and out[16, 16] == 5.0 and out.dtype == np.float32


# ------------------------------------------------------------------------------------------------ capture


def test_load_capture_canonical_views_axis_rig(capture_dir):
    cap = rk_capture.load_capture(capture_dir, progress=False)
    assert cap.names == list(AXIS_VIEWS) and cap.pose_source == "axis rig" and len(cap) == 6
    v = cap["left"]
    assert v.rgb.shape == (64, 64, 3) and v.rgb.dtype == np.uint8 and v.alpha is None
    assert v.depth.shape == (64, 64) and v.depth.dtype == np.float32
    assert set(np.unique(v.depth)) == {0.0, 7.0, 102.0}  # raw 8-bit values, nearest-resized, speck still there
    np.testing.assert_allclose(v.camera.c2w, axis_rig_c2w("left", 3.0))
    assert v.camera.fx == pytest.approx(focal_from_fov(0.85, 64)) and (v.camera.width, v.camera.height) == (64, 64)
    small = rk_capture.load_capture(capture_dir, ["top", "front"], max_size=32, distance=2.0, progress=False)
    assert small.names == ["top", "front"] and small["top"].rgb.shape == (32, 32, 3)
    assert small["top"].camera.width == 32 and small["top"].camera.position[1] == pytest.approx(2.0)


def test_load_capture_16bit_depth_other_size_and_alpha(tmp_path):
    root = write_capture(tmp_path / "c", views=("front", "back"), size=(40, 40), depth_size=(100, 100),
                         depth_bits=16, alpha=True)
    cap = rk_capture.load_capture(root, progress=False)
    assert cap["back"].alpha is not None and cap["back"].depth.shape == (40, 40)
    assert cap["back"].depth.max() == 30001
    masks = rk_masks.compute_masks(cap, "alpha")
    assert masks.mask_source == "alpha" and masks["front"].mask.sum() > 100


def test_capture_with_transforms_and_other_names(tmp_path):
    names = ("cam_a", "cam_b", "cam_c")
    root = write_capture(tmp_path / "c", views=names, size=(60, 40), depth_size=(30, 20))
    frames = [{"file_path": f"./train/{n}", "transform_matrix": axis_rig_c2w(v, 2.0).tolist()}
              for n, v in zip(names[::-1], ("front", "left", "top"))]
    (root / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    cap = rk_capture.load_capture(root, progress=False)
    assert cap.names == ["cam_c", "cam_b", "cam_a"] and cap.pose_source == "transforms.json"
    np.testing.assert_allclose(cap["cam_b"].camera.c2w, axis_rig_c2w("left", 2.0))
    assert cap["cam_a"].camera.camera_angle_x == pytest.approx(0.7)
    assert (cap["cam_a"].camera.width, cap["cam_a"].camera.height) == (60, 40)
    # a photo without a frame: an error by default (issue 16), or warn and skip when asked
    write_capture(root, views=("cam_extra",), size=(60, 40), depth_size=(30, 20))
    with pytest.warns(UserWarning, match="cam_extra"):
        assert "cam_extra" not in rk_capture.load_capture(root, missing="warn", progress=False).names
    with pytest.raises(DataError) as exc:
        rk_capture.load_capture(root, progress=False)
    assert_names(exc, "cam_extra.png", "transforms.json")


def test_resolve_capture_path(capture_dir, tmp_path):
    assert synth.resolve_capture(str(capture_dir), tmp_path / "work") == capture_dir
    with pytest.raises(DataError) as exc:
        synth.resolve_capture(tmp_path / "nope", tmp_path / "work")
    assert_names(exc, "nope", "input_dir")


# ------------------------------------------------------------------------------------------------- errors


def test_error_no_views(tmp_path):
    (tmp_path / "empty" / "multi_views").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        rk_capture.load_capture(tmp_path / "empty")
    assert_names(exc, "no views found", "multi_views/<view>.png")
    assert isinstance(exc.value, ValueError)
    with pytest.raises(DataError, match="does not exist"):
        rk_capture.load_capture(tmp_path / "missing")


def test_error_view_without_depth_when_depth_masks_requested(capture_dir):
    (capture_dir / "depth_renders" / "top.png").unlink()
    with pytest.raises(DataError) as exc:
        rk_capture.load_capture(capture_dir, require_depth=True)
    assert_names(exc, "top.png", "mask_source='alpha'")
    cap = rk_capture.load_capture(capture_dir, progress=False)
    assert cap["top"].depth is None
    with pytest.raises(DataError) as exc:
        rk_masks.compute_masks(cap, "depth")
    assert_names(exc, "top", "depth_renders", "mask_source")
    assert rk_masks.compute_masks(cap, "background")["top"].mask.any()
    with pytest.raises(DataError, match="alpha channel"):
        rk_masks.compute_masks(cap, "alpha")


def test_error_empty_mask(capture_dir):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(capture_dir / "depth_renders" / "back.png")
    cap = rk_capture.load_capture(capture_dir, progress=False)
    with pytest.raises(DataError) as exc:
        rk_masks.compute_masks(cap, "depth")
    assert_names(exc, "empty", str(capture_dir / "depth_renders" / "back.png"), "mask_source")


def test_error_unreadable_image(capture_dir):
    (capture_dir / "multi_views" / "right.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError) as exc:
        rk_capture.load_capture(capture_dir, progress=False)
    assert_names(exc, "right.png", "not a readable image", "re-export")


def test_error_aspect_mismatch(capture_dir):
    Image.fromarray(np.full((32, 48), 100, np.uint8)).save(capture_dir / "depth_renders" / "front.png")
    with pytest.raises(DataError) as exc:
        rk_capture.load_capture(capture_dir, progress=False)
    assert_names(exc, "aspect", "front.png", "64x64", "48x32")


def test_error_non_axis_names_without_transforms(tmp_path):
    root = write_capture(tmp_path / "c", views=("front", "closeup"))
    with pytest.raises(DataError) as exc:
        rk_capture.load_capture(root)
    assert_names(exc, "closeup", "transforms.json", "axis_rig_transforms")


def test_error_transforms_invalid_json_and_missing_intrinsics(capture_dir):
    t = capture_dir / "transforms.json"
    t.write_text('{"camera_angle_x": 0.85, "frames": [],}')
    with pytest.raises(DataError) as exc:
        rk_capture.load_capture(capture_dir)
    assert_names(exc, str(t), "not valid JSON", "trailing commas")
    t.write_text(json.dumps({"frames": [{"file_path": "multi_views/front.png",
                                         "transform_matrix": axis_rig_c2w("front").tolist()}]}))
    with pytest.raises(DataError) as exc:
        rk_transforms.read_transforms(t)
    assert_names(exc, str(t), "intrinsics", "camera_angle_x", "fl_x")
    t.write_text(json.dumps({"camera_angle_x": 1}))
    with pytest.raises(DataError, match="frames"):
        rk_transforms.read_transforms(t)


def test_existing_output_needs_overwrite(capture_dir, tmp_path):
    cap = rk_masks.compute_masks(rk_capture.load_capture(capture_dir, progress=False))
    out = tmp_path / "out"
    rk_dataset.write_dataset(cap, out, [16], progress=False)
    marker = out / "16" / "marker.txt"
    marker.write_text("x")
    with pytest.raises(DataError) as exc:
        rk_dataset.write_dataset(cap, out, [8, 16], progress=False)
    assert_names(exc, str(out / "16"), "overwrite=True")
    assert marker.exists() and not (out / "8").exists()  # nothing written when refused
    with pytest.raises(DataError, match="overwrite=True"):
        rk_dataset.prepare_dataset(capture_dir, out, [16], progress=False)
    rk_dataset.write_dataset(cap, out, [16], overwrite=True, progress=False)
    assert not marker.exists() and (out / "16" / "transforms.json").exists()
    assert not list(out.glob(".*partial"))


# ------------------------------------------------------------------------------------------------ transforms


def test_axis_rig_transforms_structure():
    t = rk_transforms.axis_rig_transforms(0.6, 2.5, views=("front", "top"), file_path="./x/{view}")
    assert t["camera_angle_x"] == 0.6 and [f["file_path"] for f in t["frames"]] == ["./x/front", "./x/top"]
    np.testing.assert_allclose(t["frames"][1]["transform_matrix"], axis_rig_c2w("top", 2.5))
    json.dumps(t)


def test_axis_rig_transforms_reproduce_seed(shoe_dir):
    ref = json.loads((shoe_dir / "reference" / "transforms_seed.json").read_text())
    ours = rk_transforms.axis_rig_transforms()
    assert ours["camera_angle_x"] == ref["camera_angle_x"]
    assert [Path(f["file_path"]).stem for f in ours["frames"]] == [Path(f["file_path"]).stem for f in ref["frames"]]
    for a, b in zip(ours["frames"], ref["frames"]):
        np.testing.assert_array_equal(np.array(a["transform_matrix"]), np.array(b["transform_matrix"]))


def _frame(path: str, view: str = "front", **kw) -> dict:
    return {"file_path": path, "transform_matrix": axis_rig_c2w(view).tolist(), **kw}


def test_read_transforms_nerf_synthetic_without_extension(tmp_path):
    (tmp_path / "train").mkdir()
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "train" / "r_0.png")
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.85,
                                                          "frames": [_frame("./train/r_0", "left")]}))
    (cam,) = rk_transforms.read_transforms(tmp_path / "transforms.json")
    assert cam.name == "r_0" and (cam.width, cam.height) == (40, 20)
    assert cam.fx == pytest.approx(focal_from_fov(0.85, 40)) and cam.fy == pytest.approx(cam.fx)
    assert (cam.cx, cam.cy) == (20.0, 10.0) and cam.meta["file_path"] == tmp_path / "train" / "r_0.png"
    assert cam.meta["depth_file_path"] is None
    np.testing.assert_allclose(cam.c2w, axis_rig_c2w("left"))


def test_read_transforms_ngp_global_and_per_frame_intrinsics(tmp_path):
    for n in ("a", "b"):
        Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / f"{n}.jpg")
    Image.fromarray(np.ones((20, 40), np.uint16)).save(tmp_path / "a_depth.png")
    meta = {"fl_x": 100.0, "fl_y": 110.0, "cx": 41.0, "cy": 19.0, "w": 80, "h": 40,  # intrinsics at 80x40
            "frames": [_frame("a.jpg", depth_file_path="a_depth.png"),
                       _frame("b.jpg", "back", fl_x=50.0, fl_y=50.0, cx=20.0, cy=10.0, w=40, h=20)]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    a, b = rk_transforms.read_transforms(tmp_path / "transforms.json")
    assert (a.width, a.height) == (40, 20)
    assert (a.fx, a.fy, a.cx, a.cy) == pytest.approx((50.0, 55.0, 20.5, 9.5))  # rescaled to the image size
    assert a.meta["depth_file_path"] == tmp_path / "a_depth.png"
    assert (b.fx, b.fy, b.cx, b.cy, b.width) == pytest.approx((50.0, 50.0, 20.0, 10.0, 40))


def test_read_transforms_missing_images_warn_or_error(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "front.png")
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"camera_angle_x": 0.85, "frames": [_frame("front.png"), _frame("gone.png", "back")]}))
    with pytest.warns(UserWarning, match="gone.png"):
        cams = rk_transforms.read_transforms(tmp_path / "transforms.json")
    assert [c.name for c in cams] == ["front"]
    with pytest.raises(DataError) as exc:
        rk_transforms.read_transforms(tmp_path / "transforms.json", missing="error")
    assert_names(exc, "gone.png", "add the image or remove the frame")
    with pytest.raises(ValueError, match="missing must be"):
        rk_transforms.read_transforms(tmp_path / "transforms.json", missing="ignore")


def test_transforms_dict_intrinsics_forms():
    from recon_kit.cameras import Camera
    same = [Camera.from_fov(axis_rig_c2w(v), 0.85, 32, 16, name=v) for v in ("front", "back")]
    t = rk_transforms.transforms_dict(same, ["train/front.png", "train/back.png"])
    assert t["camera_angle_x"] == pytest.approx(0.85) and (t["w"], t["h"]) == (32, 16) and "fl_x" not in t
    off = [Camera(axis_rig_c2w("front"), 30.0, 31.0, 15.0, 8.0, 32, 16), Camera(np.eye(4), 20.0, 20.0, 16, 8, 32, 16)]
    t = rk_transforms.transforms_dict(off, ["a.png", "b.png"])
    assert "camera_angle_x" not in t and t["frames"][1]["fl_x"] == 20.0 and t["frames"][0]["fl_y"] == 31.0


# ------------------------------------------------------------------------------------------------ alignment


def test_similarity_warp_moves_content():
    a = np.zeros((40, 40), bool)
    a[10:14, 10:14] = True
    moved = Similarity(1.0, 0.25, 0.0).warp(a)  # 10 pixels to the right
    assert moved[10:14, 20:24].all() and moved.sum() == 16
    grown = Similarity(2.0, -0.5, -0.5).warp(disc(40, 40, 20, 20, 5))  # scaled about the centre
    assert rk_masks.mask_iou(grown, disc(40, 40, 20, 20, 10)) > 0.9
    assert Similarity().warp(a) is a and Similarity().is_identity


def test_alignment_recovers_shift_and_scale(tmp_path):
    root = write_capture(tmp_path / "c", views=("front", "left"), size=(128, 128), depth_size=(64, 64),
                         depth_shift=(0.08, -0.05), depth_scale=0.85)
    cap = rk_masks.compute_masks(rk_capture.load_capture(root, progress=False))
    fg = rk_masks.foreground_masks(cap)
    before = rk_masks.mask_agreement(cap, fg)
    aligned = rk_align.align_capture(cap, fg, progress=False)
    after = rk_masks.mask_agreement(aligned, fg)
    for n in cap.names:
        assert before[n] < 0.7 and after[n] > 0.95
        sim = aligned[n].similarity
        assert sim.scale == pytest.approx(1 / 0.85, rel=0.03)
        # the depth disc centre (0.58, 0.45) must land on the photo's centre (0.5, 0.5)
        assert sim.scale * 0.58 + sim.tx == pytest.approx(0.5, abs=0.01)
        assert sim.scale * 0.45 + sim.ty == pytest.approx(0.5, abs=0.01)
        assert rk_masks.mask_iou(aligned[n].mask, aligned[n].depth > 0) == 1.0  # depth mask moved with the depth
    # already aligned: identity kept
    root2 = write_capture(tmp_path / "d", views=("front",), size=(64, 64), depth_size=(64, 64), speck=False)
    cap2 = rk_masks.compute_masks(rk_capture.load_capture(root2, progress=False))
    assert rk_align.align_capture(cap2, progress=False)["front"].similarity.scale == pytest.approx(1.0, abs=0.02)


# ------------------------------------------------------------------------------------------ dataset + ViewSet


def test_write_dataset_layout_and_load_viewset(capture_dir, tmp_path):
    cap = rk_masks.compute_masks(rk_capture.load_capture(capture_dir, progress=False))
    out = tmp_path / "out"
    folders = rk_dataset.write_dataset(cap, out, [16, 32], progress=False)
    assert folders == {16: out / "16", 32: out / "32"}
    meta = json.loads((out / "32" / "transforms.json").read_text())
    assert meta["camera_angle_x"] == pytest.approx(0.85) and (meta["w"], meta["h"]) == (32, 32)
    assert meta["recon_kit"]["mask_source"] == "depth" and meta["recon_kit"]["depth_scale"] == 1.0
    for f, v in zip(meta["frames"], AXIS_VIEWS):
        assert f["file_path"] == f"train/{v}.png" and f["depth_file_path"] == f"depth/{v}.png"
        np.testing.assert_allclose(f["transform_matrix"], axis_rig_c2w(v))
        rgba = Image.open(out / "32" / f["file_path"])
        depth = Image.open(out / "32" / f["depth_file_path"])
        assert rgba.mode == "RGBA" and rgba.size == (32, 32)
        assert depth.mode in ("I;16", "I") and depth.size == (32, 32)
        d = np.asarray(depth)
        assert set(np.unique(d)) <= {0, 100 + AXIS_VIEWS.index(v)}  # raw values, speck removed
        alpha = np.asarray(rgba)[..., 3]
        assert ((alpha > 127) == (d > 0)).mean() > 0.97

    vs = rk_dataset.load_viewset(out)  # largest resolution by default
    assert len(vs) == 6 and vs.names == list(AXIS_VIEWS) and vs.rgb_linear.shape == (6, 32, 32, 3)
    assert vs.mask.shape == (6, 32, 32) and vs.depth.shape == (6, 32, 32) and vs.rgb_linear.dtype == torch.float32
    assert vs.mask.min() >= 0 and vs.mask.max() <= 1 and vs.mask[:, 16, 16].eq(1).all()
    srgb = np.asarray(Image.open(out / "32" / "train" / "front.png"))[16, 16, :3] / 255.0
    np.testing.assert_allclose(vs.rgb_linear[0, 16, 16].numpy(), color.srgb_to_linear(srgb), atol=1e-6)
    assert vs.depth[1].max() == 101 and vs.cameras[0].width == 32
    assert vs.cameras[0].fx == pytest.approx(focal_from_fov(0.85, 32))

    v16 = rk_dataset.load_viewset(out, resolution=16)
    assert v16.rgb_linear.shape[1:3] == (16, 16) and v16.cameras[2].width == 16
    v8 = rk_dataset.load_viewset(out / "32", resolution=8)  # no 8/ folder: resampled
    assert v8.rgb_linear.shape == (6, 8, 8, 3) and v8.cameras[0].fx == pytest.approx(focal_from_fov(0.85, 8))
    sub = vs.subset([1, "top"])
    assert sub.names == ["back", "top"] and sub.rgb_linear.shape[0] == 2 and sub.depth.shape[0] == 2
    assert vs.subset(slice(0, 3)).names == ["front", "back", "left"]
    assert vs.subset(torch.tensor([True, False, False, False, False, True])).names == ["front", "bottom"]
    r = vs.resized(16, 8)
    assert r.rgb_linear.shape == (6, 8, 16, 3) and r.mask.shape == (6, 8, 16) and r.cameras[0].height == 8
    assert set(r.depth.unique().tolist()) <= set(vs.depth.unique().tolist())
    assert vs.to("cpu").device.type == "cpu"
    with pytest.raises(DataError, match="transforms"):
        rk_dataset.load_viewset(out, split="test")


def test_depth_values_that_do_not_fit_16_bits_are_scaled_and_restored():
    stored, scale = rk_images._depth_to_uint16([np.array([[0.0, 0.25, 2.5]], np.float32)])
    assert scale == pytest.approx(65535 / 2.5) and stored[0][0, 0] == 0 and stored[0][0, 2] == 65535
    stored, scale = rk_images._depth_to_uint16([np.array([[0, 7, 255]], np.float32)])
    assert scale == 1.0 and stored[0].tolist() == [[0, 7, 255]]


def test_prepare_dataset_one_call(tmp_path):
    root = write_capture(tmp_path / "c", size=(64, 64), depth_size=(32, 32), depth_shift=(0.05, 0.0))
    res = rk_dataset.prepare_dataset(root, tmp_path / "out", [24], align=True, progress=False)
    assert res.folders[24].joinpath("transforms.json").exists() and str(tmp_path / "out" / "24") in str(res)
    assert min(res.iou_after[n] - res.iou_before[n] for n in AXIS_VIEWS) > 0.05 and "after alignment" in str(res)
    meta = json.loads((tmp_path / "out" / "24" / "transforms.json").read_text())
    assert meta["recon_kit"]["alignment"]["front"]["tx"] < 0


# --------------------------------------------------------------------------------------------------- viz


def test_viz_figures_and_tables(capture_dir, tmp_path):
    cap = rk_masks.compute_masks(rk_capture.load_capture(capture_dir, progress=False))
    fg = rk_masks.foreground_masks(cap)
    fig = images.view_grid(cap, fg, path=tmp_path / "fig" / "grid.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 6 * 4 and (tmp_path / "fig" / "grid.png").stat().st_size > 0
    assert len(images.view_grid(cap, columns=("rgb", "overlay")).axes) == 12
    with pytest.raises(ValueError, match="unknown columns"):
        images.view_grid(cap, columns=("normals",))
    before = rk_masks.mask_agreement(cap, fg)
    aligned = rk_align.align_capture(cap, fg, progress=False)
    df = images.iou_table(before, rk_masks.mask_agreement(aligned, fg), aligned)
    assert list(df.index) == list(AXIS_VIEWS) + ["mean"]
    assert {"iou_before", "iou_after", "gain", "scale", "shift_x_px"} <= set(df.columns)
    assert isinstance(images.iou_bar(before, path=tmp_path / "bar.png"), Figure) and (tmp_path / "bar.png").exists()
    folders = rk_dataset.write_dataset(aligned, tmp_path / "out", [16], progress=False)
    assert len(images.rgba_grid(folders[16]).axes) == 6
    t = images.transforms_table(folders[16])
    assert list(t.index) == list(AXIS_VIEWS) and t.loc["front", "z"] == pytest.approx(3.0)
    assert t.loc["top", "fov_x_deg"] == pytest.approx(math.degrees(0.85))

    rgb = np.full((4, 4, 3), 100, np.uint8)
    m, ref = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    m[0, 0] = ref[0, 1] = True
    ov = images.mask_overlay(rgb, m, ref)
    assert ov[0, 0, 0] > ov[0, 0, 2] and ov[0, 1, 2] > ov[0, 1, 0] and ov[3, 3, 0] < 100
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[:4, :, 3] = 255, 255
    comp = images.rgba_on_checkerboard(rgba, tile=2)
    assert (comp[:4] == [255, 0, 0]).all() and comp[4:, :, 0].std() > 0


# --------------------------------------------------------------------------------------------- real capture


@pytest.fixture(scope="module")
def shoe_capture(shoe_dir):
    return rk_masks.compute_masks(rk_capture.load_capture(shoe_dir, max_size=256, progress=False))


def test_shoe_masks_agree_and_alignment_raises_iou(shoe_capture):
    fg = rk_masks.foreground_masks(shoe_capture)
    before = rk_masks.mask_agreement(shoe_capture, fg)
    after = rk_masks.mask_agreement(rk_align.align_capture(shoe_capture, fg, progress=False), fg)
    assert list(before) == list(AXIS_VIEWS)
    for n in AXIS_VIEWS:
        assert 0.8 < before[n] < 0.95, (n, before[n])
        assert after[n] > before[n] + 0.01, (n, before[n], after[n])
    assert np.mean(list(after.values())) > 0.92


def test_shoe_dataset_matches_reference_transforms(shoe_capture, shoe_dir, tmp_path):
    folders = rk_dataset.write_dataset(shoe_capture, tmp_path / "shoe", [64], progress=False)
    ours = json.loads((folders[64] / "transforms.json").read_text())
    ref = json.loads((shoe_dir / "reference" / "transforms_seed.json").read_text())
    assert ours["camera_angle_x"] == pytest.approx(ref["camera_angle_x"], abs=1e-9)
    for a, b in zip(ours["frames"], ref["frames"]):
        assert Path(a["file_path"]).stem == Path(b["file_path"]).stem
        np.testing.assert_allclose(a["transform_matrix"], b["transform_matrix"], atol=1e-12)
    vs = rk_dataset.load_viewset(tmp_path / "shoe", resolution=64)
    assert vs.rgb_linear.shape == (6, 64, 64, 3) and 0.05 < float(vs.mask.mean()) < 0.4
    assert vs.depth is not None and int(vs.depth.max()) == 255


def test_trim_to_photo_removes_only_the_background_rim():
    """A depth mask 3 px larger than the photo's object loses that rim; a white patch inside the object (not
    connected to the outside) and a white object part deeper than the rim are kept."""
    rgb = np.full((60, 60, 3), 255, np.uint8)
    rgb[15:45, 15:45] = (200, 30, 30)                 # the object in the photo
    rgb[25:30, 25:30] = 255                           # a white patch inside it
    rgb[15:45, 40:45] = 250                           # a white part of the object touching the background
    depth_mask = np.zeros((60, 60), bool)
    depth_mask[12:48, 12:48] = True                   # 3 px too large on every side
    out = rk_masks.trim_to_photo(depth_mask, rgb, rim_px=4)
    assert not out[12:15].any() and not out[45:48].any() and not out[:, 12:15].any()
    assert out[15:45, 15:40].all()                    # the object and its inner white patch stay
    assert out[20:40, 40:44].all() and not out[20:40, 44:48].any()   # white part: only the rim (4 px) goes
    assert rk_masks.trim_to_photo(depth_mask, rgb, rim_px=0) is not None
    assert (rk_masks.trim_to_photo(depth_mask, rgb, rim_px=0) == depth_mask).all()


def test_prepare_dataset_trims_masks_and_says_how_much(capture_dir, tmp_path):
    res = rk_dataset.prepare_dataset(capture_dir, tmp_path / "data", [32], progress=False, trim_px=8)
    assert any("mask pixels trimmed" in n for n in res.notes)


def test_opencv_morphology_matches_scipy():
    """The masks' OpenCV erosion and opening and the labelled hole filling give scipy.ndimage's results exactly."""
    from scipy import ndimage as ndi

    from recon_kit.data.masks import binary_erode, binary_open

    rng = np.random.default_rng(0)
    for shape in [(64, 80), (257, 130)]:
        m = rng.random(shape) > 0.4
        m[:, 0] = m[0, :] = True                      # foreground on the border: erosion must eat it
        for it in (1, 3, 8):
            assert (binary_erode(m, it) == ndi.binary_erosion(m, iterations=it)).all()
            assert (binary_open(m, it) == ndi.binary_opening(m, structure=np.ones((3, 3), bool), iterations=it)).all()
        assert (binary_erode(m.astype(np.float32) * 0.5, 2) == ndi.binary_erosion(m, iterations=2)).all()
        for p in (0.3, 0.6):                          # holes of every size, some touching the border
            holey = ndi.binary_opening(rng.random(shape) > p)
            assert (rk_masks.fill_holes(holey) == ndi.binary_fill_holes(holey)).all()
    empty = np.zeros((0, 5), bool)
    assert binary_erode(empty).shape == binary_open(empty).shape == rk_masks.fill_holes(empty).shape == (0, 5)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        binary_erode(m, 0)


def test_map_views_keeps_order_and_raises():
    """Per-view work runs in threads, results in the views' order; a failing view's exception reaches the caller."""
    from recon_kit.data.capture import map_views

    assert map_views(lambda x: x * x, range(10), "squares", progress=False) == [x * x for x in range(10)]
    assert map_views(lambda x: x, [], "nothing", progress=False) == []

    def bad(x):
        if x == 3:
            raise ValueError("view 3 is broken")
        return x

    with pytest.raises(ValueError, match="view 3"):
        map_views(bad, range(6), "views", progress=False)

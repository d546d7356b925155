"""The synthetic quality benchmark: objects with ground truth rendered in the user's capture format,
reconstructed, and scored next to the visual-hull and fused-depth baselines of the same capture.

Per object (``spot`` and ``bob`` from ``../shared/assets``, ``demo`` from :func:`recon_kit.synth.demo_object`):

1. :func:`render_object` renders the capture as the user's: the 6 axis views at ``res``², 8-bit depth maps at
   ``res/2`` (:func:`recon_kit.synth.encode_depth_uint8`: unknown encoding to the kit), ``n_test`` random
   held-out views; then :func:`recon_kit.data.dataset.prepare_dataset` prepares it at ``res``.
2. :func:`baselines` scores the visual hull of the masks, the fused depth maps (:mod:`recon_kit.model.fusion`)
   and the depth bound (:func:`depth_bound_mesh`: what the depth maps can give at best, since no view sees
   every part of an object).
3. :func:`reconstruct` trains with a preset plus overrides, once per ``geometry.init`` asked for, and scores the
   exported mesh and the held-out views.

The shoe part (:func:`run_shoe`) runs variants of a real capture (the user's shoe) side by side, each a run,
and reports what there is without ground truth: 6-view PSNR / SSIM / IoU under the learned cameras and under the
cameras as written, the depth residual, the fringe score of views between the training views, the per-view
camera corrections, phase times and peak memory.

Geometry scores (:func:`recon_kit.evaluate.chamfer_fscore` against ``gt_surface.obj``, the outer surface of
``gt_mesh.obj``: :func:`gt_surface`): Chamfer-L1 in % of the GT bounding-box diagonal, F-score at 1 % of the diagonal (with precision and recall), normal consistency. Image
scores: mean held-out PSNR / SSIM / silhouette IoU (:func:`recon_kit.runs.run.finish` on the test split).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh

from recon_kit import evaluate, synth
from recon_kit.autoscale import fit_mesh_scale
from recon_kit.config import resolve
from recon_kit.data.dataset import load_viewset, prepare_dataset
from recon_kit.mesh import Mesh, load_mesh, normalize_to_unit
from recon_kit.model import fusion, hull
from recon_kit.render import get_rasterizer
from recon_kit.runs.run import train_from_config

#: Objects the benchmark knows; spot and bob need ``../shared/assets``.
OBJECTS: tuple[str, ...] = ("spot", "bob", "demo")
#: Metrics every row carries (the CI test checks they are finite).
GEOMETRY_KEYS: tuple[str, ...] = ("chamfer_l1_pct", "fscore", "precision", "recall", "normal_consistency")
IMAGE_KEYS: tuple[str, ...] = ("test_psnr", "test_ssim", "test_iou")


@dataclass
class BenchSettings:
    """What one benchmark run does; ``overrides`` are flat config keys (``{"pass1.iterations": 2000}``)."""

    res: int = 128
    preset: str = "cpu-small"
    overrides: dict = field(default_factory=dict)
    inits: tuple[str, ...] = ("hull",)
    n_test: int = 24
    baseline_res: int = 96
    n_points: int = 50_000
    device: str = "cpu"
    seed: int = 0
    reconstruct: bool = True


def object_mesh(name: str, shared_dir: str | Path | None = None, radius: float = 0.8) -> tuple[Mesh, np.ndarray]:
    """The textured GT mesh of ``demo`` or ``bob`` (centred, half-extent ``radius``) and its kd texture (sRGB
    uint8); spot is rendered by :func:`recon_kit.synth.spot_capture`, which also turns it to face +z."""
    from PIL import Image

    if name == "demo":
        return synth.demo_object(radius=radius)
    if name != "bob":
        raise ValueError(f"object_mesh knows demo and bob, got {name!r}; benchmark objects: {', '.join(OBJECTS)}")
    path = _asset_dir(shared_dir, name) / "bob_tri.obj"
    mesh, kd = load_mesh(path)
    if kd is None:
        kd = np.asarray(Image.open(path.parent / "bob_diffuse.png").convert("RGB"))
    v_pos, _, _ = normalize_to_unit(mesh.v_pos, radius)
    return mesh.with_positions(v_pos), kd


def _asset_dir(shared_dir: str | Path | None, name: str) -> Path:
    folder = (Path(shared_dir) if shared_dir is not None else synth.SHARED_DIR) / "assets" / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found; pass --shared (the folder holding assets/) or bench 'demo' only")
    return folder


def depth_resolution(res: int) -> int:
    """Side of a benchmark capture's depth maps for ``res``² photos: half, as in the user's capture."""
    return max(16, res // 2)


def render_object(name: str, folder: str | Path, res: int, n_test: int = 24, seed: int = 0, device: str = "cpu",
                  shared_dir: str | Path | None = None) -> Path:
    """Render ``name``'s capture into ``folder/capture`` and prepare it into ``folder/data/<res>``; returns the
    prepared dataset folder (both steps are skipped when their outputs exist, so reruns reuse the capture)."""
    folder = Path(folder)
    cap = folder / "capture"
    if name not in OBJECTS:
        raise ValueError(f"unknown benchmark object {name!r}; objects: {', '.join(OBJECTS)}")
    if not (cap / "multi_views").is_dir():
        kw = {"resolution": res, "depth_resolution": depth_resolution(res), "n_test": n_test, "seed": seed,
              "device": device, "overwrite": True}
        if name == "spot":
            synth.spot_capture(cap, spot_dir=_asset_dir(shared_dir, "spot"), **kw)
        else:
            synth.render_capture(*object_mesh(name, shared_dir), cap, **kw)
    dataset = folder / "data" / str(res)
    if not (dataset / "transforms.json").is_file():
        prepare_dataset(cap, folder / "data", [res], progress=False)
    return dataset


def gt_surface(gt_path: str | Path) -> Path:
    """The surface the benchmark scores against: ``gt_surface.obj`` beside ``gt_path``, the GT mesh's outer
    surface (:func:`recon_kit.evaluate.outer_surface`; the demo object's sunk half-handle is 8 % of its mesh's
    area and lies inside its body), written on first use and reused while newer than the GT mesh."""
    gt_path = Path(gt_path)
    out = gt_path.with_name("gt_surface.obj")
    if not out.is_file() or out.stat().st_mtime < gt_path.stat().st_mtime:
        evaluate.outer_surface(gt_path).export(out)
    return out


def geometry_scores(mesh_path: str | Path | trimesh.Trimesh, gt_path: str | Path, n_points: int) -> dict:
    """Chamfer-L1 (% of the GT diagonal), F-score@1 %, precision, recall, normal consistency of a mesh (file)
    against the outer surface of the GT mesh at ``gt_path`` (:func:`gt_surface`)."""
    g = evaluate.chamfer_fscore(mesh_path, gt_surface(gt_path), n_points=n_points)
    return {"chamfer_l1_pct": 100.0 * g["chamfer_l1"], "fscore": g["fscore"], "precision": g["precision"],
            "recall": g["recall"], "normal_consistency": g["normal_consistency"]}


def depth_bound_mesh(gt_path: str | Path, cameras, depth_res: int, device: str = "cpu",
                     max_edge_px: float = 6.0) -> trimesh.Trimesh:
    """The GT surface as the capture's depth maps see it at best: each training camera's exact (unquantised)
    depth at the depth maps' resolution, back-projected through the pixel centres and triangulated on the pixel
    grid (one sheet per view; no triangle across a depth jump longer than ``max_edge_px`` pixel footprints).

    Its Chamfer distance to the GT bounds what depth supervision can give: surface that no training view sees
    stays missing (recall), and the half-resolution sampling costs accuracy, before any 8-bit quantisation or
    encoding fit. Triangulated rather than left as points, so the bound does not depend on the points' spacing.
    """
    mesh, _ = load_mesh(gt_path)
    cams = [c.resized(depth_res, depth_res) for c in cameras]
    depth = synth.render_depth(get_rasterizer("auto", device), mesh.to(device), cams)
    H = W = depth_res
    ij = np.arange(H * W).reshape(H, W)
    quads = np.stack([ij[:-1, :-1], ij[:-1, 1:], ij[1:, :-1], ij[1:, 1:]], -1).reshape(-1, 4)
    grid = np.concatenate([quads[:, [0, 2, 1]], quads[:, [1, 2, 3]]])   # counter-clockwise seen from the camera
    sheets = []
    for cam, d in zip(cams, depth):
        origin, dirs = hull.camera_rays(cam)
        d = d.reshape(-1).astype(np.float64)
        v = origin.double().numpy() + dirs.double().numpy() * d[:, None]
        tri = grid[(d[grid] > 0).all(1)]
        edge = np.linalg.norm(v[tri] - v[np.roll(tri, 1, axis=1)], axis=-1).max(1)
        footprint = d[tri].max(1) / cam.fx
        sheet = trimesh.Trimesh(v, tri[edge <= max_edge_px * footprint], process=False)
        sheet.remove_unreferenced_vertices()
        sheets.append(sheet)
    return trimesh.util.concatenate(sheets)


def baselines(dataset: str | Path, gt_path: str | Path, out: str | Path, mesh_scale: float | str, res: int = 96,
              n_points: int = 50_000, device: str = "cpu", depth_res: int | None = None) -> dict[str, dict]:
    """Score the visual hull of the masks and the fused depth maps of a prepared dataset against the GT;
    their meshes are written to ``out/hull.obj`` and ``out/fused_depth.obj``; ``mesh_scale="auto"`` is fitted to
    the hull of the masks. With ``depth_res`` (the depth maps' side) and depth maps, also the depth bound
    (:func:`depth_bound_mesh`, written to ``out/depth_bound.obj``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    views = load_viewset(dataset, device=device)
    if mesh_scale == "auto":
        mesh_scale = fit_mesh_scale(views.cameras, views.mask).mesh_scale
    t0 = time.perf_counter()
    carved = hull.carve(views.cameras, views.mask, bounds=mesh_scale, res=res, device=device)
    meshes = {"hull": fusion.occupancy_mesh(carved.occupancy_fn, carved.bounds, res - 1, device=device)}
    t_hull = time.perf_counter() - t0
    rows: dict[str, dict] = {}
    if views.depth is not None:
        t0 = time.perf_counter()
        fused = fusion.fuse_viewset(views, mesh_scale, res=res)
        meshes["fused_depth"] = fusion.occupancy_mesh(fused.occupancy_fn, fused.bounds, res - 1, device=device)
        t_fused = time.perf_counter() - t0
        (out / "depth_fits.json").write_text(json.dumps([f.to_dict() for f in fused.fits], indent=2))
    for name, mesh in meshes.items():
        path = out / f"{name}.obj"
        mesh.export(path)
        rows[name] = {"method": name, **geometry_scores(path, gt_path, n_points),
                      "seconds": t_hull if name == "hull" else t_fused, "faces": len(mesh.faces)}
    if views.depth is not None and depth_res is not None:
        t0 = time.perf_counter()
        bound = depth_bound_mesh(gt_path, views.cameras, depth_res, device)
        bound.export(out / "depth_bound.obj")
        rows["depth_bound"] = {"method": "depth_bound", **geometry_scores(bound, gt_path, n_points),
                               "seconds": time.perf_counter() - t0, "faces": len(bound.faces)}
    return rows


def reconstruct(dataset: str | Path, gt_path: str | Path, run_dir: str | Path, settings: BenchSettings,
                init: str) -> dict:
    """Train on ``dataset`` with the settings' preset and overrides and ``geometry.init = init``; score it."""
    overrides = {"data.resolution": settings.res, "snapshot_every": 0, "device": settings.device,
                 "seed": settings.seed, **settings.overrides, "geometry.init": init}
    t0 = time.perf_counter()
    result = train_from_config(settings.preset, dataset, run_dir, overrides, overwrite=True, progress=False)
    row = {"method": f"recon init={init}", **geometry_scores(Path(run_dir) / "mesh" / "mesh.obj", gt_path,
                                                            settings.n_points)}
    row.update({k: result.get(k, math.nan) for k in IMAGE_KEYS})
    row.update({"train_psnr": result.get("train_psnr", math.nan), "faces": result.get("faces"),
                "seconds": time.perf_counter() - t0})
    return row


def bench_object(name: str, out: str | Path, settings: BenchSettings, shared_dir: str | Path | None = None) -> dict:
    """Everything for one object: capture, baselines, reconstructions; writes ``out/<name>/result.json``."""
    folder = Path(out) / name
    t0 = time.perf_counter()
    dataset = render_object(name, folder, settings.res, settings.n_test, settings.seed, settings.device, shared_dir)
    gt_path = folder / "capture" / "gt_mesh.obj"
    cfg = resolve(settings.preset, {"data.resolution": settings.res, **settings.overrides})
    rows = list(baselines(dataset, gt_path, folder / "baselines", cfg.geometry.mesh_scale, settings.baseline_res,
                          settings.n_points, settings.device, depth_resolution(settings.res)).values())
    if settings.reconstruct:
        for init in settings.inits:
            rows.append(reconstruct(dataset, gt_path, folder / f"run_{init}", settings, init))
    result = {"object": name, "rows": [{"object": name, **r} for r in rows],
              "seconds": time.perf_counter() - t0}
    (folder / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _in_processes(fn, args: list, jobs: int) -> list:
    """``fn`` over ``args``, ``jobs`` at once as spawned processes (several runs share one GPU well: the step is
    launch-bound), or in this process when ``jobs`` is 1."""
    if jobs > 1 and len(args) > 1:
        with ProcessPoolExecutor(min(jobs, len(args)), mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(fn, args))
    return [fn(a) for a in args]


def _bench_object_job(args: tuple) -> dict:
    name, out, settings_dict, shared_dir = args
    settings_dict = {**settings_dict, "inits": tuple(settings_dict["inits"])}
    return bench_object(name, out, BenchSettings(**settings_dict), shared_dir)


def run_synth(objects, out: str | Path, settings: BenchSettings, jobs: int = 1,
              shared_dir: str | Path | None = None) -> dict:
    """Benchmark ``objects`` (``jobs`` at once as separate processes) and write ``out/quality.json`` and
    ``out/quality.md``; returns the JSON document."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = [(name, str(out), asdict(settings), shared_dir) for name in objects]
    results = _in_processes(_bench_object_job, args, jobs)
    doc = {"date": time.strftime("%Y-%m-%d"), "device": device_name(settings.device),
           "settings": asdict(settings), "objects": list(objects),
           "rows": [row for r in results for row in r["rows"]]}
    (out / "quality.json").write_text(json.dumps(doc, indent=2, default=float))
    (out / "quality.md").write_text(markdown_table(doc["rows"]) + "\n")
    return doc


def device_name(device: str) -> str:
    """A readable name of the machine the benchmark ran on (GPU model, or CPU with its core count)."""
    import os

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def markdown_table(rows: list[dict]) -> str:
    """One line per object and method: geometry scores and, for reconstructions, held-out image scores."""
    def fmt(v, digits):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    header = ("| object | method | Chamfer-L1 (% diag) | F-score@1% | precision | recall | normal cons. | "
              "held-out PSNR | held-out SSIM | held-out IoU | time (s) |")
    lines = [header, "|---" * 11 + "|"]
    for r in rows:
        lines.append(f"| {r['object']} | {r['method']} | {fmt(r['chamfer_l1_pct'], 3)} | {fmt(r['fscore'], 3)} | "
                     f"{fmt(r['precision'], 3)} | {fmt(r['recall'], 3)} | {fmt(r['normal_consistency'], 3)} | "
                     f"{fmt(r.get('test_psnr'), 2)} | {fmt(r.get('test_ssim'), 3)} | {fmt(r.get('test_iou'), 3)} | "
                     f"{fmt(r.get('seconds'), 0)} |")
    return "\n".join(lines)


def shoe_variant(dataset: str | Path, out: str | Path, preset: str, overrides: dict) -> dict:
    """Train one variant of a real capture into ``out/run`` and write ``out/bench.json`` (phase times, peak
    memory, 6-view scores under the learned and the written cameras, depth residual, fringe score with the
    photos' own, camera corrections) and ``out/novel.png`` (the fringe views)."""
    from recon_kit.runs.run import FRINGE_PNG, finish, new_trainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = resolve(preset, overrides)
    t0 = time.perf_counter()
    views = load_viewset(dataset, resolution=cfg.data.resolution)
    tr = new_trainer(cfg, views, out / "run", overwrite=True)
    cuda = tr.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    seconds = {"setup": time.perf_counter() - t0}
    for phase, steps in (("pass1", cfg.pass1.iterations), ("bake_and_pass2", None)):
        t = time.perf_counter()
        tr.run(steps, progress=False)
        sync()
        seconds[phase] = time.perf_counter() - t
    t = time.perf_counter()
    result = finish(tr, dataset)
    seconds.update(finish=time.perf_counter() - t, bake=tr.timings["bake"], total=time.perf_counter() - t0)
    shutil.copyfile(out / "run" / FRINGE_PNG, out / "novel.png")    # finish() rendered the fringe views
    quality = ("fringe", "fringe_photos", "fringe_views", "camera_corrections", "written_psnr")
    bench = {"variant": out.name, "overrides": overrides, "preset": preset, "device": device_name(str(tr.device)),
             "seconds": seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
             "faces": result["faces"], **{k: v for k, v in result.items() if k.startswith("train_")},
             **{k: result[k] for k in quality if k in result}}
    (out / "bench.json").write_text(json.dumps(bench, indent=2, default=float))
    return bench


def _shoe_job(args: tuple) -> dict | None:
    """One variant with its log in ``<out>.log``; ``None`` (and the error in the log) when it fails."""
    dataset, out, preset, overrides = args
    handler = logging.FileHandler(f"{out}.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    root = logging.getLogger("recon_kit")
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        return shoe_variant(dataset, out, preset, overrides)
    except Exception:  # noqa: BLE001 - a failed variant is reported, the others still run
        root.exception("variant %s failed", Path(out).name)
        return None
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def run_shoe(dataset: str | Path, out: str | Path, variants: dict[str, dict], preset: str = "gpu-default",
             jobs: int = 1) -> list[dict]:
    """Run each variant (name -> config overrides) of a prepared real capture with :func:`shoe_variant`, ``jobs``
    at once, into ``out/<name>/`` (log in ``out/<name>.log``); write ``out/summary.json`` and
    ``out/summary.md`` and return the finished variants' rows (a failed variant is reported, not raised)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = [(str(dataset), str(out / name), preset, over) for name, over in variants.items()]
    rows = []
    for name, row in zip(variants, _in_processes(_shoe_job, args, jobs)):
        print(f"{name}: done" if row is not None else f"{name}: FAILED; see {out / (name + '.log')}", flush=True)
        rows += [row] if row is not None else []
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=float))
    (out / "summary.md").write_text(shoe_table(rows) + "\n")
    return rows


def shoe_table(rows: list[dict]) -> str:
    """One line per variant: 6-view PSNR (learned / written cameras), SSIM, IoU, depth residual, fringe."""
    cols = [("variant", "{}"), ("train_psnr", "{:.2f}"), ("written_psnr", "{:.2f}"), ("train_ssim", "{:.4f}"),
            ("train_iou", "{:.4f}"), ("train_depth_residual", "{:.4f}"), ("fringe", "{:.4f}"),
            ("fringe_photos", "{:.4f}"), ("faces", "{}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " | total s |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = [fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in cols]
        lines.append("| " + " | ".join(cells) + f" | {r['seconds']['total']:.0f} |")
    return "\n".join(lines)

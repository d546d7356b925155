"""A run folder: train into it (:func:`new_trainer`, :func:`finish`, :func:`train_from_config`) and load a finished one
back without the Trainer (:func:`load_run`: mesh, textures, light, config, metrics and history).

A run folder (see :mod:`recon_kit.runs.folder` and :meth:`recon_kit.train.trainer.Trainer.export`) holds ``config.json``,
``metrics.json``, ``history.jsonl`` and ``mesh/`` (``mesh.obj`` + textures + ``probe.hdr``); :func:`finish` adds
``fringe.png`` and, with ``cameras.refine``, ``cameras_corrected.json`` (:func:`quality_outputs`).
:func:`load_run` reads them into a :class:`Run` that notebook 04 re-renders (:mod:`recon_kit.viz.turntable`),
measures (:func:`mesh_facts`, :func:`evaluate_against_gt`) and shows (:func:`recon_kit.runs.table.metrics_table`).
Results are merged into the run's ``metrics.json`` (:func:`recon_kit.runs.folder.write_metrics_json`).

"""

from __future__ import annotations


import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon_kit.config import ReconConfig, resolve
from recon_kit.io.images import DataError
from recon_kit.data.dataset import ViewSet, load_viewset
from recon_kit.color import linear_to_srgb
from recon_kit.render.envlight import EnvLight


from collections.abc import Mapping
from dataclasses import field
from typing import Any


from recon_kit.io.meshfile import load_obj_folder
from recon_kit.mesh import Mesh
from recon_kit.train.trainer import Trainer
from recon_kit.runs.folder import _read_history, read_json


def new_trainer(cfg: ReconConfig, views: ViewSet, run_dir: str | Path | None, resume: bool = False,
                overwrite: bool = False, allow_changes: bool = False, inputs: dict | None = None) -> Trainer:
    """A trainer writing into ``run_dir`` (created now; never silently overwritten), resumed when asked.

    The process holds ``run_dir``'s lock from here on (:mod:`recon_kit.io.locking`; released by
    ``trainer.run_lock.release()`` or at exit). ``inputs`` (dataset, config, ...) are never cleared by ``overwrite``.
    A resume with settings other than the saved ones is refused unless ``allow_changes``.
    """
    from recon_kit.io import locking
    from recon_kit.io.fsio import check_writable
    from recon_kit.runs.folder import RunDir, attach_package_log
    from recon_kit.runs.runconfig import write_run_config

    if run_dir is None:
        return Trainer(cfg, views, None)
    check_writable(Path(run_dir).parent)
    lock = locking.acquire(run_dir, "training")   # one writer per run folder, before anything is cleared
    try:
        rd = RunDir.at(run_dir, overwrite=overwrite, resume=resume, inputs=inputs)
        attach_package_log(rd.dir)  # log.txt: the package's log of this run (incl. the fitted mesh_scale)
        saved = rd.dir / "config.json"
        if resume and saved.exists() and cfg.geometry.mesh_scale == "auto":  # resume at the scale fitted first
            cfg.geometry.mesh_scale = ReconConfig.load(saved).geometry.mesh_scale
        trainer = Trainer(cfg, views, rd.dir)       # fits geometry.mesh_scale when it is "auto"
        write_run_config(rd.dir, cfg, resume=resume, allow_changes=allow_changes)
        trainer.run_lock = lock
        if resume:
            trainer.resume()
    except BaseException:
        lock.release()
        raise
    return trainer


def train_from_config(config: str | Path | ReconConfig | None, dataset_dir: str | Path, run_dir: str | Path,
                      overrides: dict | None = None, resume: bool = False, overwrite: bool = False,
                      progress: bool = True, allow_changes: bool = False) -> dict:
    """Scripted run (the CLI's ``train``): load data, train both passes, export, evaluate, write metrics.json."""
    cfg = resolve(config, overrides)
    views = load_viewset(dataset_dir, resolution=cfg.data.resolution)
    inputs = {"dataset": dataset_dir, "config": config if isinstance(config, (str, Path)) and Path(config).exists()
              else None}
    trainer = new_trainer(cfg, views, run_dir, resume=resume, overwrite=overwrite, allow_changes=allow_changes,
                          inputs=inputs)
    try:
        trainer.run(progress=progress)
        return finish(trainer, dataset_dir)
    finally:
        if trainer.run_lock is not None:
            trainer.run_lock.release()


def finish(trainer: Trainer, dataset_dir: str | Path) -> dict:
    """Export, evaluate on the training views (and held-out views when the dataset has them), write metrics."""
    from recon_kit.runs.folder import write_metrics_json

    exported = trainer.export()
    if trainer.run_dir is not None:  # training.gif (+ .mp4) from the snapshots, before metrics.json marks the run done
        try:
            from recon_kit.runs.animation import training_animation

            animation = training_animation(trainer.run_dir)
            if animation is not None:
                exported["animation"] = animation
        except Exception as err:  # noqa: BLE001 - a convenience output never fails a finished run
            import warnings

            warnings.warn(f"training animation not written: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
    result = {"iterations": {"pass1": trainer.cfg.pass1.iterations, "pass2": trainer.cfg.pass2.iterations},
              "timings_s": dict(trainer.timings), "device": str(trainer.device), "backend": trainer.rast.name,
              "final_loss": trainer.history[-1]["total"] if trainer.history else math.nan,
              "faces": trainer.fixed.mesh().num_faces}
    result.update(trainer.evaluate(split="train"))
    result.update(quality_outputs(trainer))
    result["dataset_dir"] = str(Path(dataset_dir).resolve())
    try:  # held-out views, when the dataset (or its <res>/ folder) has transforms_test.json
        test_views = load_viewset(dataset_dir, resolution=trainer.cfg.data.resolution, split="test")
    except DataError:
        test_views = None
    if test_views is not None:
        result.update(trainer.evaluate(test_views, split="test"))
    if trainer.run_dir is not None:
        write_metrics_json(trainer.run_dir / "metrics.json", result)
    result["exported"] = {k: str(v) for k, v in exported.items() if k != "files"}
    return result


#: Files :func:`quality_outputs` writes into the run folder.
FRINGE_PNG, CORRECTED_CAMERAS = "fringe.png", "cameras_corrected.json"


@torch.no_grad()
def quality_outputs(trainer: Trainer) -> dict:
    """The fringe score of the trained model (:func:`recon_kit.evaluate.fringe`: ``fringe``, ``fringe_photos``,
    ``fringe_views``) and, with camera refinement on, the per-view corrections (``camera_corrections``: the
    :meth:`CameraRefiner.report` rows) and ``written_psnr``, the training-view PSNR under the cameras as written.

    In the run folder: ``fringe.png`` (the novel views side by side, over black) and, with refinement,
    ``cameras_corrected.json`` (the refined cameras in transforms.json format, sized like the dataset's images,
    absolute image paths; the user's files are never touched).
    """
    from recon_kit.evaluate import fringe

    fr = fringe(trainer.render_views, trainer.views)
    out = {k: fr[k] for k in ("fringe", "fringe_photos", "fringe_views")}
    if trainer.run_dir is not None:
        from PIL import Image

        strip = np.concatenate(list(fr["fringe_images"]), axis=1)
        Image.fromarray((np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8)).save(trainer.run_dir / FRINGE_PNG)
    if trainer.cam_refiner is None:
        return out
    views = trainer.views
    out["camera_corrections"] = trainer.cam_refiner.report(views.names, views.width)
    out["written_psnr"] = trainer.evaluate(views, split="written")["written_psnr"]
    if trainer.run_dir is not None:
        write_camera_file(trainer.cam_refiner.cameras(views.cameras), trainer.run_dir / CORRECTED_CAMERAS)
    return out


def write_camera_file(cameras: list, path: str | Path) -> Path:
    """``cameras`` (each with ``meta["file_path"]`` as :func:`recon_kit.io.transforms.read_transforms` sets it)
    as a transforms.json at ``path``, resized to their image files' sizes, with absolute image paths."""
    from recon_kit.io.images import image_size
    from recon_kit.io.transforms import dump_json, transforms_dict

    files = [Path(c.meta["file_path"]).resolve() for c in cameras]
    sized = [c.resized(*image_size(f)) for c, f in zip(cameras, files)]
    depths = [str(Path(c.meta["depth_file_path"]).resolve()) if c.meta.get("depth_file_path") else None
              for c in cameras]
    meta = transforms_dict(sized, [str(f) for f in files], depths,
                           extra={"recon_kit": {"cameras": "refined during training"}})
    path = Path(path)
    path.write_text(dump_json(meta), encoding="utf-8")
    return path


log = logging.getLogger(__name__)


__all__ = ["Run", "load_run", "mesh_facts", "evaluate_against_gt",
           "find_dataset_dir", "GT_KEYS"]


#: Keys :func:`evaluate_against_gt` writes at the top level of metrics.json.
GT_KEYS = ("chamfer_l1", "fscore", "precision", "recall", "normal_consistency", "fscore_threshold", "gt_diagonal",
           "gt_mesh")


#: Largest cube face used when re-building the light from ``probe.hdr`` (the prefilters grow with R^2 on CPUs).
MAX_LIGHT_RES = 128


@dataclass
class Run:
    """A run folder read back: everything needed to re-render the exported mesh.

    ``textures`` holds float32 arrays as :func:`recon_kit.io.meshfile.load_obj_folder` returns them (``kd_linear``,
    ``ks``, ``normal_ts``, ``probe_latlong``); ``light`` is the :class:`~recon_kit.render.envlight.EnvLight` rebuilt from
    ``probe.hdr`` (None without a probe); ``config`` is the raw ``config.json`` dict.
    """

    run_dir: Path
    mesh: Mesh
    textures: dict[str, np.ndarray]
    light: Any
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @property
    def mesh_dir(self) -> Path:
        return self.run_dir / "mesh"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def val_background(self) -> str:
        return str(self.config.get("data", {}).get("val_background", "white"))

    @property
    def resolution(self) -> int:
        return int(self.config.get("data", {}).get("resolution", 256))

    def kd_srgb_uint8(self) -> np.ndarray | None:
        """Base colour as an sRGB uint8 image [H,W,3] (for k3d and figures), or None without a kd texture."""
        kd = self.textures.get("kd_linear")
        if kd is None:
            return None
        return np.round(np.clip(linear_to_srgb(np.clip(kd[..., :3], 0, 1)), 0, 1) * 255).astype(np.uint8)

    def material(self, device: str | torch.device = "cpu"):
        """A :class:`~recon_kit.model.materials.TexturedMaterial` of the textures, with the run's value ranges."""
        return textured_material(self.textures, self.config, device)

    def reload_metrics(self) -> dict:
        from recon_kit.runs.folder import read_metrics_json

        self.metrics = read_metrics_json(self.metrics_path)
        return self.metrics

    def __repr__(self) -> str:
        tex = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in self.textures.items())
        return (f"Run({self.run_dir}, {self.mesh.num_vertices} vertices, {self.mesh.num_faces} faces, "
                f"textures: {tex or 'none'}, light: {'none' if self.light is None else f'{self.light.res}^2 cube'}, "
                f"{len(self.history)} history rows)")


def textured_material(textures: Mapping[str, np.ndarray], config: Mapping | None = None,
                      device: str | torch.device = "cpu"):
    """:meth:`TexturedMaterial.from_arrays` of loaded textures (kd's 4th coverage channel dropped; a missing map
    becomes a neutral constant: grey kd, ks (0, 0.5, 0), flat normal)."""
    from recon_kit.model.materials import TexturedMaterial

    mat = dict((config or {}).get("material", {}))
    ranges = {k: mat[k] for k in ("kd_min", "kd_max", "ks_min", "ks_max") if k in mat}
    ref = next((v for v in textures.values() if getattr(v, "ndim", 0) == 3), None)
    size = (ref.shape[0], ref.shape[1]) if ref is not None else (4, 4)
    kd = textures.get("kd_linear")
    ks = textures.get("ks")
    nrm = textures.get("normal_ts")
    kd = np.full((*size, 3), 0.5, np.float32) if kd is None else np.asarray(kd, np.float32)[..., :3]
    ks = np.broadcast_to(np.float32([0.0, 0.5, 0.0]), (*size, 3)) if ks is None else np.asarray(ks, np.float32)[..., :3]
    nrm = np.broadcast_to(np.float32([0, 0, 1]), (*size, 3)) if nrm is None else np.asarray(nrm, np.float32)[..., :3]
    return TexturedMaterial.from_arrays(np.ascontiguousarray(kd), np.ascontiguousarray(ks),
                                        np.ascontiguousarray(nrm), device=device, **ranges)


def _light_res(config: Mapping, light_res: int | None) -> int:
    if light_res is not None:
        res = int(light_res)
    else:
        res = min(int(config.get("light", {}).get("env_res", 64)), MAX_LIGHT_RES)
    res = max(32, res)
    return 1 << (res - 1).bit_length()  # EnvLight needs a power of two


def light_from_latlong(latlong, res: int = 64, device: str | torch.device = "cpu"):
    """An :class:`~recon_kit.render.envlight.EnvLight` of a lat-long HDR image ``[H,W,3]``, an HDR file path, or an
    EnvLight (returned as it is)."""
    from recon_kit.render.envlight import load_probe

    if isinstance(latlong, EnvLight):
        return latlong
    if isinstance(latlong, (str, Path)):
        return load_probe(latlong, res=res, device=device)
    img = latlong.detach().cpu().numpy() if isinstance(latlong, torch.Tensor) else np.asarray(latlong, np.float32)
    return EnvLight.from_latlong(img[..., :3], res=res, device=device)


def load_run(run_dir: str | Path, light_res: int | None = None, device: str | torch.device = "cpu") -> Run:
    """Read the run folder ``run_dir`` back (see the module docstring).

    ``light_res``: cube face size of the rebuilt light (default: the run's ``light.env_res``, at most
    :data:`MAX_LIGHT_RES`). Raises FileNotFoundError when ``run_dir/mesh/mesh.obj`` is missing (training did
    not finish or export).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist (relative paths start at {Path.cwd()})")
    mesh_dir = run_dir / "mesh"
    if not (mesh_dir / "mesh.obj").exists():
        raise FileNotFoundError(f"{mesh_dir / 'mesh.obj'} does not exist: the run has not exported a mesh yet "
                                "(train to the end in notebook 03, which calls train.finish)")
    mesh, textures = load_obj_folder(mesh_dir)
    config = read_json(run_dir / "config.json", {})
    config = config if isinstance(config, dict) else {}
    from recon_kit.runs.folder import read_metrics_json

    metrics = read_metrics_json(run_dir / "metrics.json")
    history = _read_history(run_dir / "history.jsonl")
    light = None
    if "probe_latlong" in textures:
        light = light_from_latlong(textures["probe_latlong"], _light_res(config, light_res), device)
    return Run(run_dir=run_dir, mesh=mesh.to(device), textures=textures, light=light, config=config,
               metrics=metrics, history=history)


def corrected_cameras(run_dir: str | Path, views: ViewSet) -> list | None:
    """The run's refined cameras (``cameras_corrected.json``, written by :func:`quality_outputs` with
    ``cameras.refine``) for ``views``' names and image size, or None when the run has none."""
    from recon_kit.io.transforms import load_cameras

    path = Path(run_dir) / CORRECTED_CAMERAS
    return load_cameras(path, views.names, views.width, views.height) if path.is_file() else None


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def mesh_facts(run: Run | str | Path, write: bool = True) -> dict[str, Any]:
    """:func:`recon_kit.evaluate.mesh_stats` of the run's mesh and textures (probe left out); merged into
    ``metrics.json`` under ``"mesh"`` when ``write``."""
    from recon_kit.evaluate import mesh_stats
    from recon_kit.runs.folder import write_metrics_json

    run = _as_run(run)
    tex = {k: v for k, v in run.textures.items() if k != "probe_latlong"}
    facts = mesh_stats(run.mesh, tex)
    if write:
        run.metrics = write_metrics_json(run.metrics_path, {"mesh": facts})
    return facts


def evaluate_against_gt(run: Run | str | Path, gt_mesh_path: str | Path, n_points: int = 50_000,
                        threshold: float = 0.01, seed: int = 0, write: bool = True) -> dict[str, Any]:
    """Chamfer-L1, F-score (at ``threshold`` x the GT bounding-box diagonal), precision, recall and normal
    consistency of the run's mesh against the ground-truth mesh file (OBJ/GLB/PLY), by
    :func:`recon_kit.evaluate.chamfer_fscore` (``n_points`` queries a side, as the quality benchmark: ~3 s on 2
    cores) against the GT's outer surface (:func:`recon_kit.evaluate.outer_surface`: what a capture can see;
    ~9 s for the demo object, whose handle is half sunk into its body). Both meshes must be in the same world
    frame (the demo's ``gt_mesh.obj`` is). Merged into ``metrics.json`` at the top level (:data:`GT_KEYS`) when
    ``write``.
    """
    from recon_kit.evaluate import chamfer_fscore, outer_surface
    from recon_kit.runs.folder import write_metrics_json

    run = _as_run(run)
    gt_path = Path(gt_mesh_path)
    if not gt_path.exists():
        raise FileNotFoundError(f"ground-truth mesh {gt_path} does not exist")
    res = chamfer_fscore(run.mesh, outer_surface(gt_path), n_points=n_points, threshold=threshold, seed=seed)
    out = {"chamfer_l1": res["chamfer_l1"], "fscore": res["fscore"], "precision": res["precision"],
           "recall": res["recall"], "normal_consistency": res["normal_consistency"],
           "fscore_threshold": res["threshold"], "gt_diagonal": res["gt_diagonal"], "gt_mesh": str(gt_path)}
    if write:
        run.metrics = write_metrics_json(run.metrics_path, out)
    return out


def find_dataset_dir(run: Run, hint: str | Path | None = "") -> Path | None:
    """The dataset to compare renders with: ``hint`` when given (must exist), else a ``dataset_dir`` recorded
    in the run's metrics.json or config.json, else None."""
    if hint:
        p = Path(hint)
        if not p.exists():
            raise FileNotFoundError(f"dataset folder {p} does not exist")
        return p
    for source in (run.metrics, run.config):
        val = source.get("dataset_dir") if isinstance(source, Mapping) else None
        if isinstance(val, str) and val and Path(val).exists():
            return Path(val)
    return None

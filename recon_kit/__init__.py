"""recon-kit: multi-view images (+ depth) to a textured, relightable triangle mesh.

Conventions (stated once, tested in tests/test_cameras.py):
  * camera-to-world matrices follow NeRF/OpenGL: camera x right, y up, looking down -z;
  * images are row-major with row 0 at the top; pixel (row i, col j) has its centre at (j + 0.5, i + 0.5);
  * colour tensors name their space: ``rgb_linear`` vs ``rgb_srgb``;
  * the world frame is the one of ``transforms.json`` (no hidden axis swaps, unlike nvdiffrec's +90 deg x).
"""

__version__ = "0.1.0"

# The public API the notebooks use, one call per step: ``import recon_kit as rk; rk.load_capture(...)``.
# Names resolve lazily (PEP 562) so that ``import recon_kit.cameras`` stays light and no layer imports upward.
_API = {
    "recon_kit.config": ["ReconConfig", "resolve", "preset"],
    "recon_kit.color": ["linear_to_srgb", "srgb_to_linear"],
    "recon_kit.data.capture": ["load_capture"],
    "recon_kit.data.masks": ["compute_masks", "foreground_masks", "mask_agreement", "trim_masks"],
    "recon_kit.data.align": ["align_capture"],
    "recon_kit.data.dataset": ["ViewSet", "load_viewset", "write_dataset", "prepare_dataset"],
    "recon_kit.io.video": ["write_gif", "write_mp4"],
    "recon_kit.io.transforms": ["transforms_path", "load_cameras", "write_corrected_transforms"],
    "recon_kit.model.hull": ["carve"],
    "recon_kit.posecheck": ["check_poses", "predicted_silhouettes", "run_check"],
    "recon_kit.autoscale": ["fit_mesh_scale"],
    "recon_kit.synth": ["resolve_capture"],
    "recon_kit.train.trainer": ["Trainer"],
    "recon_kit.evaluate": ["psnr", "ssim"],
    "recon_kit.runs.run": ["Run", "load_run", "new_trainer", "finish", "train_from_config", "mesh_facts",
                           "evaluate_against_gt", "find_dataset_dir"],
    "recon_kit.runs.table": ["metrics_table", "format_table", "load_runs", "filter_runs", "sort_runs", "best_run",
                             "param_columns", "summary"],
    "recon_kit.runs.sweep": ["Sweep"],
    "recon_kit.runs.ray_engine": ["RayOptions", "live_table"],
    "recon_kit.runs.batch": ["Batch"],
    "recon_kit.runs.folder": ["new_run_path"],
    "recon_kit.runs.workspace": ["Workspace"],
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recon_kit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

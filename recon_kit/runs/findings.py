"""Notebook 02 hands its findings to notebook 03 through one file in the dataset folder: ``posecheck.json``.

It holds the ``mesh_scale`` the visual hull needs (and whether the checked one cut the object) and, when fixes were
written, the corrected transforms file. Training uses them only when the user accepts them (notebook 03's
``accept_posecheck``, or :func:`apply`); otherwise it says what was found and how to accept it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["FINDINGS_FILE", "write", "read", "apply"]

FINDINGS_FILE = "posecheck.json"


def _dataset_folder(dataset_dir: str | os.PathLike[str]) -> Path:
    from recon_kit.io.transforms import transforms_path

    return transforms_path(dataset_dir).parent


def write(dataset_dir: str | os.PathLike[str], report, checked_mesh_scale: float, suggested_mesh_scale: float,
          corrected_transforms: str | os.PathLike[str] | None = None) -> Path:
    """Write ``<dataset>/posecheck.json`` from a :class:`~recon_kit.posecheck.PoseReport` and the fitted scale."""
    from recon_kit.runs.folder import RunDir

    folder = _dataset_folder(dataset_dir)
    cut = [f.message for f in report.flags if f.kind == "volume_cuts_object"]
    findings = {
        "mesh_scale": float(suggested_mesh_scale),
        "checked_mesh_scale": float(checked_mesh_scale),
        "checked_scale_cuts_object": bool(cut),
        "corrected_transforms": str(Path(corrected_transforms).resolve()) if corrected_transforms else None,
        "fixes": [{"view": f.view, "correction": f.correction.name} for f in report.fixes],
        "flags": [{"view": f.view, "kind": f.kind, "message": f.message} for f in report.flags],
    }
    return RunDir(folder).write_json(FINDINGS_FILE, findings)


def read(dataset_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The findings of notebook 02 for this dataset, or None when it has not been run on it."""
    path = _dataset_folder(dataset_dir) / FINDINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def apply(cfg, views, dataset_dir: str | os.PathLike[str], accept: bool) -> tuple[Any, Any, str]:
    """``(cfg, views, message)``: with ``accept``, the suggested ``geometry.mesh_scale`` and the corrected poses
    applied; without, unchanged, and the message says what accepting would change."""
    found = read(dataset_dir)
    if found is None:
        return cfg, views, f"no {FINDINGS_FILE} in {_dataset_folder(dataset_dir)} (notebook 02 writes it)"
    parts = [f"mesh_scale {found['mesh_scale']:.2f}" + (
        f" (the checked {found['checked_mesh_scale']:.2f} cuts the object)" if found["checked_scale_cuts_object"]
        else "")]
    if found.get("corrected_transforms"):
        parts.append(f"corrected poses from {found['corrected_transforms']}")
    what = " and ".join(parts)
    if not accept:
        return cfg, views, f"notebook 02 suggests {what}; set accept_posecheck=True to use them"
    from recon_kit.config import apply_overrides
    from recon_kit.io.transforms import load_cameras

    cfg = apply_overrides(cfg, {"geometry.mesh_scale": found["mesh_scale"]})
    if found.get("corrected_transforms"):
        cams = load_cameras(found["corrected_transforms"], views.names, views.width, views.height)
        views = replace(views, cameras=cams)
    return cfg, views, f"using notebook 02's findings: {what}"

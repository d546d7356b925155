"""Automatic checks of camera poses against silhouettes: find the view that is upside down, rolled or mirrored.

The idea: the visual hull carved from all views *but one* predicts that view's silhouette. A view whose mask
disagrees with the others' prediction (low IoU) has a wrong pose (or image). For such a view we try the eight
symmetries of the image square as pose corrections ``c2w @ T`` (rolls by 90/180/270 degrees about the view
axis, mirrors) and report the one that clearly restores consistency, with the corrected matrix.

Mirrors. No rigid motion mirrors an image, so a mirror correction ``T`` (det -1) makes ``c2w @ T`` change
handedness. When the given matrix is left-handed (det -1, typically a sign typed wrong by hand) the mirror
correction makes it a proper rotation again: a *pose* fix. When the given matrix is a proper rotation the image
itself is mirrored: the fix is to flip the *image* (``Fix.image_op``) and keep the pose; ``Fix.corrected_c2w``
is then the left-handed matrix that projects like the flipped image (kind ``"image"``), which
:func:`write_corrected_transforms` only writes when asked to.

Also: :func:`calibrate` scans ``camera_angle_x`` (and the camera distance) for the most consistent value, and
:func:`sanity_flags` catches cameras that miss the volume, clipped or tiny objects, and a volume that cuts the
object. :func:`check_poses` runs everything and returns a :class:`PoseReport`.
"""

from __future__ import annotations


import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from recon_kit.cameras import (Camera, Correction, can_use_pixel_map, apply_pixel_map, corrected_camera, corrections,
                               focal_from_fov)
from recon_kit.data.dataset import load_viewset
from recon_kit.io.transforms import load_cameras, transforms_path, write_corrected_transforms
from recon_kit.model.hull import (HullGrid, Votes, as_mask_tensor, carve, project_silhouette, resolve_bounds,
                                  spanned_bounds, view_votes, working_set)


@dataclass
class Flag:
    """One problem found: ``view`` (None for the whole set), ``kind`` and a message that says what to do."""

    view: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.view or 'all views'}: {self.message}"


@dataclass
class Fix:
    """A suggested correction of one view, with the consistency it reaches."""

    view: str
    index: int
    correction: Correction
    iou_before: float
    iou_after: float
    original_c2w: np.ndarray
    corrected_c2w: np.ndarray
    kind: str

    @property
    def message(self) -> str:
        c = self.correction
        head = f"view {self.view!r}: IoU {self.iou_before:.2f} -> {self.iou_after:.2f} with {c.name}"
        if self.kind == "pose":
            return (f"{head}: replace its transform_matrix by c2w @ T (corrected_c2w); "
                    f"or, if the pose is right and the photo is turned, {c.image_op}.")
        return (f"{head}: the image is mirrored (the given matrix is a proper rotation): {c.image_op} and keep "
                f"the pose. corrected_c2w is the equivalent left-handed matrix.")


@dataclass
class Calibration:
    """Silhouette coverage over a scan of ``camera_angle_x`` (and distance), the best value, and the score of the
    cameras as given (``current_angle``, ``current_score``)."""

    table: pd.DataFrame
    best_angle: float
    best_distance: float | None
    best_score: float
    current_angle: float
    current_score: float

    @property
    def at_edge(self) -> bool:
        """The best angle is the first or last one scanned: the true peak may lie outside the scanned range."""
        angles = self.table["camera_angle_x"].to_numpy()
        best = float(self.table.loc[self.table["coverage"].idxmax(), "camera_angle_x"])
        return bool(len(angles)) and best in (float(angles.min()), float(angles.max()))


@dataclass
class PoseReport:
    """Everything :func:`check_poses` found: per-view table, flags, fixes, calibration and the full hull."""

    names: list[str]
    cameras: list[Camera]
    table: pd.DataFrame
    flags: list[Flag]
    fixes: list[Fix]
    calibration: Calibration | None
    hull: HullGrid
    settings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.flags

    def corrected_cameras(self) -> list[Camera]:
        """The input cameras with the suggested fixes applied."""
        cams = list(self.cameras)
        for f in self.fixes:
            cams[f.index] = replace(cams[f.index], c2w=f.corrected_c2w.copy())
        return cams

    def summary(self) -> str:
        """Human-readable report."""
        lines = [f"Pose check of {len(self.names)} views (grid {self.settings.get('res')}^3, "
                 f"masks at {self.settings.get('mask_size')} px, volume {self.settings.get('bounds')})"]
        for row in self.table.itertuples():
            mark = "  <-- FLAGGED" if row.flagged else ""
            lines.append(f"  {row.view:>12s}  IoU {row.iou:.3f}  precision {row.precision:.3f}  "
                         f"recall {row.recall:.3f}{mark}")
        lines.append(f"  threshold IoU {self.table.attrs.get('threshold', float('nan')):.3f}")
        if self.flags:
            lines.append(f"{len(self.flags)} flag(s):")
            lines += [f"  - {f}" for f in self.flags]
        else:
            lines.append("No problems found.")
        if self.fixes:
            lines.append("Suggested fixes:")
            lines += [f"  - {f.message}" for f in self.fixes]
        if self.calibration is not None:
            c = self.calibration
            dist = "" if c.best_distance is None else f", distance {c.best_distance:.3g}"
            lines.append(f"Calibration: silhouettes are most consistent at camera_angle_x {c.best_angle:.3f}{dist} "
                         f"(coverage {c.best_score:.3f}; given {c.current_angle:.3f}: {c.current_score:.3f})")
        return "\n".join(lines)


def _unpack(data, masks) -> tuple[list[Camera], torch.Tensor, list[str]]:
    """Cameras, masks and names from a ViewSet-like object or from cameras + masks."""
    if masks is None:
        if not (hasattr(data, "cameras") and hasattr(data, "mask")):
            raise TypeError("pass a ViewSet (with .cameras and .mask) or cameras and masks")
        cams, masks = list(data.cameras), data.mask
        names = list(getattr(data, "names", None) or [c.name for c in cams])
    else:
        cams = list(data)
        names = [c.name or f"view{i}" for i, c in enumerate(cams)]
    m = as_mask_tensor(masks)
    if len(cams) != m.shape[0]:
        raise ValueError(f"{len(cams)} cameras but {m.shape[0]} masks")
    return cams, m, names


def _scores(pred: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """IoU, precision and recall of a predicted silhouette against a mask."""
    p, g = pred > 0.5, mask > 0.5
    inter = float((p & g).sum())
    union, np_, ng = float((p | g).sum()), float(p.sum()), float(g.sum())
    return inter / max(union, 1.0), inter / max(np_, 1.0), inter / max(ng, 1.0)


def _loo_hull(votes: Votes, skip: Sequence[int]) -> HullGrid:
    """The hull carved from all views but ``skip``; nodes must be seen by two of them."""
    keep = [j for j in range(votes.inside.shape[0]) if j not in set(skip)]
    return votes.hull(keep, min_seen=min(2, len(keep)))


def _handedness(camera: Camera) -> float:
    return float(np.sign(np.linalg.det(camera.c2w[:3, :3])))


def _choose(cands: list[Correction], ious: list[float], handed: float, mirror_margin: float) -> int:
    """Best candidate, preferring results that are proper rotations unless another wins by ``mirror_margin``."""
    proper = [k for k, c in enumerate(cands) if handed * np.linalg.det(c.matrix) > 0]
    improper = [k for k in range(len(cands)) if k not in proper]
    best_p = max(proper, key=lambda k: ious[k])
    best_i = max(improper, key=lambda k: ious[k])
    return best_i if ious[best_i] > ious[best_p] + mirror_margin else best_p


def _accept(k: int, ious: list[float], handed: float, min_gain: float, mirror_margin: float) -> bool:
    """A correction is worth suggesting when it clearly raises the IoU, or when it repairs a left-handed
    matrix without lowering the IoU by more than ``mirror_margin``."""
    if k == 0:
        return False
    if handed < 0:
        return ious[k] >= ious[0] - mirror_margin
    return ious[k] - ious[0] >= min_gain


def _candidate_scores(hull: HullGrid, camera: Camera, mask: torch.Tensor, cands: list[Correction]
                      ) -> tuple[tuple[float, float, float], list[float]]:
    """(IoU, precision, recall) as posed, and the IoU for each corrected camera (pixel maps when they apply)."""
    sil = project_silhouette(hull, camera)
    base = _scores(sil, mask)
    if can_use_pixel_map(camera):
        return base, [_scores(apply_pixel_map(sil, c.pixel_map.T), mask)[0] for c in cands]
    return base, [base[0] if np.allclose(c.matrix, np.eye(3)) else
                  _scores(project_silhouette(hull, corrected_camera(camera, c)), mask)[0] for c in cands]


def _consistency(cams: list[Camera], masks: torch.Tensor, names: list[str], bounds, res: int,
                 abs_threshold: float, rel_threshold: float, min_gain: float = 0.1, mirror_margin: float = 0.03,
                 try_corrections: bool = True) -> pd.DataFrame:
    """Leave-one-out table; with ``try_corrections`` also the best roll/mirror of each view and its IoU."""
    cands = corrections() if try_corrections else corrections()[:1]
    rows = []
    votes = view_votes(cams, masks, bounds, res, masks.device)
    for i, cam in enumerate(cams):
        hull = _loo_hull(votes, [i])
        (iou, prec, rec), ious = _candidate_scores(hull, cam, masks[i], cands)
        handed = _handedness(cam)
        k = _choose(cands, ious, handed, mirror_margin) if try_corrections else 0
        rows.append({"view": names[i], "iou": iou, "precision": prec, "recall": rec,
                     "best_correction": cands[k].name if _accept(k, ious, handed, min_gain, mirror_margin) else "",
                     "best_iou": ious[k], "left_handed": handed < 0})
    df = pd.DataFrame(rows)
    median = float(df["iou"].median()) if len(df) else float("nan")
    threshold = max(abs_threshold, rel_threshold * median)
    low = df["iou"] < threshold
    reasons = []
    for r, is_low in zip(df.itertuples(), low):
        why = (["low IoU"] if is_low else []) + (["left-handed c2w"] if r.left_handed else []) + \
            ([f"{r.best_correction} fits better"] if r.best_correction else [])
        reasons.append("; ".join(why))
    df["reason"] = reasons
    df["flagged"] = df["reason"] != ""
    df.attrs["threshold"] = threshold
    df.attrs["median"] = median
    return df


def view_consistency(cameras, masks=None, res: int = 64, bounds=(-1.0, 1.0), mask_size: int | None = 128,
                     abs_threshold: float = 0.6, rel_threshold: float = 0.85, min_gain: float = 0.1,
                     mirror_margin: float = 0.03) -> pd.DataFrame:
    """Per-view leave-one-out consistency: IoU, precision, recall of the others' hull against this view's mask.

    A view is ``flagged`` (with a ``reason``) when its IoU is below ``max(abs_threshold, rel_threshold *
    median IoU)`` (in ``df.attrs["threshold"]``), when a roll/mirror of its pose raises its IoU by ``min_gain``
    (``best_correction``, ``best_iou``), or when its c2w is left-handed. Precision below 1 is normal (a hull
    from few views is fat). ``cameras`` may also be a ViewSet (then ``masks`` is None).
    """
    cams, m, names = _unpack(cameras, masks)
    cams, m = working_set(cams, m, mask_size)
    return _consistency(cams, m, names, bounds, res, abs_threshold, rel_threshold, min_gain, mirror_margin)


def _suggest(cams: list[Camera], masks: torch.Tensor, names: list[str], originals: list[Camera], bounds, res: int,
             abs_threshold: float, rel_threshold: float, min_gain: float, mirror_margin: float,
             max_fixes: int | None) -> tuple[list[Fix], pd.DataFrame, pd.DataFrame]:
    """Greedy: apply the accepted correction that gains most (left-handed matrices first), re-check, repeat.

    A wrong view also spoils the hull the others are checked against, but its own gain is the largest, so one
    fix at a time converges. Returns the fixes and the tables before and after them."""
    cands = corrections()
    fixes: list[Fix] = []
    fixed: set[int] = set()
    table = _consistency(cams, masks, names, bounds, res, abs_threshold, rel_threshold, min_gain, mirror_margin)
    initial = table
    for _ in range(max_fixes if max_fixes is not None else len(cams)):
        best: tuple[tuple[bool, float], int, int] | None = None
        for i, row in enumerate(table.itertuples()):
            if not row.flagged or not row.best_correction or i in fixed:
                continue
            k = [c.name for c in cands].index(row.best_correction)
            key = (bool(row.left_handed), row.best_iou - row.iou)
            if best is None or key > best[0]:
                best = (key, i, k)
        if best is None:
            break
        _, i, k = best
        before = float(table["iou"].iloc[i])
        fixed.add(i)
        cams[i] = corrected_camera(cams[i], cands[k])
        table = _consistency(cams, masks, names, bounds, res, abs_threshold, rel_threshold, min_gain, mirror_margin)
        c2w = corrected_camera(originals[i], cands[k]).c2w
        kind = "pose" if np.linalg.det(c2w[:3, :3]) > 0 else "image"
        fixes.append(Fix(names[i], i, cands[k], before, float(table["iou"].iloc[i]), originals[i].c2w.copy(), c2w,
                         kind))
    return fixes, initial, table


def suggest_fixes(cameras, masks=None, res: int = 64, bounds=(-1.0, 1.0), mask_size: int | None = 128,
                  abs_threshold: float = 0.6, rel_threshold: float = 0.85, min_gain: float = 0.1,
                  mirror_margin: float = 0.03, max_fixes: int | None = None) -> list[Fix]:
    """Corrections (rolls by 90/180/270 deg, mirrors) that clearly raise a flagged view's consistency.

    Greedy, most convincing first: a wrong view also spoils the hull the other views are checked against, so
    after each fix the table is recomputed. A fix must raise the view's IoU by ``min_gain``, or make a
    left-handed matrix a rotation without losing consistency; results that are proper rotations are preferred
    unless another wins by ``mirror_margin`` (see the module notes on mirrors). A mirrored image of a
    mirror-symmetric view (a shoe from the front) cannot be told from the right one.
    """
    cams, m, names = _unpack(cameras, masks)
    work, m = working_set(cams, m, mask_size)
    fixes, _, _ = _suggest(list(work), m, names, cams, bounds, res, abs_threshold, rel_threshold, min_gain,
                           mirror_margin, max_fixes)
    return fixes


def rescaled_cameras(cameras: Sequence[Camera], angle: float | None, distance: float | None = None) -> list[Camera]:
    """Cameras with a new horizontal field of view (pixel aspect kept) and/or distance to the origin."""
    out = []
    for c in cameras:
        c2w = c.c2w.copy()
        if distance is not None:
            c2w[:3, 3] = c2w[:3, 3] / max(float(np.linalg.norm(c2w[:3, 3])), 1e-12) * distance
        fx, fy = c.fx, c.fy
        if angle is not None:
            fx = focal_from_fov(angle, c.width)
            fy = fx * c.fy / c.fx
        out.append(replace(c, c2w=c2w, fx=fx, fy=fy, meta=dict(c.meta)))
    return out


def silhouette_coverage(cameras: Sequence[Camera], masks: torch.Tensor, bounds, res: int) -> list[float]:
    """Per view, the fraction of the mask that the hull of *all* views covers when projected back.

    With consistent cameras every silhouette is fully explained (1.0 up to discretisation); inconsistent ones
    shrink the hull ("silhouette coherence"). Only nodes that every view sees count, so parts of the volume
    outside some image do not pad the hull. Leave-one-out IoU is a poor calibration score: a stronger
    perspective fattens the others' hull and lowers it, so it prefers narrow angles; coverage leans the other
    way only slightly (about +0.05 rad on six axis views of the shoe rendered at a known angle).
    """
    hull = view_votes(cameras, masks, bounds, res, masks.device).hull(None, min_seen=len(cameras))
    return [_scores(project_silhouette(hull, c), masks[i])[2] for i, c in enumerate(cameras)]


def _plateau_centre(values: np.ndarray, scores: np.ndarray, tol: float) -> float:
    """Middle of the contiguous run of samples within ``tol`` of the best score (the curve is flat on top)."""
    k = int(np.argmax(scores))
    lo = hi = k
    while lo > 0 and scores[lo - 1] >= scores[k] - tol:
        lo -= 1
    while hi < len(scores) - 1 and scores[hi + 1] >= scores[k] - tol:
        hi += 1
    return float(0.5 * (values[lo] + values[hi]))


def calibrate(cameras, masks=None, angles: Sequence[float] = tuple(np.linspace(0.6, 1.1, 26)),
              distances: Sequence[float] | None = None, res: int = 64, mask_size: int | None = 128,
              bounds=None, plateau: float = 0.001) -> Calibration:
    """Scan ``camera_angle_x`` (and optionally one distance for all cameras) for the most consistent value.

    Score: mean :func:`silhouette_coverage` over views. ``bounds=None`` uses, per candidate, the cube that the
    image spans at the origin (half-size ``distance * tan(angle / 2)``), so the volume follows the object's
    apparent size. Only perspective tells angles apart, and a scene scaled with its cameras looks the same: when
    all cameras share one distance, a distance scan is flat unless fixed ``bounds`` are given (then it shows
    which distance fits the object in that volume). The curve is flat near its top (about +-0.05 rad for six
    axis views), so ``best_angle`` is the middle of the run of angles within ``plateau`` of the best score.
    """
    cams, m, names = _unpack(cameras, masks)
    cams, m = working_set(cams, m, mask_size)

    def score(angle: float | None, d: float | None) -> list[float]:
        cs = rescaled_cameras(cams, angle, d)
        return silhouette_coverage(cs, m, spanned_bounds(cs) if bounds is None else bounds, res)

    rows = []
    for d in (distances if distances is not None else [None]):
        for a in angles:
            cov = score(float(a), d)
            rows.append({"camera_angle_x": float(a), "distance": d, "coverage": float(np.mean(cov)),
                         "min_coverage": float(np.min(cov))})
    table = pd.DataFrame(rows)
    best = table.loc[table["coverage"].idxmax()]
    same_d = table[table["distance"].isna()] if distances is None else table[table["distance"] == best["distance"]]
    angle = _plateau_centre(same_d["camera_angle_x"].to_numpy(), same_d["coverage"].to_numpy(), plateau)
    current = float(np.mean([c.camera_angle_x for c in cams]))
    return Calibration(table, angle, None if distances is None else float(best["distance"]),
                       float(best["coverage"]), current, float(np.mean(score(None, None))))


def _ray_hits_box(origin: np.ndarray, direction: np.ndarray, box: np.ndarray) -> bool:
    inv = 1.0 / np.where(np.abs(direction) < 1e-12, 1e-12, direction)
    t_a, t_b = (box[0] - origin) * inv, (box[1] - origin) * inv
    t0, t1 = np.minimum(t_a, t_b).max(), np.maximum(t_a, t_b).min()
    return bool(t1 >= max(t0, 0.0))


def sanity_flags(cameras, masks=None, bounds=(-1.0, 1.0), hull: HullGrid | None = None, res: int = 64,
                 min_area: float = 0.02, border_fraction: float = 0.01, mask_size: int | None = 256) -> list[Flag]:
    """Cheap checks: poses that are not rotations, cameras missing the volume, clipped/tiny/empty masks, and
    a volume that cuts the object (hull touching the bounds; pass ``hull`` to reuse one carved at ``bounds``)."""
    cams, m, names = _unpack(cameras, masks)
    box = resolve_bounds(bounds)
    flags: list[Flag] = []
    for c, name in zip(cams, names):
        r = c.c2w[:3, :3]
        det = float(np.linalg.det(r))
        if not np.allclose(r.T @ r, np.eye(3), atol=1e-3) or det < 0:
            what = "left-handed (det -1: one axis has the wrong sign)" if det < 0 else "not orthonormal"
            flags.append(Flag(name, "not_rotation", f"the rotation part of c2w is {what}; check the signs and "
                                                    "order of its columns (x right, y up, z backwards)."))
        centre = 0.5 * (box[0] + box[1])
        forward = -r[:, 2] / max(np.linalg.norm(r[:, 2]), 1e-12)
        if not _ray_hits_box(c.position, forward, box):
            to_centre = centre - c.position
            looks_away = float(np.dot(forward, to_centre)) < 0
            hint = ("it looks away from the volume: the camera z column probably has the wrong sign (cameras "
                    "look down -z)" if looks_away else "check the translation and rotation of this view")
            flags.append(Flag(name, "misses_volume", f"the optical axis misses the reconstruction volume; {hint}."))
    _, mw = working_set(cams, m, mask_size)
    for i, name in enumerate(names):
        mk = mw[i] > 0.5
        area = float(mk.float().mean())
        if area == 0.0:
            flags.append(Flag(name, "empty_mask", "the mask is empty: check the background removal / depth."))
            continue
        if area < min_area:
            flags.append(Flag(name, "small_object", f"the object covers {100 * area:.1f}% of the image: crop "
                                                    "closer or use a higher resolution."))
        sides = {"top": mk[0], "bottom": mk[-1], "left": mk[:, 0], "right": mk[:, -1]}
        touched = [s for s, px in sides.items() if float(px.float().mean()) > border_fraction]
        if touched:
            flags.append(Flag(name, "clipped", f"the object touches the {', '.join(touched)} image border(s) and "
                                               "is cut off: move the camera back or re-frame the photo."))
    work, mw = working_set(cams, m, 128)
    if hull is None:
        hull = carve(work, mw, bounds=box, res=res, min_seen=min(2, len(work)))
    faces = [f for f, t in hull.touches_bounds().items() if t]
    if faces:
        flags.append(Flag(None, "volume_cuts_object",
                          f"the hull touches the {', '.join(faces)} face(s) of the volume {np.round(box, 3).tolist()}: "
                          f"the object is cut; {_volume_advice(work, mw, box, res)}"))
    return flags


def _volume_advice(cams: list[Camera], masks: torch.Tensor, box: np.ndarray, res: int) -> str:
    """How large a centred cube must be to hold the hull, measured in a volume twice the size (counting only
    nodes every view sees, so the unobserved corners of the big volume do not count)."""
    big = view_votes(cams, masks, 2.0 * box, res, masks.device).hull(None, min_seen=len(cams))
    ext = big.occupied_bounds(pad=1.0)
    if ext is None or any(big.touches_bounds().values()):
        return "enlarge the volume (mesh_scale) or check the camera distance and field of view."
    need = math.ceil(20.0 * float(np.abs(ext).max())) / 10.0
    return f"use mesh_scale >= {need:.1f} (the hull reaches {np.round(ext, 2).tolist()}) or move the cameras back."


def check_poses(data, masks=None, *, bounds=(-1.0, 1.0), res: int = 64, mask_size: int | None = 128,
                abs_threshold: float = 0.6, rel_threshold: float = 0.85, min_gain: float = 0.1,
                mirror_margin: float = 0.03, run_calibration: bool = True,
                angles: Sequence[float] = tuple(np.linspace(0.6, 1.1, 26)), distances: Sequence[float] | None = None,
                calibration_bounds=None, min_coverage: float = 0.9) -> PoseReport:
    """All checks on a ViewSet (or ``cameras, masks``): consistency table, sanity flags, fixes, calibration.

    The calibration only raises a flag when the given cameras explain less than ``min_coverage`` of the
    silhouettes and another angle does clearly better; otherwise it is reported in the summary.
    """
    cams, m, names = _unpack(data, masks)
    work, mw = working_set(cams, m, mask_size)
    fixes, table, after = _suggest(list(work), mw, names, cams, bounds, res, abs_threshold, rel_threshold, min_gain,
                                   mirror_margin, None)
    by_view = {f.index: f for f in fixes}
    table = table.copy()
    table["fix"] = [by_view[i].correction.name if i in by_view else "" for i in range(len(cams))]
    table["iou_after_fixes"] = after["iou"].to_numpy()
    hull = carve(work, mw, bounds=bounds, res=res, min_seen=min(2, len(work)))
    flags = sanity_flags(cams, m, bounds=bounds, hull=hull)
    for i, row in table.iterrows():
        if row["flagged"]:
            hint = by_view[i].message if i in by_view else (
                "no roll/mirror explains it: check this view's position, its mask, or the world axes.")
            flags.append(Flag(row["view"], "inconsistent", f"{row['reason']} (IoU {row['iou']:.2f} against the "
                                                           f"other views' hull, threshold "
                                                           f"{table.attrs['threshold']:.2f}). {hint}"))
    if len(table) and table.attrs["median"] < abs_threshold:
        flags.append(Flag(None, "inconsistent_set", f"median IoU {table.attrs['median']:.2f}: the views disagree "
                                                    "overall; check camera_angle_x and distance (calibrate) and the "
                                                    "world axes of the transforms."))
    calib = calibrate(cams, m, angles=angles, distances=distances, bounds=calibration_bounds) if run_calibration \
        else None
    if calib is not None and calib.current_score < min_coverage and calib.best_score > calib.current_score + 0.03:
        flags.append(Flag(None, "calibration", f"the silhouettes fit camera_angle_x {calib.best_angle:.3f} "
                                               f"(coverage {calib.best_score:.2f}) much better than the given "
                                               f"{calib.current_angle:.3f} ({calib.current_score:.2f}): check the "
                                               "field of view."))
    if calib is not None and calib.at_edge:
        lo, hi = calib.table["camera_angle_x"].min(), calib.table["camera_angle_x"].max()
        flags.append(Flag(None, "calibration_edge", f"the camera_angle_x scan peaks at the edge of its range "
                                                    f"[{lo:.2f}, {hi:.2f}]: the best value may lie outside it; "
                                                    "widen the scanned angles (check_poses(angles=...))."))
    settings = {"res": res, "mask_size": int(max(mw.shape[1:])), "bounds": resolve_bounds(bounds).tolist()}
    return PoseReport(names, cams, table, flags, fixes, calib, hull, settings)


def predicted_silhouettes(cameras, masks=None, res: int = 64, bounds=(-1.0, 1.0), mask_size: int | None = 128
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view, the silhouette the *other* views predict and the mask, both ``[N,h,w]`` at the working size."""
    cams, m, _ = _unpack(cameras, masks)
    cams, m = working_set(cams, m, mask_size)
    votes = view_votes(cams, m, bounds, res, m.device)
    pred = torch.stack([project_silhouette(_loo_hull(votes, [i]), c) for i, c in enumerate(cams)])
    return pred, m


REPORT_FILE = "report.txt"
TABLE_FILE = "consistency.csv"


@dataclass
class PoseCheck:
    """What :func:`run_check` loaded, found and wrote."""

    views: object
    cameras: list[Camera]
    transforms_file: Path
    report: PoseReport
    written: Path | None = None


def run_check(dataset_dir: str | Path, transforms: str | Path = "", *, grid_res: int = 64, mesh_scale: float = 2.1,
              mask_size: int = 128, run_calibration: bool = True, write_corrected: bool = False,
              apply_calibration: bool = False, overwrite: bool = False, output_dir: str | Path | None = None,
              resolution: int | None = None, views=None) -> PoseCheck:
    """Notebook 02 and ``recon-kit check-poses`` in one call: load the dataset's views (or take ``views``), check
    the poses of ``transforms`` (default: the dataset's transforms.json), write ``report.txt`` and
    ``consistency.csv`` into ``output_dir`` when given, and ``<transforms>_corrected.json`` when
    ``write_corrected`` (with the scanned ``camera_angle_x`` when ``apply_calibration``; never over an existing
    file unless ``overwrite``, nor over an existing report). ``mesh_scale`` is the side of the checked cube, as in the
    training config."""
    if output_dir is not None and (Path(output_dir) / REPORT_FILE).exists() and not overwrite:
        raise FileExistsError(f"{Path(output_dir) / REPORT_FILE} exists; pass --overwrite to replace it, or another "
                              "--output-dir")
    if views is None:
        views = load_viewset(dataset_dir, resolution=resolution)
    transforms_file = Path(transforms) if transforms else transforms_path(dataset_dir)
    cams = load_cameras(transforms_file, views.names, views.width, views.height) if transforms else views.cameras
    report = check_poses(cams, views.mask, bounds=mesh_scale, res=grid_res, mask_size=mask_size,
                         run_calibration=run_calibration)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_FILE).write_text(report.summary() + "\n")
        report.table.to_csv(out / TABLE_FILE, index=False)
    written = None
    angle = report.calibration.best_angle if apply_calibration and report.calibration is not None else None
    if write_corrected and (report.fixes or angle is not None):
        written = write_corrected_transforms(transforms_file, report.fixes, overwrite=overwrite, camera_angle_x=angle)
    return PoseCheck(views, cams, transforms_file, report, written)

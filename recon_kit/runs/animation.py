"""Training animations: the run's snapshots (``snapshots/pass<N>_<it>.png``, render | reference) as a
labelled GIF and, when imageio-ffmpeg works, an MP4 -- like the user's hand-made ``training.gif``.

Low in the module stack (numpy, PIL, imageio only) so that :func:`recon_kit.train.finish` can call it.
"""

from __future__ import annotations


import logging
import os
from pathlib import Path

import numpy as np
from recon_kit.io.video import write_gif, write_mp4
from recon_kit.runs.folder import read_json, snapshot_key
from recon_kit.runs.folder import snapshots


log = logging.getLogger(__name__)


GIF_NAME = "training.gif"


MP4_NAME = "training.mp4"


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError, AttributeError):
        return ImageFont.load_default()


def label_frame(image: np.ndarray, text: str) -> np.ndarray:
    """``uint8 [H,W,3]``: ``image`` with ``text`` in white on a dark strip along its top edge."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("RGB")
    size = max(9, min(24, img.height // 8))
    font = _font(size)
    draw = ImageDraw.Draw(img, "RGBA")
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, size // 5)
    draw.rectangle((0, 0, min(img.width, right - left + 3 * pad), bottom - top + 2 * pad), fill=(0, 0, 0, 160))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255, 255), font=font)
    return np.asarray(img)


def training_animation(run_dir: str | os.PathLike[str], fps: float = 4.0, mp4: bool = True,
                       hold_last_s: float = 1.0, max_frames: int = 240, label: bool = True) -> Path | None:
    """Assemble ``run_dir/snapshots/pass<N>_<it>.png`` (pass, then iteration order) into ``run_dir/training.gif``
    and, when imageio-ffmpeg works, ``run_dir/training.mp4``; each frame is labelled with its pass and
    iteration. Returns the GIF's path, or None when the run has no snapshots (``snapshot_every: 0``).

    More than ``max_frames`` snapshots are thinned evenly (the first and last kept); the last frame is held
    ``hold_last_s`` seconds longer. A failing MP4 writer only warns.
    """
    from PIL import Image

    run_dir = Path(run_dir)
    shots = snapshots(run_dir)
    if not shots:
        log.info("%s has no snapshots; no training animation", run_dir)
        return None
    if max_frames and len(shots) > max_frames:
        keep = np.unique(np.linspace(0, len(shots) - 1, max_frames).round().astype(int))
        shots = [shots[i] for i in keep]
    totals = {}
    cfg = read_json(run_dir / "config.json")
    if isinstance(cfg, dict):
        totals = {n: (cfg.get(f"pass{n}") or {}).get("iterations") for n in (1, 2)}
    frames, size = [], None
    for p in shots:
        img = Image.open(p).convert("RGB")
        if size is None:
            size = img.size
        elif img.size != size:
            img = img.resize(size, Image.BILINEAR)
        arr = np.asarray(img)
        if label:
            n, it = snapshot_key(p)
            total = totals.get(n)
            arr = label_frame(arr, f"pass {n}  it {it}" + (f"/{total}" if total else ""))
        frames.append(arr)

    gif = write_gif(run_dir / GIF_NAME, frames, fps=fps, hold_last_s=hold_last_s)
    if mp4:
        write_mp4(run_dir / MP4_NAME, frames, fps, hold_last_s)
    return gif

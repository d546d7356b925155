"""Video files: the kit's one GIF writer and one MP4 writer (imageio; MP4 through imageio-ffmpeg).

Both write to a temporary name first and rename, so a reader never sees half a file; uint8 frames ``[N,H,W,3]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _frames(frames: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(f) for f in frames]
    if not out:
        raise ValueError("no frames to write")
    return out


def write_gif(path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float = 12.0, loop: int = 0,
              hold_last_s: float = 0.0) -> Path:
    """An animated GIF at ``fps`` (GIF delays are whole milliseconds, at least 20), looping ``loop`` times
    (0 = forever); the last frame is held ``hold_last_s`` seconds longer."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _frames(frames)
    step_ms = max(20, int(round(1000.0 / fps)))
    durations = [step_ms] * len(frames)
    durations[-1] += int(hold_last_s * 1000)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", plugin="pillow", duration=durations, loop=loop,
                    optimize=False, disposal=1)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_mp4(path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float = 24.0,
              hold_last_s: float = 0.0) -> Path | None:
    """An H.264 MP4 (yuv420p; odd sizes padded by one edge pixel) when imageio-ffmpeg works; otherwise a warning
    and None (nothing written): a GIF of the same frames is the fallback everywhere the kit writes one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _frames(frames)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    try:
        import imageio.v2 as imageio

        extra = [frames[-1]] * int(round(hold_last_s * fps))
        with imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error") as w:
            for f in [*frames, *extra]:
                w.append_data(_even(f))
        os.replace(tmp, path)
        return path
    except Exception as err:  # noqa: BLE001 - no ffmpeg (or no H.264 encoder): the GIF is enough
        warnings.warn(f"{path.name} not written ({type(err).__name__}: {err}); the GIF is", RuntimeWarning,
                      stacklevel=2)
        return None
    finally:
        tmp.unlink(missing_ok=True)


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264 with yuv420p needs them)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h % 2 or w % 2) else frame

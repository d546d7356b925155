"""Video files: GIF and MP4 writers (imageio; MP4 through imageio-ffmpeg)."""

from __future__ import annotations


import os
import warnings
from pathlib import Path

import numpy as np



def _write_mp4(path: Path, frames: list[np.ndarray], fps: float, hold_last_s: float) -> Path | None:
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
                      stacklevel=3)
        return None
    finally:
        tmp.unlink(missing_ok=True)


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264 with yuv420p needs them)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h % 2 or w % 2) else frame

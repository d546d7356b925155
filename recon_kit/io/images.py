"""Image files: 8-bit RGB(A), 16-bit depth PNG, Radiance HDR; resizing helpers; ``DataError`` for bad inputs."""

from __future__ import annotations


import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")


class DataError(ValueError):
    """Bad input data; the message names the offending file and how to fix it."""


def _open_image(path: Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path (relative paths start at {Path.cwd()})")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); re-export it as PNG or move it out of the "
                        "folder") from exc
    return image


def read_rgb(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file as sRGB ``uint8 [H,W,3]`` and its alpha ``uint8 [H,W]`` (``None`` without alpha)."""
    image = _open_image(Path(path))
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # single-channel high bit depth: show as grey
        a = np.asarray(image, dtype=np.float64)
        a = np.clip(a / (65535.0 if a.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, -1), None
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    a = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    return (np.ascontiguousarray(a[..., :3]), np.ascontiguousarray(a[..., 3])) if has_alpha else (a, None)


def read_depth(path: str | Path) -> np.ndarray:
    """A depth map as ``float32 [H,W]`` holding the stored values unchanged (0 = background)."""
    image = _open_image(Path(path))
    if image.mode in ("RGB", "RGBA", "P", "LA", "PA", "CMYK", "YCbCr"):
        image = image.convert("L")
    depth = np.asarray(image).astype(np.float32)
    if depth.ndim != 2:
        raise DataError(f"{path}: a depth map must have one channel, got shape {depth.shape}; save it as greyscale")
    return np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header only."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); re-export it as PNG") from exc


def write_png16(path: str | Path, values: np.ndarray) -> None:
    """Write non-negative integers < 65536 as a 16-bit greyscale PNG."""
    Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)).save(path)


def fit_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """``(w, h)`` with the longer side equal to ``resolution`` and the aspect ratio kept (at least 1 pixel)."""
    s = resolution / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def resize_nearest(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``[H,W,...]`` array (pixel centres aligned), any dtype, no interpolation."""
    H, W = a.shape[:2]
    if (W, H) == (width, height):
        return a
    rows = np.minimum(((np.arange(height) + 0.5) * (H / height)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (W / width)).astype(np.int64), W - 1)
    return a[rows[:, None], cols[None, :]]


def resize_area(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Box-filter resize: ``uint8 [H,W,C]`` images stay uint8, anything else becomes ``float32``."""
    H, W = a.shape[:2]
    if (W, H) == (width, height):
        return a
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] in (3, 4):
        return np.asarray(Image.fromarray(a).resize((width, height), Image.BOX))
    f = a.astype(np.float32)
    if f.ndim == 2:
        return np.asarray(Image.fromarray(f, mode="F").resize((width, height), Image.BOX))
    return np.stack([resize_area(f[..., c], width, height) for c in range(f.shape[2])], -1)


def _depth_to_uint16(depths: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Store depth values as uint16: unchanged when they are integers < 65536, else scaled (returns the scale)."""
    vmax = max((float(d.max()) for d in depths), default=0.0)
    integral = all(np.array_equal(d, np.round(d)) for d in depths)
    scale = 1.0 if integral and vmax <= 65535 else (65535.0 / vmax if vmax > 0 else 1.0)
    out = []
    for d in depths:
        q = np.round(d * scale)
        q[(d > 0) & (q < 1)] = 1  # keep foreground non-zero
        out.append(np.clip(q, 0, 65535).astype(np.uint16))
    return out, scale


def write_hdr(path: str | Path, image: np.ndarray) -> Path:
    """Write a linear float ``[H,W,3]`` image as Radiance RGBE (OpenCV's writer; negatives -> 0).

    The pixels are the ones the kit's own encoder wrote before (tests/test_io.py checks it byte for byte
    after decoding); reading stays :func:`read_hdr` (see there why not OpenCV's reader).
    """
    import cv2

    img = np.maximum(np.asarray(image, dtype=np.float32)[..., :3], 0.0)
    path = Path(path)
    if not cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1])):
        raise OSError(f"could not write {path} (OpenCV's Radiance HDR writer failed); check the folder exists")
    return path


def read_hdr(path: str | Path) -> np.ndarray:
    """Read a Radiance RGBE file (flat or new-style RLE, ``-Y h +X w`` orientation) as linear float32 [H,W,3].

    Kept hand-written: OpenCV's reader decodes a mantissa ``m`` as ``m * 2^(e-136)`` where Radiance (and this
    reader, and every probe the kit wrote) uses the texel centre ``(m + 0.5) * 2^(e-136)``; switching would darken
    every stored probe by up to half a mantissa step (0.39 % of a pixel's peak channel).
    """
    data = Path(path).read_bytes()
    if not data.startswith(b"#?"):
        raise ValueError(f"{path} is not a Radiance HDR file")
    end = data.index(b"\n\n") + 2
    header = data[:end].decode("ascii", "replace")
    if "FORMAT=" in header and "32-bit_rle_rgbe" not in header:
        raise ValueError(f"{path}: only the 32-bit_rle_rgbe format is supported")
    nl = data.index(b"\n", end)
    m = re.fullmatch(r"-Y (\d+) \+X (\d+)", data[end:nl].decode("ascii").strip())
    if m is None:
        raise ValueError(f"{path}: unsupported resolution line {data[end:nl]!r}")
    h, w = int(m.group(1)), int(m.group(2))
    buf, pos = memoryview(data), nl + 1
    out = np.zeros((h, w, 4), dtype=np.uint8)
    for y in range(h):
        if 8 <= w < 32768 and bytes(buf[pos:pos + 2]) == b"\x02\x02" and (buf[pos + 2] << 8 | buf[pos + 3]) == w:
            pos += 4
            for c in range(4):
                x = 0
                while x < w:
                    n = buf[pos]
                    if n > 128:
                        out[y, x:x + n - 128, c] = buf[pos + 1]
                        x, pos = x + n - 128, pos + 2
                    else:
                        out[y, x:x + n, c] = np.frombuffer(buf[pos + 1:pos + 1 + n], np.uint8)
                        x, pos = x + n, pos + 1 + n
        else:
            out[y] = np.frombuffer(buf[pos:pos + 4 * w], np.uint8).reshape(w, 4)
            pos += 4 * w
    e = out[..., 3].astype(np.int32)
    f = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0)
    return ((out[..., :3].astype(np.float64) + 0.5) * f[..., None]).astype(np.float32)


def encode_depth_uint8(depth: np.ndarray) -> np.ndarray:
    """One view's camera depth ``[H,W]`` (0 = background) as 8-bit: near = 255, far = 1, background = 0."""
    fg = depth > 0
    out = np.zeros(depth.shape, np.uint8)
    if not fg.any():
        return out
    lo, hi = float(depth[fg].min()), float(depth[fg].max())
    scaled = (hi - depth[fg]) / (hi - lo) if hi > lo else np.ones(int(fg.sum()))
    out[fg] = np.clip(np.round(1.0 + 254.0 * scaled), 1, 255).astype(np.uint8)
    return out

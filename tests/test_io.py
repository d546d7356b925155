"""File formats after the move to well-kept libraries (issue 13): parity with the kit's previous hand-written
code, byte for byte or to float tolerance. The previous implementations are restated here as references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from recon_kit.evaluate import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, psnr, ssim, ssim_map
from recon_kit.io.images import read_hdr, write_hdr
from recon_kit.io.video import write_gif


def _legacy_rgbe(img: np.ndarray) -> np.ndarray:
    """The kit's former Radiance encoder (frexp of the peak channel, floor of the mantissas)."""
    img = np.maximum(np.asarray(img, dtype=np.float64)[..., :3], 0.0)
    peak = img.max(-1)
    mant, exp = np.frexp(peak)
    scale = np.where(peak > 1e-32, mant * 256.0 / np.maximum(peak, 1e-300), 0.0)
    rgbe = np.zeros(img.shape[:2] + (4,), dtype=np.uint8)
    rgbe[..., :3] = np.clip(np.floor(img * scale[..., None]), 0, 255).astype(np.uint8)
    rgbe[..., 3] = np.where(peak > 1e-32, np.clip(exp + 128, 0, 255), 0).astype(np.uint8)
    return rgbe


def _decode(rgbe: np.ndarray) -> np.ndarray:
    e = rgbe[..., 3:4].astype(np.int32)
    return np.where(e > 0, (rgbe[..., :3] + 0.5) * np.ldexp(1.0, e - 136), 0.0).astype(np.float32)


@pytest.mark.parametrize("shape", [(37, 53), (5, 6), (3, 300)])
def test_hdr_writer_matches_the_former_encoder(tmp_path, shape):
    rng = np.random.default_rng(0)
    img = (rng.random(shape + (3,)) ** 3 * 50).astype(np.float32)
    img[0, 0] = 0.0
    img[-1, -1] = [1e-3, 2e3, 5.0]
    img[0, -1] = [-1.0, 0.5, 0.25]
    back = read_hdr(write_hdr(tmp_path / "a.hdr", img))
    np.testing.assert_array_equal(back, _decode(_legacy_rgbe(img)))


def _legacy_ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The kit's former SSIM: separable Gaussian blur over the valid region, in float64."""
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    c = a.shape[-1]
    gx, gy = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    x, y = a.double().clamp(0, 1).permute(2, 0, 1)[None], b.double().clamp(0, 1).permute(2, 0, 1)[None]
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s[0].mean(0)


def test_ssim_from_torchmetrics_matches_the_former_code():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(33, 47, 3, generator=g)
    b = (a + 0.2 * torch.randn(33, 47, 3, generator=g)).clamp(0, 1)
    ref = _legacy_ssim_map(a, b)
    torch.testing.assert_close(ssim_map(a, b).double(), ref, atol=1e-12, rtol=0)
    assert ssim(a, b) == pytest.approx(float(ref.mean()), abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_psnr_agrees_with_torchmetrics():
    from torchmetrics.functional.image import peak_signal_noise_ratio

    g = torch.Generator().manual_seed(2)
    a = torch.rand(16, 20, 3, generator=g, dtype=torch.float64)
    b = (a + 0.05 * torch.randn(16, 20, 3, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert psnr(a, b) == pytest.approx(float(peak_signal_noise_ratio(b, a, data_range=1.0)), abs=1e-5)  # the kit computes in float32


def _read_gif(path):
    im = Image.open(path)
    frames, durations = [], []
    for i in range(im.n_frames):
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB")))
        durations.append(im.info.get("duration"))
    return np.stack(frames), durations, im.info.get("loop")


def test_gif_writer_matches_the_former_pil_writer(tmp_path):
    rng = np.random.default_rng(0)
    frames = [(rng.random((48, 64, 3)) * 255).astype(np.uint8) for _ in range(5)]
    frames[2][:] = 30
    pil = [Image.fromarray(f) for f in frames]
    pil[0].save(tmp_path / "old.gif", format="GIF", save_all=True, append_images=pil[1:],
                duration=[250] * 4 + [1250], loop=0, optimize=False, disposal=1)
    new = write_gif(tmp_path / "new.gif", frames, fps=4.0, hold_last_s=1.0)
    old_frames, old_d, old_loop = _read_gif(tmp_path / "old.gif")
    new_frames, new_d, new_loop = _read_gif(new)
    np.testing.assert_array_equal(new_frames, old_frames)
    assert (new_d, new_loop) == (old_d, old_loop) and not list(tmp_path.glob(".*tmp*"))

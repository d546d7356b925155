"""Training losses: colour (log-L1 on tone-mapped sRGB), depth."""

from __future__ import annotations



import torch
from recon_kit.color import tonemap_srgb_log




def color_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "logl1":
        return (tonemap_srgb_log(pred) - tonemap_srgb_log(target)).abs().mean()
    if kind == "l1":
        return (pred - target).abs().mean()
    return ((pred - target) ** 2).mean()


def depth_loss(pred: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale/shift-invariant depth loss: per view, fit ``pred ~ a * ref + b`` by least squares over pixels where
    both have depth (the capture's depth encoding is unknown, 8-bit and possibly inverted), then the mean
    absolute residual. The fit is detached so it acts as a fixed per-view calibration at each step."""
    w = valid.flatten(1).float()
    x, y = ref.flatten(1), pred.flatten(1)
    n = w.sum(1).clamp_min(1.0)
    with torch.no_grad():
        mx, my = (w * x).sum(1) / n, (w * y).sum(1) / n
        vx = (w * (x - mx[:, None]) ** 2).sum(1) / n
        cxy = (w * (x - mx[:, None]) * (y - my[:, None])).sum(1) / n
        a = cxy / vx.clamp_min(1e-12)
        b = my - a * mx
    resid = (y - (a[:, None] * x + b[:, None])).abs() * w
    return (resid.sum(1) / n).mean()

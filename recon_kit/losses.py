"""Training losses: colour (log-L1 on tone-mapped sRGB), depth, and the per-pixel weights they use."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from recon_kit.color import linear_to_srgb, tonemap_srgb_log
from recon_kit.data.dataset import ViewSet


def color_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "logl1":
        return (tonemap_srgb_log(pred) - tonemap_srgb_log(target)).abs().mean()
    if kind == "l1":
        return (pred - target).abs().mean()
    return ((pred - target) ** 2).mean()


def smoothness_ramp(it: int) -> float:
    """Warm-up factor of the kd smoothness and occlusion terms at a pass's step ``it``: 0 to 1 over 500 steps."""
    return min(1.0, it / 500.0)


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


def edge_weights(views: ViewSet, edge_px: float, tol: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(interior, color_weight)`` [N,H,W] for the depth and colour losses.

    ``interior``: mask pixels farther than ``edge_px`` from the mask's edge. ``color_weight``: 1 on the interior,
    and in the edge band only where the photo differs from its own background colour (the median of its border)
    by more than ``tol`` (0-255, sRGB) in some channel. Masks of a real capture sit a few pixels off the
    photo's object, and background pixels inside them would otherwise be learned as albedo ("white fringes").
    """
    mask = views.mask > 0.5
    r = int(round(edge_px))
    if r <= 0:
        return mask, mask.float()
    interior = mask & (F.max_pool2d((~mask).float()[:, None], 2 * r + 1, 1, r)[:, 0] == 0)
    rgb_srgb = linear_to_srgb(views.rgb_linear.clamp(0, 1)) * 255
    b = max(1, round(0.02 * min(rgb_srgb.shape[1:3])))
    frame = torch.cat([rgb_srgb[:, :b].flatten(1, 2), rgb_srgb[:, -b:].flatten(1, 2),
                       rgb_srgb[:, :, :b].flatten(1, 2), rgb_srgb[:, :, -b:].flatten(1, 2)], 1)
    background = frame.median(1).values
    photo_fg = (rgb_srgb - background[:, None, None]).abs().amax(-1) > tol
    return interior, (mask & (interior | photo_fg)).float()

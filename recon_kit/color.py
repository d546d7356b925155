"""Colour: the sRGB transfer function (numpy or torch) and tone maps. The one home of sRGB in the kit."""

from __future__ import annotations


import numpy as np
import torch


def srgb_to_linear(x):
    """sRGB-encoded values in [0, 1] to linear RGB (IEC 61966-2-1). Accepts numpy arrays or torch tensors."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4).astype(x.dtype)


def linear_to_srgb(x):
    """Linear RGB to sRGB encoding (inverse of :func:`srgb_to_linear`). Accepts numpy arrays or torch tensors."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055).astype(x.dtype)


def tonemap_srgb_log(x: torch.Tensor) -> torch.Tensor:
    """nvdiffrec's tonemap for the log-L1 loss: sRGB(log(x + 1)) of linear HDR colour."""
    return linear_to_srgb(torch.log(x.clamp(0, 65535) + 1))

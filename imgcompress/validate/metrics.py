"""Image quality: PSNR and SSIM (torchmetrics), on images normalised to [0, 1].

PSNR is capped at `PSNR_CAP` dB so identical outputs give a finite number in JSON.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..data import rgb_to_y

PSNR_CAP = 100.0


def normalise(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Map ``value_range`` to [0, 1] and clamp (what a viewer would display)."""
    lo, hi = value_range
    return ((x.float() - lo) / (hi - lo)).clamp(0.0, 1.0)


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border:-border, border:-border] if border > 0 else x


def psnr(a: torch.Tensor, b: torch.Tensor, *, border: int = 0) -> float:
    """PSNR in dB of one image pair in [0, 1], (1, C, H, W); ``border`` pixels cropped."""
    a, b = _crop(a, border).double(), _crop(b, border).double()
    if torch.equal(a, b):
        return PSNR_CAP
    v = float(peak_signal_noise_ratio(a, b, data_range=1.0))
    return min(v, PSNR_CAP)


def ssim(a: torch.Tensor, b: torch.Tensor, *, border: int = 0) -> float:
    """SSIM (Gaussian window 11, sigma 1.5) of one image pair in [0, 1], (1, C, H, W)."""
    a, b = _crop(a, border).double(), _crop(b, border).double()
    k = 11 if min(a.shape[-2:]) >= 11 else (min(a.shape[-2:]) // 2) * 2 - 1
    sigma = 1.5 * k / 11
    return float(structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=k, sigma=sigma))


def y_channel(x: torch.Tensor) -> torch.Tensor:
    """The BT.601 luma of an RGB image in [0, 1]; single-channel images pass through."""
    return rgb_to_y(x) if x.shape[1] == 3 else x

"""Image quality: PSNR and SSIM on images normalised to [0, 1].

SSIM is torchmetrics' (Gaussian window 11, sigma 1.5), averaged over the valid part of the
SSIM map as scikit-image does (a border of half a window dropped). PSNR is 10·log10(1/MSE)
in float64, capped at `PSNR_CAP` dB so identical outputs give a finite number in JSON.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

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
    mse = float(((_crop(a, border).double() - _crop(b, border).double()) ** 2).mean())
    if mse == 0.0:
        return PSNR_CAP
    return min(10.0 * math.log10(1.0 / mse), PSNR_CAP)


def ssim(a: torch.Tensor, b: torch.Tensor, *, border: int = 0) -> float:
    """SSIM (Gaussian window 11, sigma 1.5) of one image pair in [0, 1], (1, C, H, W).

    Computed in float32 (float64 convolutions are ~10× slower on CPU; the difference is
    below 1e-6), on the window-valid part of the map like scikit-image.
    """
    a, b = _crop(a, border).float(), _crop(b, border).float()
    k = 11 if min(a.shape[-2:]) >= 11 else max(3, (min(a.shape[-2:]) // 2) * 2 - 1)
    sigma = 1.5 * k / 11
    _, full = structural_similarity_index_measure(
        a, b, data_range=1.0, kernel_size=k, sigma=sigma, return_full_image=True
    )
    pad = (k - 1) // 2
    valid = full[..., pad:full.shape[-2] - pad, pad:full.shape[-1] - pad]
    return float(valid.double().mean())


def pair_scores(outs: list[torch.Tensor], refs: list[torch.Tensor], *, border: int = 0) -> list[tuple[float, float]]:
    """(PSNR, SSIM) of each pair of images in [0, 1]."""
    return [(psnr(a, b, border=border), ssim(a, b, border=border)) for a, b in zip(outs, refs)]


def mean_scores(scores: list[tuple[float, float]]) -> dict[str, float]:
    """``{"psnr_db", "ssim"}``: the means of `pair_scores`."""
    return {"psnr_db": sum(p for p, _ in scores) / len(scores), "ssim": sum(s for _, s in scores) / len(scores)}


def y_channel(x: torch.Tensor) -> torch.Tensor:
    """The BT.601 luma of an RGB image in [0, 1]; single-channel images pass through."""
    return rgb_to_y(x) if x.shape[1] == 3 else x

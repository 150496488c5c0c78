"""PSNR and SSIM agree with scikit-image, the reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from imgcompress.data import bundled_images_dir, load_rgb, rgb_to_y, to_tensor
from imgcompress.validate import metrics
from imgcompress.validate.metrics import PSNR_CAP, normalise, psnr, ssim, y_channel


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).double().numpy()


def _sk_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(structural_similarity(_np(a), _np(b), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=1, channel_axis=-1))


def _sk_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(_np(a), _np(b), data_range=1))


def _random_pair(shape: tuple[int, ...], sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    return a, (a + sigma * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)


def _real_pair(h: int, w: int, sigma: float, *, image: str = "astronaut.png", gray: bool = False,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop of a bundled photograph, and the same crop with noise (what a compressed output looks like)."""
    a = to_tensor(load_rgb(bundled_images_dir() / image)).double()[..., 40:40 + h, 60:60 + w]
    if gray:
        a = rgb_to_y(a)
    g = torch.Generator().manual_seed(seed)
    return a, (a + sigma * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)


# --- PSNR ---------------------------------------------------------------------------------------

PSNR_CASES = [((1, 3, 64, 48), 0.05), ((1, 1, 40, 40), 0.2), ((1, 3, 28, 28), 0.01), ((1, 3, 9, 13), 0.1)]


@pytest.mark.parametrize(("shape", "sigma"), PSNR_CASES)
def test_psnr_matches_skimage_on_random_images(shape: tuple[int, ...], sigma: float) -> None:
    a, b = _random_pair(shape, sigma, seed=1)
    assert psnr(a, b) == pytest.approx(_sk_psnr(a, b), abs=1e-5)


@pytest.mark.parametrize("gray", [False, True])
def test_psnr_matches_skimage_on_real_images(gray: bool) -> None:
    a, b = _real_pair(96, 128, 0.03, gray=gray)
    assert 25 < psnr(a, b) < 40
    assert psnr(a, b) == pytest.approx(_sk_psnr(a, b), abs=1e-5)


def test_psnr_matches_skimage_to_a_micro_decibel() -> None:
    a, b = _real_pair(96, 128, 0.03)
    assert psnr(a, b) == pytest.approx(_sk_psnr(a, b), abs=1e-6)


def test_psnr_is_the_mse_formula() -> None:
    a = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    b = a.clone()
    b[..., 0, 0] = 0.4  # mse = 0.16 / 16 = 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-5)
    assert psnr(a.float(), b.float()) == pytest.approx(20.0, abs=1e-4)


def test_identical_images_give_the_cap() -> None:
    a, _ = _random_pair((1, 3, 16, 16), 0.0, seed=2)
    assert psnr(a, a.clone()) == PSNR_CAP == 100.0
    assert psnr(a, a + 1e-9) == PSNR_CAP  # finite, and never above the cap
    assert math.isfinite(psnr(a, a))
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-9)


# --- SSIM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "sigma"), [((1, 3, 64, 48), 0.05), ((1, 1, 100, 80), 0.05), ((1, 3, 96, 96), 0.3)])
def test_ssim_matches_skimage_on_random_images(shape: tuple[int, ...], sigma: float) -> None:
    a, b = _random_pair(shape, sigma, seed=3)
    assert ssim(a, b) == pytest.approx(_sk_ssim(a, b), abs=1e-3)




@pytest.mark.parametrize(("image", "gray"), [("astronaut.png", False), ("coffee.png", False), ("chelsea.png", True)])
def test_ssim_matches_skimage_on_real_images(image: str, gray: bool) -> None:
    a, b = _real_pair(96, 128, 0.03, image=image, gray=gray)
    assert ssim(a, b) == pytest.approx(_sk_ssim(a, b), abs=1e-3)


def test_ssim_matches_skimage_on_small_images() -> None:
    a, b = _real_pair(28, 28, 0.03)
    assert ssim(a, b) == pytest.approx(_sk_ssim(a, b), abs=1e-3)


def test_ssim_orders_by_distortion() -> None:
    a, b1 = _real_pair(64, 64, 0.01)
    _, b2 = _real_pair(64, 64, 0.1)
    assert 1.0 > ssim(a, b1) > ssim(a, b2) > 0.0


@pytest.mark.parametrize("side", [28, 11, 8, 5, 3])
def test_small_images_give_a_finite_ssim(side: int) -> None:
    a, b = _random_pair((1, 3, side, side), 0.05, seed=4)
    v = ssim(a, b)
    assert math.isfinite(v) and -1.0 <= v < 1.0
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-9)
    assert math.isfinite(psnr(a, b))


# --- border crop -----------------------------------------------------------------------------------


def test_border_crop_ignores_the_border() -> None:
    a, _ = _random_pair((1, 3, 32, 32), 0.0, seed=5)
    b = a.clone()
    b[..., :3, :] = 1 - b[..., :3, :]
    b[..., :, -3:] = 0.0
    assert psnr(a, b, border=3) == PSNR_CAP
    assert ssim(a, b, border=3) == pytest.approx(1.0, abs=1e-9)
    assert psnr(a, b) < 20
    assert ssim(a, b) < 0.995 and ssim(a, b) == pytest.approx(_sk_ssim(a, b), abs=1e-3)


def test_border_crop_matches_skimage_on_the_cropped_image() -> None:
    a, b = _random_pair((1, 3, 40, 36), 0.05, seed=6)
    c = (..., slice(4, -4), slice(4, -4))
    assert psnr(a, b, border=4) == pytest.approx(_sk_psnr(a[c], b[c]), abs=1e-5)
    assert ssim(a, b, border=4) == pytest.approx(_sk_ssim(a[c], b[c]), abs=1e-3)
    assert psnr(a, b, border=0) == pytest.approx(_sk_psnr(a, b), abs=1e-5)


# --- normalise and the Y channel -------------------------------------------------------------------


@pytest.mark.parametrize(("rng", "values", "expected"), [
    ((-1.0, 1.0), [-1.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 0.75]),
    ((0.0, 255.0), [0.0, 51.0, 255.0], [0.0, 0.2, 1.0]),
    ((0.0, 1.0), [-0.5, 0.25, 1.5], [0.0, 0.25, 1.0]),  # clamped like a viewer would
    ((-1.0, 1.0), [-3.0, 3.0], [0.0, 1.0]),
])
def test_normalise(rng: tuple[float, float], values: list[float], expected: list[float]) -> None:
    out = normalise(torch.tensor(values), rng)
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx(expected, abs=1e-6)


def test_normalise_accepts_half_and_ints() -> None:
    assert normalise(torch.tensor([0, 255], dtype=torch.uint8), (0, 255)).tolist() == [0.0, 1.0]
    assert normalise(torch.tensor([-1.0, 1.0], dtype=torch.float16), (-1, 1)).tolist() == [0.0, 1.0]


def test_y_channel() -> None:
    x = torch.rand(1, 3, 5, 5)
    assert torch.equal(y_channel(x), rgb_to_y(x)) and y_channel(x).shape == (1, 1, 5, 5)
    g = torch.rand(1, 1, 5, 5)
    assert y_channel(g) is g
    assert metrics.y_channel(torch.ones(1, 3, 2, 2)).flatten().tolist() == pytest.approx([235 / 255] * 4, abs=1e-5)

"""The end-to-end check: a deterministic DDIM run per seed, compared at the end."""

from __future__ import annotations

import pytest
import torch

from imgcompress.diffusion import Sampling, scheduler_config
from imgcompress.models.inputs import parts
from imgcompress.recipe import Diffusion
from imgcompress.validate import sampling

pytest.importorskip("diffusers")


def _setup(steps: int = 6, decoder: torch.nn.Module | None = None) -> Sampling:
    conf, _ = scheduler_config(Diffusion())
    return Sampling(conf, steps, [3, 4], (2, 8, 8), [None, None], decoder, 0.5, "d" if decoder else "")


class _Eps(torch.nn.Module):
    """A fixed 'denoiser': a scaled copy of its input, offset by ``bias``; it logs the timesteps."""

    def __init__(self, bias: float = 0.0):
        super().__init__()
        self.bias, self.seen = bias, []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(int(t.item()))
        return 0.5 * x + self.bias


def test_a_run_is_deterministic_and_visits_the_ddim_timesteps() -> None:
    s = _setup(steps=6)
    model = _Eps()
    a = sampling.ddim(lambda b: model(*parts(b)), s, 0)
    assert model.seen == [830, 664, 498, 332, 166, 0]  # 6 DDIM steps over 1000 ("leading" spacing), descending
    b = sampling.ddim(lambda b: model(*parts(b)), s, 0)
    assert torch.equal(a, b) and a.shape == (1, 2, 8, 8)
    assert not torch.equal(a, sampling.ddim(lambda b: model(*parts(b)), s, 1))  # each sample its own noise


def test_drift_is_100_db_for_the_same_model_and_drops_with_a_change() -> None:
    s = _setup()
    ref = sampling.finals(lambda b: _Eps()(*parts(b)), s)
    same = sampling.drift(sampling.finals(lambda b: _Eps()(*parts(b)), s), ref)
    assert same["psnr_db"] == 100.0
    near = sampling.drift(sampling.finals(lambda b: _Eps(1e-3)(*parts(b)), s), ref)
    far = sampling.drift(sampling.finals(lambda b: _Eps(1e-1)(*parts(b)), s), ref)
    assert 100.0 > near["psnr_db"] > far["psnr_db"] and near["ssim"] > far["ssim"]


def test_with_a_decoder_the_decoded_images_are_compared() -> None:
    seen = []

    class Dec(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            seen.append(z)
            return torch.tanh(z[:, :1]).repeat(1, 3, 2, 2)

    s = _setup(decoder=Dec())
    (y, _) = sampling.finals(lambda b: _Eps()(*parts(b)), s)
    assert y.shape == (1, 3, 16, 16) and float(y.min()) >= 0 and float(y.max()) <= 1
    latents = sampling.ddim(lambda b: _Eps()(*parts(b)), s, 0)
    assert torch.allclose(seen[0], latents / 0.5)  # latents / scaling_factor go into the decoder
    assert sampling.describe(s)["compared_on"] == "images decoded by d (latents / scaling_factor 0.5)"

"""End-to-end drift of a diffusion UNet: the same short DDIM sampling run with the original and
with a compressed UNet, from the same seeded noise, compared at the end.

Single-call drift says how far one prediction moves; sampling feeds each prediction back into
the next step, so errors compound (or wash out) over the schedule. The final latents are
compared over ±4 (a unit-variance latent's 4σ), or, when the recipe's ``data.encoder`` is a
diffusers autoencoder folder, the images its decoder makes of them are; a pixel-space UNet's
final images are compared over [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import Sampling, make_scheduler
from ..models.inputs import Batch, pack
from . import metrics

LATENT_RANGE = (-4.0, 4.0)
IMAGE_RANGE = (-1.0, 1.0)


def ddim(run: Callable[[Batch], torch.Tensor], s: Sampling, k: int) -> torch.Tensor:
    """Sample ``k`` of the set-up: ``s.steps`` DDIM steps (eta 0) from seed ``s.seeds[k]``."""
    sched = make_scheduler(s.scheduler_config)
    sched.set_timesteps(s.steps)
    g = torch.Generator().manual_seed(s.seeds[k])
    x = torch.randn((1, *s.latent_shape), generator=g) * float(sched.init_noise_sigma)
    emb = s.embeddings[k]
    with torch.no_grad():
        for t in sched.timesteps:
            parts = [x, torch.tensor([float(t)])] + ([emb] if emb is not None else [])
            pred = run(pack(parts)).float()
            x = sched.step(pred, t, x, eta=0.0).prev_sample
    return x


def shown(s: Sampling, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
    """What is compared (and shown) of final latents: the decoded image, or the latents (a
    pixel-space UNet's: the image)."""
    if s.decoder is None:
        return latents, IMAGE_RANGE if s.pixel_space else LATENT_RANGE
    with torch.no_grad():
        return s.decoder(latents / s.scaling_factor).float(), IMAGE_RANGE


def finals(run: Callable[[Batch], torch.Tensor], s: Sampling) -> list[torch.Tensor]:
    """Each sample's compared output (normalised to [0, 1])."""
    out = []
    for k in range(len(s.seeds)):
        y, rng = shown(s, ddim(run, s, k))
        out.append(metrics.normalise(y, rng))
    return out


def drift(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR/SSIM of the compressed run's samples vs the original's."""
    return metrics.mean_scores(metrics.pair_scores(outs, refs))


def describe(s: Sampling) -> dict[str, object]:
    compared = (f"images decoded by {s.decoder_name} (latents / scaling_factor {s.scaling_factor:g})"
                if s.decoder is not None else "final images (pixel space), over [-1, 1]" if s.pixel_space
                else "final latents, over ±4")
    return {"sampler": "DDIM, eta 0", "steps": s.steps, "samples": len(s.seeds), "seeds": list(s.seeds),
            "latent_shape": list(s.latent_shape), "compared_on": compared,
            "schedule": {k: v for k, v in s.scheduler_config.items() if k != "trained_betas"}}

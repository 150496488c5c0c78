"""The decoder half of the classic MNIST VAE: z → sigmoid(fc4(relu(fc3(z)))) as a square image.

The full checkpoint also holds the encoder (``fc1``, ``fc21``, ``fc22``); `select` drops it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .registry import Arch, StateDict, register
from .spec import GeneratorSpec

_DECODER = ("fc3.weight", "fc3.bias", "fc4.weight", "fc4.bias")
_ENCODER = ("fc1.weight", "fc1.bias", "fc21.weight", "fc21.bias", "fc22.weight", "fc22.bias")


class MnistVAEDecoder(nn.Module):
    """z (N, latent_dim) → image (N, 1, side, side) in [0, 1]."""

    def __init__(self, latent_dim: int = 20, hidden: int = 400, side: int = 28) -> None:
        super().__init__()
        self.side = side
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, side * side)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(self.fc4(torch.relu(self.fc3(z))))
        return out.view(z.shape[0], 1, self.side, self.side)


def _shape(sd: StateDict, key: str) -> tuple[int, ...] | None:
    t = sd.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def detect(sd: StateDict) -> bool:
    if not set(sd) >= set(_DECODER) or not set(sd) <= set(_DECODER + _ENCODER):
        return False
    fc3, fc4 = _shape(sd, "fc3.weight"), _shape(sd, "fc4.weight")
    if fc3 is None or fc4 is None or len(fc3) != 2 or len(fc4) != 2:
        return False
    side = math.isqrt(fc4[0])
    return (
        fc4[1] == fc3[0]
        and side * side == fc4[0]
        and _shape(sd, "fc3.bias") == (fc3[0],)
        and _shape(sd, "fc4.bias") == (fc4[0],)
    )


def infer_kwargs(sd: StateDict) -> dict[str, Any]:
    fc3, fc4 = sd["fc3.weight"].shape, sd["fc4.weight"].shape
    return {"latent_dim": int(fc3[1]), "hidden": int(fc3[0]), "side": math.isqrt(int(fc4[0]))}


def select(sd: StateDict) -> StateDict:
    return {k: v for k, v in sd.items() if k in _DECODER}


def spec(kwargs: dict[str, Any]) -> GeneratorSpec:
    return GeneratorSpec(
        task="generate",
        input_kind="latent",
        color="gray",
        latent_shape=(int(kwargs.get("latent_dim", 20)),),
        output_range=(0.0, 1.0),
        default_size=int(kwargs.get("side", 28)),
    )


ARCH = register(
    Arch(
        name="mnist_vae_decoder",
        build=MnistVAEDecoder,
        spec=spec,
        detect=detect,
        infer_kwargs=infer_kwargs,
        select=select,
        description="MNIST VAE decoder (fc3, fc4); the encoder keys fc1/fc21/fc22 are dropped",
    )
)

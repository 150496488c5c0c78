"""The DCGAN generator of the PyTorch tutorial: a stack of transposed convs from a latent.

Keys: ``main.{3i}`` ConvTranspose (no bias), ``main.{3i+1}`` BatchNorm (with running
stats), the last ConvTranspose followed by Tanh. Output side = 4 · 2^(num_layers-1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import Arch, StateDict, register
from .spec import GeneratorSpec


class DCGANGenerator(nn.Module):
    """z (N, nz, 1, 1) → image (N, nc, S, S) in [-1, 1], widths ngf·2^(num_layers-2) … ngf."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, num_layers: int = 5) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be at least 2, got {num_layers}")
        widths = [ngf * 2 ** (num_layers - 2 - i) for i in range(num_layers - 1)]
        layers: list[nn.Module] = []
        c_in = nz
        for i, w in enumerate(widths):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(c_in, w, 4, stride, pad, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)]
            c_in = w
        layers += [nn.ConvTranspose2d(c_in, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


def _shape(sd: StateDict, key: str) -> tuple[int, ...] | None:
    t = sd.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _conv_shapes(sd: StateDict) -> list[tuple[int, ...]]:
    shapes = []
    while (s := _shape(sd, f"main.{3 * len(shapes)}.weight")) is not None:
        shapes.append(s)
    return shapes


def detect(sd: StateDict) -> bool:
    if any(not k.startswith("main.") for k in sd):
        return False
    convs = _conv_shapes(sd)
    if len(convs) < 2 or any(len(s) != 4 or s[2:] != (4, 4) for s in convs):
        return False
    chained = all(a[1] == b[0] for a, b in zip(convs, convs[1:]))
    halving = all(a[1] == 2 * b[1] for a, b in zip(convs[:-2], convs[1:-1]))
    norms = all(_shape(sd, f"main.{3 * i + 1}.running_var") == (s[1],) for i, s in enumerate(convs[:-1]))
    no_bias = not any(f"main.{3 * i}.bias" in sd for i in range(len(convs)))
    return chained and halving and norms and no_bias


def infer_kwargs(sd: StateDict) -> dict[str, Any]:
    convs = _conv_shapes(sd)
    return {"nz": convs[0][0], "ngf": convs[-1][0], "nc": convs[-1][1], "num_layers": len(convs)}


def spec(kwargs: dict[str, Any]) -> GeneratorSpec:
    nz, nc, n = kwargs.get("nz", 100), kwargs.get("nc", 3), kwargs.get("num_layers", 5)
    return GeneratorSpec(
        task="generate",
        input_kind="latent",
        color="rgb" if nc == 3 else "gray",
        latent_shape=(nz, 1, 1),
        output_range=(-1.0, 1.0),
        default_size=4 * 2 ** (n - 1),
    )


ARCH = register(
    Arch(
        name="dcgan",
        build=DCGANGenerator,
        spec=spec,
        detect=detect,
        infer_kwargs=infer_kwargs,
        description="DCGAN generator (PyTorch tutorial layout: main.0 … ConvTranspose/BatchNorm/ReLU, Tanh)",
    )
)

"""The CycleGAN / pix2pix ResnetGenerator with InstanceNorm (affine, no running stats).

Keys (``model.<index>``): ReflectionPad(3), Conv 7×7 [1], IN [2], ReLU; per downsampling
Conv 3×3 s2 [+0], IN [+1], ReLU; residual blocks ``model.<i>.block.{1,2,5,6}``; per
upsampling ConvTranspose s2 [+0], IN [+1], ReLU; ReflectionPad(3), Conv 7×7, Tanh.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import Arch, StateDict, register
from .spec import GeneratorSpec


def _norm(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, affine=True, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + [pad, conv3, IN, ReLU, pad, conv3, IN](x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """Image → image in [-1, 1]; sides must be a multiple of 2^n_downsampling."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        n_downsampling: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
        c = ngf
        for _ in range(n_downsampling):
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
            c *= 2
        layers += [ResnetBlock(c) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(c // 2),
                nn.ReLU(True),
            ]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _shape(sd: StateDict, key: str) -> tuple[int, ...] | None:
    t = sd.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _layout(sd: StateDict) -> tuple[int, int]:
    """(n_downsampling, n_blocks) read from which ``model.<i>`` indices exist."""
    n_down = 0
    while _shape(sd, f"model.{4 + 3 * n_down}.weight") is not None:
        n_down += 1
    first_block = 4 + 3 * n_down
    n_blocks = 0
    while _shape(sd, f"model.{first_block + n_blocks}.block.1.weight") is not None:
        n_blocks += 1
    return n_down, n_blocks


def detect(sd: StateDict) -> bool:
    first = _shape(sd, "model.1.weight")
    if first is None or len(first) != 4 or first[2:] != (7, 7):
        return False
    n_down, n_blocks = _layout(sd)
    if n_blocks == 0:
        return False
    c = first[0] * 2**n_down
    last = _shape(sd, f"model.{4 + 3 * n_down + n_blocks + 3 * n_down + 1}.weight")
    return (
        _shape(sd, "model.2.weight") == (first[0],)
        and _shape(sd, f"model.{4 + 3 * n_down}.block.1.weight") == (c, c, 3, 3)
        and last is not None
        and len(last) == 4
        and last[1:] == (first[0], 7, 7)
    )


def infer_kwargs(sd: StateDict) -> dict[str, Any]:
    first = sd["model.1.weight"].shape
    n_down, n_blocks = _layout(sd)
    last = sd[f"model.{4 + 3 * n_down + n_blocks + 3 * n_down + 1}.weight"].shape
    return {
        "in_channels": int(first[1]),
        "out_channels": int(last[0]),
        "ngf": int(first[0]),
        "n_blocks": n_blocks,
        "n_downsampling": n_down,
    }


def spec(kwargs: dict[str, Any]) -> GeneratorSpec:
    return GeneratorSpec(
        task="translate",
        color="rgb" if kwargs.get("in_channels", 3) == 3 else "gray",
        input_range=(-1.0, 1.0),
        output_range=(-1.0, 1.0),
        size_multiple=2 ** kwargs.get("n_downsampling", 2),
        default_size=256,
    )


ARCH = register(
    Arch(
        name="cyclegan_resnet",
        build=ResnetGenerator,
        spec=spec,
        detect=detect,
        infer_kwargs=infer_kwargs,
        description="CycleGAN/pix2pix ResnetGenerator (InstanceNorm, reflection padding, residual blocks)",
    )
)

"""FSRCNN (Dong et al. 2016): a fast super-resolution CNN on the luma channel.

Keys follow the widely shared PyTorch port: ``first_part.0`` (Conv 5×5) + PReLU,
``mid_part`` (shrink 1×1, ``m`` × Conv 3×3, expand 1×1, each + PReLU) and
``last_part`` (ConvTranspose 9×9 with stride = scale).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import Arch, StateDict, register
from .spec import GeneratorSpec


class FSRCNN(nn.Module):
    """FSRCNN(d, s, m) upscaling ``in_channels`` channels by ``scale``."""

    def __init__(self, d: int = 56, s: int = 12, m: int = 4, scale: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        self.scale = scale
        self.first_part = nn.Sequential(nn.Conv2d(in_channels, d, 5, padding=2), nn.PReLU(d))
        mid: list[nn.Module] = [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        mid += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(d, in_channels, 9, stride=scale, padding=4, output_padding=scale - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_part(self.mid_part(self.first_part(x)))


def _shape(sd: StateDict, key: str) -> tuple[int, ...] | None:
    t = sd.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _num_mid_convs(sd: StateDict) -> int:
    n = 0
    while _shape(sd, f"mid_part.{2 * n}.weight") is not None:
        n += 1
    return n


def detect(sd: StateDict) -> bool:
    first, mid0, last = (_shape(sd, k) for k in ("first_part.0.weight", "mid_part.0.weight", "last_part.weight"))
    if first is None or mid0 is None or last is None or not len(first) == len(mid0) == len(last) == 4:
        return False
    return (
        first[2:] == (5, 5)
        and mid0[1:] == (first[0], 1, 1)
        and last == (first[0], first[1], 9, 9)
        and _shape(sd, "first_part.1.weight") == (first[0],)
        and _num_mid_convs(sd) >= 2
    )


def infer_kwargs(sd: StateDict) -> dict[str, Any]:
    first = sd["first_part.0.weight"].shape
    return {
        "d": int(first[0]),
        "s": int(sd["mid_part.0.weight"].shape[0]),
        "m": _num_mid_convs(sd) - 2,
        "scale": 2,
        "in_channels": int(first[1]),
    }


def spec(kwargs: dict[str, Any]) -> GeneratorSpec:
    return GeneratorSpec(
        task="sr",
        color="y" if kwargs.get("in_channels", 1) == 1 else "rgb",
        input_range=(0.0, 1.0),
        output_range=(0.0, 1.0),
        scale=int(kwargs.get("scale", 2)),
    )


ARCH = register(
    Arch(
        name="fsrcnn",
        build=FSRCNN,
        spec=spec,
        detect=detect,
        infer_kwargs=infer_kwargs,
        description="FSRCNN super-resolution on the Y channel (first_part / mid_part / last_part)",
        notes=(
            "The scale cannot be read from the weights (the transposed conv's stride is not stored); "
            "it defaults to 2. Override it in the recipe: model: {arch: fsrcnn, kwargs: {scale: 3}}",
        ),
    )
)

"""IMDN (Hui et al. 2019): information multi-distillation network for lightweight SR.

Keys: ``fea_conv``, blocks ``IMDB1``..``IMDBn`` (``c1``..``c5``, ``cca.conv_du``),
``c.0`` (1×1 fusion), ``LR_conv`` and ``upsampler.0`` (+ PixelShuffle).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .registry import Arch, StateDict, register
from .spec import GeneratorSpec

_SLOPE = 0.05


class ContrastChannelAttention(nn.Module):
    """Channel attention driven by per-channel contrast (std + mean over H, W)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class IMDB(nn.Module):
    """Information multi-distillation block: keep a quarter of the channels at each of 4 steps.

    The split sizes are read from the layers' widths at every forward (`splits`), so a block
    whose convs were pruned or resized stays consistent: step ``i`` keeps what the next conv
    does not take.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        distilled = channels // 4
        remaining = channels - distilled
        self.c1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.c2 = nn.Conv2d(remaining, channels, 3, padding=1)
        self.c3 = nn.Conv2d(remaining, channels, 3, padding=1)
        self.c4 = nn.Conv2d(remaining, distilled, 3, padding=1)
        self.act = nn.LeakyReLU(_SLOPE)
        self.cca = ContrastChannelAttention(distilled * 4)
        self.c5 = nn.Conv2d(distilled * 4, channels, 1)

    def splits(self) -> list[tuple[int, int]]:
        """(distilled, remaining) channels after c1, c2 and c3, from the current layer widths."""
        return [
            (src.out_channels - dst.in_channels, dst.in_channels)
            for src, dst in ((self.c1, self.c2), (self.c2, self.c3), (self.c3, self.c4))
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1, s2, s3 = self.splits()
        d1, r1 = torch.split(self.act(self.c1(x)), s1, dim=1)
        d2, r2 = torch.split(self.act(self.c2(r1)), s2, dim=1)
        d3, r3 = torch.split(self.act(self.c3(r2)), s3, dim=1)
        d4 = self.c4(r3)
        return self.c5(self.cca(torch.cat([d1, d2, d3, d4], dim=1))) + x


class IMDN(nn.Module):
    """IMDN with ``num_blocks`` IMDB blocks of ``num_features`` channels, upscaling by ``scale``."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_features: int = 64,
        num_blocks: int = 6,
        scale: int = 4,
    ) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.fea_conv = nn.Conv2d(in_channels, num_features, 3, padding=1)
        for i in range(1, num_blocks + 1):
            self.add_module(f"IMDB{i}", IMDB(num_features))
        self.c = nn.Sequential(nn.Conv2d(num_features * num_blocks, num_features, 1), nn.LeakyReLU(_SLOPE))
        self.LR_conv = nn.Conv2d(num_features, num_features, 3, padding=1)
        self.upsampler = nn.Sequential(
            nn.Conv2d(num_features, out_channels * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        h = fea
        for i in range(1, self.num_blocks + 1):
            h = getattr(self, f"IMDB{i}")(h)
            outs.append(h)
        body = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(body)


def _shape(sd: StateDict, key: str) -> tuple[int, ...] | None:
    t = sd.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _num_blocks(sd: StateDict) -> int:
    n = 0
    while _shape(sd, f"IMDB{n + 1}.c1.weight") is not None:
        n += 1
    return n


def _scale(up_channels: int, out_channels: int) -> int | None:
    if out_channels <= 0 or up_channels % out_channels:
        return None
    r = math.isqrt(up_channels // out_channels)
    return r if r * r * out_channels == up_channels else None


def detect(sd: StateDict) -> bool:
    fea, up, fuse = (_shape(sd, k) for k in ("fea_conv.weight", "upsampler.0.weight", "c.0.weight"))
    if fea is None or up is None or fuse is None or not len(fea) == len(up) == len(fuse) == 4:
        return False
    nf, nb = fea[0], _num_blocks(sd)
    return (
        nb >= 1
        and _shape(sd, "IMDB1.c1.weight") == (nf, nf, 3, 3)
        and _shape(sd, "IMDB1.cca.conv_du.0.weight") is not None
        and _shape(sd, "LR_conv.weight") == (nf, nf, 3, 3)
        and fuse[:2] == (nf, nf * nb)
        and up[1] == nf
        and _scale(up[0], fea[1]) is not None
    )


def infer_kwargs(sd: StateDict) -> dict[str, Any]:
    fea = sd["fea_conv.weight"].shape
    in_channels = int(fea[1])
    return {
        "in_channels": in_channels,
        "out_channels": in_channels,
        "num_features": int(fea[0]),
        "num_blocks": _num_blocks(sd),
        "scale": _scale(int(sd["upsampler.0.weight"].shape[0]), in_channels),
    }


def spec(kwargs: dict[str, Any]) -> GeneratorSpec:
    return GeneratorSpec(
        task="sr",
        color="rgb" if kwargs.get("in_channels", 3) == 3 else "gray",
        scale=int(kwargs.get("scale", 4)),
        size_multiple=1,
    )


ARCH = register(
    Arch(
        name="imdn",
        build=IMDN,
        spec=spec,
        detect=detect,
        infer_kwargs=infer_kwargs,
        description="IMDN lightweight RGB super-resolution (IMDB blocks with contrast-aware attention)",
        notes=("Output channels are assumed equal to input channels when reading the scale from the upsampler.",),
    )
)

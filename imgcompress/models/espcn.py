"""A small ESPCN-style super-resolution net, the repository's example model.

``head`` Conv 5×5 + ReLU, ``body.{2i}`` Conv 3×3 + ReLU (``num_body`` of them),
``tail`` Conv 3×3 to channels·scale², then PixelShuffle(scale).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .registry import Arch, StateDict, register
from .spec import GeneratorSpec


class ESPCN(nn.Module):
    """Image (N, channels, H, W) in [0, 1] → (N, channels, H·scale, W·scale)."""

    def __init__(self, scale: int = 2, channels: int = 3, features: int = 32, num_body: int = 1) -> None:
        super().__init__()
        self.head = nn.Conv2d(channels, features, 5, padding=2)
        body: list[nn.Module] = []
        for _ in range(num_body):
            body += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*body)
        self.tail = nn.Conv2d(features, channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.tail(self.body(torch.relu(self.head(x)))))


def _shape(sd: StateDict, key: str) -> tuple[int, ...] | None:
    t = sd.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _num_body(sd: StateDict) -> int:
    n = 0
    while _shape(sd, f"body.{2 * n}.weight") is not None:
        n += 1
    return n


def _scale(sd: StateDict) -> int:
    r2, rem = divmod(sd["tail.weight"].shape[0], sd["head.weight"].shape[1])
    r = math.isqrt(r2)
    return r if rem == 0 and r * r == r2 else 0


def detect(sd: StateDict) -> bool:
    if any(k.split(".", 1)[0] not in ("head", "body", "tail") for k in sd):
        return False
    head, tail = _shape(sd, "head.weight"), _shape(sd, "tail.weight")
    if head is None or tail is None or len(head) != 4 or len(tail) != 4 or head[2:] != (5, 5):
        return False
    f = head[0]
    body_ok = all(_shape(sd, f"body.{2 * i}.weight") == (f, f, 3, 3) for i in range(_num_body(sd)))
    return body_ok and tail[1:] == (f, 3, 3) and _scale(sd) >= 1


def infer_kwargs(sd: StateDict) -> dict[str, Any]:
    head = sd["head.weight"].shape
    return {"scale": _scale(sd), "channels": int(head[1]), "features": int(head[0]), "num_body": _num_body(sd)}


def spec(kwargs: dict[str, Any]) -> GeneratorSpec:
    return GeneratorSpec(
        task="sr",
        color="rgb" if kwargs.get("channels", 3) == 3 else "gray",
        scale=int(kwargs.get("scale", 2)),
    )


ARCH = register(
    Arch(
        name="espcn",
        build=ESPCN,
        spec=spec,
        detect=detect,
        infer_kwargs=infer_kwargs,
        description="Small ESPCN-style RGB super-resolution (head / body / tail + PixelShuffle)",
    )
)

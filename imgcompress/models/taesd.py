"""TAESD-family tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2): the decoder is the
generator, the encoder turns images into realistic latents for calibration and evaluation.

Both are plain ``Sequential``s of 3×3 convs (padding 1) and residual ``Block``s of one width:

- decoder: [0] clamp ``tanh(x / 3) · 3``, [1] Conv(latent → C), [2] ReLU, then per stage its
  Blocks, and between stages [Upsample ×2 (nearest), Conv(C → C, no bias)]; a last
  Conv(C → image channels). TAEF2: blocks 3, 3, 3, 1 → ×8; output ≈ RGB in [0, 1].
- encoder: [0] Conv(image channels → C), per stage its Blocks with [Conv(C → C, stride 2, no
  bias)] between stages, a last Conv(C → latent). TAEF2: blocks 1, 3, 3, 3 → ÷8.
- Block: ``ReLU(conv(x) + x)`` with ``conv`` = Conv3, ReLU, Conv3, ReLU, Conv3; some stages'
  blocks (TAEF2: the decoder's first, the encoder's last) first add ``pool(x)`` to ``x``, where
  ``pool`` = 1×1 Conv (C → P, no bias), GroupNorm(G, P), ReLU, 1×1 Conv (P → C, no bias).

Keys are the ``Sequential`` indices (``1.weight``, ``3.conv.0.weight``, ``3.pool.1.bias`` …).
A whole TAESD module's state dict (``encoder.*`` + ``decoder.*``) is read too: `select` keeps
the decoder's half. The GroupNorm group count is not in the weights (4, as TAEF2 has).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..checkpoint import read_checkpoint
from ..errors import CheckpointError
from .registry import Arch, StateDict, register
from .spec import GeneratorSpec

DEFAULT_POOL_GROUPS = 4
DEFAULT_LATENT_SIDE = 32  # 256 px out of a ×8 decoder: the side used for export, MACs and speed
_TOP = re.compile(r"^(\d+)\.")

Shapes = dict[str, tuple[int, ...]]


class Clamp(nn.Module):
    """Soft clamp of the latent to about ±3: ``tanh(x / 3) · 3``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _conv3(c_in: int, c_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """``ReLU(conv(x) + x)``, after ``x = x + pool(x)`` when the block has a pool."""

    def __init__(self, channels: int, pool_channels: int = 0, pool_groups: int = DEFAULT_POOL_GROUPS) -> None:
        super().__init__()
        c = channels
        self.conv = nn.Sequential(_conv3(c, c), nn.ReLU(), _conv3(c, c), nn.ReLU(), _conv3(c, c))
        self.pool = None
        if pool_channels:
            self.pool = nn.Sequential(
                nn.Conv2d(c, pool_channels, 1, bias=False),
                nn.GroupNorm(pool_groups, pool_channels),
                nn.ReLU(),
                nn.Conv2d(pool_channels, c, 1, bias=False),
            )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def _blocks(n: int, channels: int, pooled: bool, pool_channels: int, pool_groups: int) -> list[nn.Module]:
    return [Block(channels, pool_channels if pooled else 0, pool_groups) for _ in range(n)]


class TAESDDecoder(nn.Sequential):
    """Latent (N, latent_channels, h, w) → image (N, out_channels, 2^k·h, 2^k·w), k = len(blocks) − 1."""

    def __init__(
        self,
        latent_channels: int = 32,
        channels: int = 64,
        out_channels: int = 3,
        blocks: Sequence[int] = (3, 3, 3, 1),
        pool_stages: Sequence[int] = (0,),
        pool_channels: int = 256,
        pool_groups: int = DEFAULT_POOL_GROUPS,
    ) -> None:
        layers: list[nn.Module] = [Clamp(), _conv3(latent_channels, channels), nn.ReLU()]
        for s, n in enumerate(blocks):
            if s:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv3(channels, channels, bias=False)]
            layers += _blocks(n, channels, s in pool_stages, pool_channels, pool_groups)
        layers.append(_conv3(channels, out_channels))
        super().__init__(*layers)


class TAESDEncoder(nn.Sequential):
    """Image (N, in_channels, H, W) in [0, 1] → latent (N, latent_channels, H/2^k, W/2^k)."""

    def __init__(
        self,
        latent_channels: int = 32,
        channels: int = 64,
        in_channels: int = 3,
        blocks: Sequence[int] = (1, 3, 3, 3),
        pool_stages: Sequence[int] = (3,),
        pool_channels: int = 256,
        pool_groups: int = DEFAULT_POOL_GROUPS,
    ) -> None:
        layers: list[nn.Module] = [_conv3(in_channels, channels)]
        for s, n in enumerate(blocks):
            if s:
                layers.append(_conv3(channels, channels, stride=2, bias=False))
            layers += _blocks(n, channels, s in pool_stages, pool_channels, pool_groups)
        layers.append(_conv3(channels, latent_channels))
        super().__init__(*layers)

    @property
    def factor(self) -> int:
        return 2 ** sum(1 for m in self if isinstance(m, nn.Conv2d) and m.stride == (2, 2))

    @property
    def latent_channels(self) -> int:
        last = self[-1]
        assert isinstance(last, nn.Conv2d)
        return last.out_channels


# --- shapes: what a state dict of given kwargs holds (pure, no module built) ---------------


def _block_shapes(i: int, c: int, pool: int) -> Shapes:
    out: Shapes = {}
    for j in (0, 2, 4):
        out[f"{i}.conv.{j}.weight"] = (c, c, 3, 3)
        out[f"{i}.conv.{j}.bias"] = (c,)
    if pool:
        out |= {f"{i}.pool.0.weight": (pool, c, 1, 1), f"{i}.pool.1.weight": (pool,),
                f"{i}.pool.1.bias": (pool,), f"{i}.pool.3.weight": (c, pool, 1, 1)}
    return out


def decoder_shapes(kw: dict[str, Any]) -> Shapes:
    c, pool = kw["channels"], kw["pool_channels"]
    out: Shapes = {"1.weight": (c, kw["latent_channels"], 3, 3), "1.bias": (c,)}
    i = 3
    for s, n in enumerate(kw["blocks"]):
        if s:
            out[f"{i + 1}.weight"] = (c, c, 3, 3)
            i += 2
        for _ in range(n):
            out |= _block_shapes(i, c, pool if s in kw["pool_stages"] else 0)
            i += 1
    out |= {f"{i}.weight": (kw["out_channels"], c, 3, 3), f"{i}.bias": (kw["out_channels"],)}
    return out


def encoder_shapes(kw: dict[str, Any]) -> Shapes:
    c, pool = kw["channels"], kw["pool_channels"]
    out: Shapes = {"0.weight": (c, kw["in_channels"], 3, 3), "0.bias": (c,)}
    i = 1
    for s, n in enumerate(kw["blocks"]):
        if s:
            out[f"{i}.weight"] = (c, c, 3, 3)
            i += 1
        for _ in range(n):
            out |= _block_shapes(i, c, pool if s in kw["pool_stages"] else 0)
            i += 1
    out |= {f"{i}.weight": (kw["latent_channels"], c, 3, 3), f"{i}.bias": (kw["latent_channels"],)}
    return out


def _shapes(sd: StateDict) -> Shapes | None:
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        return None
    return {k: tuple(v.shape) for k, v in sd.items()}


def _layout(shapes: Shapes, first: int) -> tuple[list[int], list[int], int] | None:
    """Walk the top-level indices from ``first``: (blocks per stage, pooled stages, pool width)
    where a stage ends at a plain conv (the stage change); the last plain conv is the output."""
    tops = sorted({int(m.group(1)) for k in shapes if (m := _TOP.match(k))})
    blocks, pooled, pool = [0], [], 0
    for i in tops:
        if i < first:
            continue
        if f"{i}.conv.0.weight" in shapes:
            blocks[-1] += 1
            if f"{i}.pool.0.weight" in shapes:
                pool = shapes[f"{i}.pool.0.weight"][0]
                if len(blocks) - 1 not in pooled:
                    pooled.append(len(blocks) - 1)
        elif f"{i}.weight" in shapes and i != tops[-1]:
            blocks.append(0)
        elif i != tops[-1]:
            return None
    return blocks, pooled, pool


def _decoder_kwargs(shapes: Shapes) -> dict[str, Any] | None:
    first, tops = shapes.get("1.weight"), [int(m.group(1)) for k in shapes if (m := _TOP.match(k))]
    if first is None or len(first) != 4 or not tops or min(tops) != 1:
        return None
    lay = _layout(shapes, 3)
    if lay is None:
        return None
    blocks, pooled, pool = lay
    last = shapes.get(f"{max(tops)}.weight")
    if last is None or len(last) != 4:
        return None
    return {"latent_channels": first[1], "channels": first[0], "out_channels": last[0], "blocks": blocks,
            "pool_stages": pooled, "pool_channels": pool, "pool_groups": DEFAULT_POOL_GROUPS}


def _encoder_kwargs(shapes: Shapes) -> dict[str, Any] | None:
    first, tops = shapes.get("0.weight"), [int(m.group(1)) for k in shapes if (m := _TOP.match(k))]
    if first is None or len(first) != 4 or not tops or min(tops) != 0:
        return None
    lay = _layout(shapes, 1)
    if lay is None:
        return None
    blocks, pooled, pool = lay
    last = shapes.get(f"{max(tops)}.weight")
    if last is None or len(last) != 4:
        return None
    return {"latent_channels": last[0], "channels": first[0], "in_channels": first[1], "blocks": blocks,
            "pool_stages": pooled, "pool_channels": pool, "pool_groups": DEFAULT_POOL_GROUPS}


def _fits(kw: dict[str, Any] | None, shapes: Shapes, expected: Any) -> bool:
    return kw is not None and all(kw["blocks"]) and expected(kw) == shapes


def _half(sd: StateDict, name: str) -> StateDict:
    """The ``name`` half of a whole-autoencoder state dict (``encoder.*`` / ``decoder.*``), or ``sd``."""
    prefix = f"{name}."
    if any(k.startswith(prefix) for k in sd) and all(k.startswith(("encoder.", "decoder.")) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def detect(sd: StateDict) -> bool:
    part = _half(sd, "decoder")
    shapes = _shapes(part)
    return shapes is not None and _fits(_decoder_kwargs(shapes), shapes, decoder_shapes)


def detect_encoder(sd: StateDict) -> bool:
    part = _half(sd, "encoder")
    shapes = _shapes(part)
    return shapes is not None and _fits(_encoder_kwargs(shapes), shapes, encoder_shapes)


def select(sd: StateDict) -> StateDict:
    return _half(sd, "decoder")


def infer_kwargs(sd: StateDict) -> dict[str, Any]:
    shapes = _shapes(select(sd)) or {}
    kw = _decoder_kwargs(shapes)
    if kw is None:
        raise ValueError("not a TAESD decoder state dict")
    return kw


def infer_encoder_kwargs(sd: StateDict) -> dict[str, Any]:
    shapes = _shapes(_half(sd, "encoder")) or {}
    kw = _encoder_kwargs(shapes)
    if kw is None:
        raise ValueError("not a TAESD encoder state dict")
    return kw


def spec(kwargs: dict[str, Any]) -> GeneratorSpec:
    latent = int(kwargs.get("latent_channels", 32))
    out = int(kwargs.get("out_channels", 3))
    n_up = len(kwargs.get("blocks", (3, 3, 3, 1))) - 1
    return GeneratorSpec(
        task="generate",
        input_kind="latent",
        color="rgb" if out == 3 else "gray",
        latent_shape=(latent, DEFAULT_LATENT_SIDE, DEFAULT_LATENT_SIDE),
        spatial_latent=True,
        output_range=(0.0, 1.0),
        scale=2**n_up,
        default_size=DEFAULT_LATENT_SIDE,
    )


def load_encoder(path: str) -> TAESDEncoder:
    """The TAESD-family encoder in ``path`` (its own file, or a whole autoencoder's), eval mode.

    Raises `CheckpointError` when the file is unreadable or holds no such encoder."""
    raw = read_checkpoint(path)
    sd = _half(raw.state_dict, "encoder")
    if not detect_encoder(sd):
        raise CheckpointError(
            f"{raw.path.name}: not a TAESD-family encoder (first key {next(iter(raw.state_dict), None)!r}); "
            "point data.encoder at the encoder of the decoder's tiny autoencoder, e.g. taef2_encoder.pth"
        )
    encoder = TAESDEncoder(**infer_encoder_kwargs(sd))
    encoder.load_state_dict(sd, strict=True)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


ARCH = register(
    Arch(
        name="taesd_decoder",
        build=TAESDDecoder,
        spec=spec,
        detect=detect,
        infer_kwargs=infer_kwargs,
        select=select,
        description="TAESD-family tiny VAE decoder (TAESD/XL/3, TAEF1, TAEF2): latent (C, h, w) → RGB ×8",
        notes=(f"GroupNorm groups are not in the weights: {DEFAULT_POOL_GROUPS} assumed (as TAEF2)",
               "feed it realistic latents with data.encoder (its encoder checkpoint)"),
    )
)

"""diffusers model folders (``config.json`` + ``diffusion_pytorch_model.safetensors``).

What imgcompress compresses of them:

- the **decoder** of an autoencoder (`AutoencoderKL`, `AutoencoderTiny`), a generator from a
  spatial latent to an image;
- a denoising **UNet** (`UNet2DModel`, `UNet2DConditionModel`): one sampling step, from
  (noisy latent, timestep[, text embedding]) to the noise prediction, task ``diffusion``.

The model is built by diffusers itself (the optional extra ``imgcompress[diffusers]``) from the
folder's config; the weights are read by imgcompress's own reader (safetensors, or a torch file
with ``weights_only=True``), never unpickled.

A compressed decoder is saved like any generator: the module's state dict (keys as in the
folder: ``decoder.*``, ``post_quant_conv.*``) with the diffusers class and config in the
metadata, so it reloads from the safetensors alone (pruned widths included).

diffusers blocks keep channel counts as plain attributes and assert on them
(`Upsample2D.channels`, `Downsample2D.channels`); `sync_widths` sets them from the layers
after pruning or after a pruned model's layers are resized.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import read_checkpoint
from ..errors import CheckpointError
from .spec import ExtraInput, Generator, GeneratorSpec

DIFFUSERS = "diffusers"
CONFIG = "config.json"
DECODERS = ("AutoencoderKL", "AutoencoderTiny")
UNETS = ("UNet2DModel", "UNet2DConditionModel")
DEFAULT_LATENT_SIDE = 32  # speed and MACs at a 32 × 32 latent unless validate.size says otherwise
# A noise prediction is ~N(0, 1): its drift is measured over ±4 (4σ), clamped beyond.
PREDICTION_RANGE = (-4.0, 4.0)
TEXT_TOKENS = 77  # a CLIP text encoder's sequence length: the synthetic text embeddings' tokens
INSTALL = "pip install 'imgcompress[diffusers]'"


def is_model_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file()


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise CheckpointError(f"diffusers model folders need the diffusers package: {INSTALL}") from None
    return diffusers


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to name a diffusers class. Raises `CheckpointError`."""
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG}: not a readable JSON config ({e}); re-download the model folder") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise CheckpointError(f"{folder / CONFIG}: no _class_name; this is not a diffusers model folder "
                              "(pass a .safetensors/.pth checkpoint, or a folder saved by diffusers' save_pretrained)")
    return config


def _model_class(name: str, source: str) -> type:
    diffusers = _diffusers()
    if name not in DECODERS + UNETS:
        raise CheckpointError(f"{source}: diffusers class {name!r} is not supported; imgcompress takes the decoder "
                              f"of {' or '.join(DECODERS)} folders and {' or '.join(UNETS)} folders")
    return getattr(diffusers, name)


def _check_unet(name: str, config: dict[str, Any], source: str) -> None:
    """Refuse the UNet variants whose extra inputs imgcompress cannot produce."""
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise CheckpointError(f"{source}: this {name} is class-conditional (class labels are a further input "
                              "imgcompress does not produce); use an unconditional or text-conditional UNet")
    if config.get("addition_embed_type"):
        raise CheckpointError(f"{source}: this {name} takes added conditioning ({config['addition_embed_type']!r}, "
                              "e.g. SDXL's text_time) that imgcompress does not produce; use a UNet without it")


def _plain_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """The constructor arguments of a config, JSON-safe: diffusers' own ``_*`` keys and keys the
    class does not take (diffusers itself saves some, e.g. AutoencoderTiny's block_out_channels) dropped."""
    taken = inspect.signature(_model_class(config["_class_name"], source).__init__).parameters
    return {k: v for k, v in json.loads(json.dumps(dict(config))).items() if k in taken and k != "self"}


class VAEDecoder(nn.Module):
    """The decoding half of a diffusers autoencoder: ``decode(z).sample`` as a module.

    Its input is the latent as the autoencoder's ``decode`` takes it (a pipeline's latents
    divided by ``scaling_factor``); its output an image in [-1, 1]."""

    def __init__(self, class_name: str, config: dict[str, Any]):
        super().__init__()
        cls = _model_class(class_name, "diffusers")
        vae = cls.from_config(config)
        self.post_quant_conv = getattr(vae, "post_quant_conv", None)
        self.decoder = vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class VAEEncoder(nn.Module):
    """The encoding half, for realistic latents: images in [0, 1] → the latents its decoder takes
    (an `AutoencoderKL`'s posterior mean; an `AutoencoderTiny`'s encoder output)."""

    def __init__(self, class_name: str, config: dict[str, Any]):
        super().__init__()
        cls = _model_class(class_name, "diffusers")
        vae = cls.from_config(config)
        self.quant_conv = getattr(vae, "quant_conv", None)
        self.encoder = vae.encoder
        self.kl = class_name == "AutoencoderKL"
        self.latent_channels = int(config["latent_channels"])
        self.factor = scale_of(class_name, config)
        self.scaling_factor = float(config.get("scaling_factor", 1.0))  # a UNet's latents are these × it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x * 2 - 1)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return h[:, : self.latent_channels] if self.kl else h


def scale_of(class_name: str, config: dict[str, Any]) -> int:
    """Image side / latent side."""
    if class_name == "AutoencoderTiny":
        blocks = config.get("num_decoder_blocks", (3, 3, 3, 1))
        return int(config.get("upsampling_scaling_factor", 2)) ** (len(blocks) - 1)
    return 2 ** (len(config.get("block_out_channels", (64,))) - 1)


def decoder_spec(class_name: str, config: dict[str, Any]) -> GeneratorSpec:
    out = int(config.get("out_channels", 3))
    return GeneratorSpec(task="generate", input_kind="latent", color="rgb" if out == 3 else "gray",
                         output_range=(-1.0, 1.0), scale=scale_of(class_name, config),
                         latent_shape=(int(config["latent_channels"]), DEFAULT_LATENT_SIDE, DEFAULT_LATENT_SIDE),
                         default_size=DEFAULT_LATENT_SIDE, spatial_latent=True)


class UNetStep(nn.Module):
    """One denoising step of a diffusers UNet as a module: ``forward(latent, timestep[, text
    embedding])`` → the prediction (``unet(...).sample``). The timestep is a float per sample."""

    def __init__(self, class_name: str, config: dict[str, Any]):
        super().__init__()
        self.unet = _model_class(class_name, "diffusers").from_config(config)
        self.conditional = class_name == "UNet2DConditionModel"

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional:
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        return self.unet(sample, timestep, return_dict=False)[0]


def _side(config: dict[str, Any]) -> int:
    size = config.get("sample_size") or DEFAULT_LATENT_SIDE
    side = int(size[0] if isinstance(size, (list, tuple)) else size)
    return min(side, DEFAULT_LATENT_SIDE)


def unet_spec(class_name: str, config: dict[str, Any]) -> GeneratorSpec:
    """A UNet step: spatial latent in, a same-shaped prediction out (compared over ±4), and the
    timestep (and, for a text-conditional UNet, the text embedding) as extra inputs."""
    extras = [ExtraInput("timestep", "timestep", (), 1000.0)]
    if class_name == "UNet2DConditionModel":
        extras.append(ExtraInput("encoder_hidden_states", "embedding",
                                 (TEXT_TOKENS, int(config.get("cross_attention_dim", 1280)))))
    levels = len(config.get("block_out_channels", (64,)))
    out = int(config.get("out_channels", 4))
    side = _side(config)
    return GeneratorSpec(task="diffusion", input_kind="latent", color="rgb" if out == 3 else "gray",
                         input_range=PREDICTION_RANGE, output_range=PREDICTION_RANGE,
                         size_multiple=2 ** (levels - 1),
                         latent_shape=(int(config.get("in_channels", 4)), side, side), default_size=side,
                         spatial_latent=True, extra_inputs=tuple(extras))


def spec_of(class_name: str, config: dict[str, Any]) -> GeneratorSpec:
    return unet_spec(class_name, config) if class_name in UNETS else decoder_spec(class_name, config)


def _load_own(module: nn.Module, folder: Path) -> None:
    """Fill ``module`` with its tensors from the folder's weights (fp16 files are cast to fp32)."""
    from .load import load_weights

    own = module.state_dict()
    sd = {k: v.float() for k, v in read_checkpoint(folder).state_dict.items() if k in own}
    load_weights(module, sd, str(folder), DIFFUSERS)


def build(kwargs: dict[str, Any]) -> nn.Module:
    """An untrained decoder or UNet step from saved kwargs (``class_name``, ``config``)."""
    if kwargs["class_name"] in UNETS:
        return UNetStep(kwargs["class_name"], kwargs["config"])
    return VAEDecoder(kwargs["class_name"], kwargs["config"])


def load_folder(folder: str | Path) -> Generator:
    """The decoder of the autoencoder, or the UNet, in a diffusers model folder. Raises `CheckpointError`."""
    folder = Path(folder)
    config = read_config(folder)
    name = config["_class_name"]
    kwargs = {"class_name": name, "config": _plain_config(config, str(folder))}
    if name in UNETS:
        _check_unet(name, kwargs["config"], str(folder))
    module = build(kwargs)
    _load_own(module.unet if isinstance(module, UNetStep) else module, folder)  # a UNet's keys are the folder's
    return Generator(module.eval(), spec_of(name, kwargs["config"]), DIFFUSERS, kwargs, source=str(folder))


def load_encoder(folder: str | Path) -> VAEEncoder:
    """The encoding half of the autoencoder in a diffusers folder, eval mode, frozen."""
    folder = Path(folder)
    config = read_config(folder)
    if config["_class_name"] not in DECODERS:
        raise CheckpointError(f"{folder}: a {config['_class_name']} folder, not an autoencoder; an encoder comes "
                              f"from an {' or '.join(DECODERS)} folder")
    encoder = VAEEncoder(config["_class_name"], _plain_config(config, str(folder)))
    _load_own(encoder, folder)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


def sync_widths(module: nn.Module) -> None:
    """Set the width attributes diffusers blocks read in forward from their (resized) layers."""
    if "diffusers" not in sys.modules:
        return
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    for m in module.modules():
        if isinstance(m, (Upsample2D, Downsample2D)):
            conv = getattr(m, "conv", None)
            if isinstance(conv, nn.modules.conv._ConvNd):
                m.channels, m.out_channels = conv.in_channels, conv.out_channels
        elif isinstance(m, ResnetBlock2D):
            m.in_channels, m.out_channels = m.conv1.in_channels, m.conv2.out_channels

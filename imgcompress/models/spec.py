"""What a generator eats and emits: `GeneratorSpec`, and `Generator`, a module with its spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .inputs import Batch, call, pack

Task = Literal["sr", "denoise", "translate", "generate", "diffusion"]
Color = Literal["rgb", "y", "gray"]


@dataclass(frozen=True)
class ExtraInput:
    """An input a model takes beside the main one, and how to produce it.

    - ``timestep``: a diffusion timestep per sample, shape ``()``, a float in ``[0, high)``
      (the training schedule's steps); calibration and evaluation spread it over the schedule.
    - ``embedding``: a conditioning embedding per sample (a text encoder's hidden states),
      shape ``(tokens, dim)``; produced as N(0, 1) (synthetic: no text encoder runs here).
    """

    name: str
    kind: Literal["timestep", "embedding"]
    shape: tuple[int, ...] = ()
    high: float = 1000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))

    def example(self, batch: int, g: torch.Generator) -> torch.Tensor:
        if self.kind == "timestep":
            return torch.randint(0, max(1, int(self.high)), (batch,), generator=g).float()
        return torch.randn((batch, *self.shape), generator=g)


@dataclass(frozen=True)
class GeneratorSpec:
    """The input/output convention of a generator.

    - ``task`` says how evaluation inputs are made: ``sr`` (bicubic-downscaled images,
      the original image is ground truth), ``denoise`` (images plus Gaussian noise, the
      clean image is ground truth), ``translate`` (images as they are, no ground truth),
      ``generate`` (latents sampled from N(0, sigma), no ground truth; or, with ``data.encoder``,
      an encoder's latents of images, which are the ground truth).
    - ``input_kind`` is ``image`` (N, C, H, W) or ``latent`` (N, *latent_shape).
    - ``color``: ``rgb`` (3 channels), ``y`` (the BT.601 luma of an RGB image, 1 channel)
      or ``gray``. Applies to the input (images) and the output.
    - ``input_range`` / ``output_range``: the value range of pixels in and out.
    - ``scale``: output side / input side for image inputs and spatial latents. ``size_multiple``: image
      sides must be a multiple of this.
    - ``latent_shape``: per-sample shape of a latent input, e.g. ``(100, 1, 1)``.
    - ``default_size``: image input side used for MACs and speed when none is given (for a
      spatial latent: the latent side).
    - ``extra_inputs``: inputs after the main one, in the module's argument order (a diffusion
      UNet's timestep and text embedding); task ``diffusion`` is such a denoiser, whose output
      (a noise prediction) is compared over ``output_range``.
    - ``spatial_latent``: the latent is image-like, ``(C, h, w)`` with any ``h, w`` (a VAE
      decoder's): ``latent_shape`` holds the default ``(C, default_size, default_size)``, the
      output side is ``scale`` × the latent side, and export keeps the spatial axes dynamic.
    """

    task: Task
    input_kind: Literal["image", "latent"] = "image"
    color: Color = "rgb"
    input_range: tuple[float, float] = (0.0, 1.0)
    output_range: tuple[float, float] = (0.0, 1.0)
    scale: int = 1
    size_multiple: int = 1
    latent_shape: tuple[int, ...] | None = None
    default_size: int = 64
    spatial_latent: bool = False
    extra_inputs: tuple[ExtraInput, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_inputs", tuple(e if isinstance(e, ExtraInput) else ExtraInput(**e)
                                                       for e in self.extra_inputs))
        # JSON round trips turn tuples into lists; normalise so specs compare equal.
        object.__setattr__(self, "input_range", tuple(float(v) for v in self.input_range))
        object.__setattr__(self, "output_range", tuple(float(v) for v in self.output_range))
        if self.latent_shape is not None:
            object.__setattr__(self, "latent_shape", tuple(int(v) for v in self.latent_shape))
        if (self.input_kind == "latent") != (self.latent_shape is not None):
            raise ValueError("latent_shape is required for latent inputs and only for them")
        if self.spatial_latent and (self.latent_shape is None or len(self.latent_shape) != 3):
            raise ValueError("spatial_latent needs a latent input with latent_shape (C, h, w)")

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    def latent_shape_at(self, size: int | None = None) -> tuple[int, ...]:
        """Per-sample latent shape; a spatial latent takes side ``size`` when given."""
        assert self.latent_shape is not None
        if self.spatial_latent and size:
            return (self.latent_shape[0], size, size)
        return self.latent_shape

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorSpec":
        return cls(**d)

    def example_input(self, *, batch: int = 1, size: int | None = None, seed: int = 0) -> Batch:
        """A deterministic input of the right shape and range (for tracing, MACs, speed): a
        tensor, or a tuple with the extra inputs after the main one.

        ``size`` is the input side: of the image, or of a spatial latent (ignored for other latents)."""
        g = torch.Generator().manual_seed(seed)
        if self.input_kind == "latent":
            assert self.latent_shape is not None
            x = torch.randn((batch, *self.latent_shape_at(size)), generator=g)
        else:
            side = size or self.default_size
            side = max(self.size_multiple, side - side % self.size_multiple)
            lo, hi = self.input_range
            x = torch.rand((batch, self.channels, side, side), generator=g) * (hi - lo) + lo
        return pack([x, *(e.example(batch, g) for e in self.extra_inputs)])


@dataclass
class Generator:
    """An `nn.Module` plus everything needed to feed it, rebuild it and describe it.

    ``arch`` and ``kwargs`` rebuild the module (``imgcompress.models.build``);
    ``widths`` records per-layer widths changed by pruning (empty for an unpruned model).
    """

    module: nn.Module
    spec: GeneratorSpec
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    widths: dict[str, list[int]] = field(default_factory=dict)
    source: str = ""

    def __call__(self, x: Batch) -> torch.Tensor:
        return call(self.module, x)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def eval(self) -> "Generator":
        self.module.eval()
        return self

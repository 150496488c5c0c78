"""What `imgcompress inspect` shows about a checkpoint (library side)."""

from __future__ import annotations

import os
from typing import Any

from .checkpoint import read_checkpoint
from .models import registry
from .models.diffusers_adapter import DIFFUSERS
from .models.inputs import main
from .models.load import load_generator
from .validate import cost


def describe(path: str | os.PathLike[str], *, arch: str | None = None, size: int | None = None) -> dict[str, Any]:
    """Arch, parameters, MACs at a stated input, and the input/output convention."""
    raw = read_checkpoint(path)
    g = load_generator(path, model={"arch": arch} if arch else None)
    spec = g.spec
    xs = spec.example_input(batch=1, size=size)
    x = main(xs)
    if spec.input_kind == "latent" and spec.spatial_latent:
        inp = f"image-like latent ({x.shape[1]}, h, w), any h, w (MACs at {x.shape[2]}×{x.shape[3]})"
    elif spec.input_kind == "latent":
        inp = f"latent {tuple(x.shape[1:])} ~ N(0,1)"
    else:
        inp = f"{spec.color} image in [{spec.input_range[0]:g}, {spec.input_range[1]:g}], sides a multiple of {spec.size_multiple}"
    for e in spec.extra_inputs:
        inp += (f"; {e.name}: a float per sample in [0, {e.high:g})" if e.kind == "timestep"
                else f"; {e.name}: {tuple(e.shape)} per sample (a text encoder's hidden states)")
    if spec.task == "diffusion":
        output = (f"noise prediction ({x.shape[1]}, h, w), compared over "
                  f"[{spec.output_range[0]:g}, {spec.output_range[1]:g}]")
    else:
        output = (f"{spec.color} image in [{spec.output_range[0]:g}, {spec.output_range[1]:g}]"
                  + (f", ×{spec.scale}" if spec.scale > 1 else ""))
    return {
        "file": str(path),
        "arch": g.arch,
        "kwargs": g.kwargs,
        "resolved_by": _resolved_by(raw.metadata is not None, arch, g.arch),
        "container": raw.container or "(top level)",
        "tensors": len(raw.state_dict),
        "params": cost.params(g.module),
        "macs": cost.macs(g.module, xs),
        "macs_input": list(x.shape),
        "task": spec.task,
        "input": inp,
        "output": output,
        "notes": "; ".join(raw.notes + list(getattr(registry.get(g.arch), "notes", ()) or ())) or "–",
    }


def _resolved_by(has_metadata: bool, arch: str | None, resolved: str) -> str:
    if has_metadata:
        return "imgcompress metadata"
    if resolved == DIFFUSERS:
        return "diffusers config.json"
    return "recipe/--arch" if arch else "detection from keys"


def list_archs() -> list[str]:
    lines = []
    for name in registry.names():
        a = registry.get(name)
        assert a is not None
        lines.append(f"{name}: {a.description}")
    lines.append("diffusers: the decoder of an AutoencoderKL or AutoencoderTiny model folder, or a UNet2DModel or "
                 "UNet2DConditionModel folder (config.json + weights)")
    lines.append("spandrel: any of the ~40 restoration architectures spandrel detects (Real-ESRGAN, SwinIR, ...)")
    return lines

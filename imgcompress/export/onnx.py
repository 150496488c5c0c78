"""Export a generator to ONNX and check the graph against torch before anything uses it."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from ..errors import ExportError
from ..files import temp_beside
from ..models.inputs import call, main, parts, shapes
from ..models.spec import Generator, GeneratorSpec
from . import runtime

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def input_names(spec: GeneratorSpec) -> list[str]:
    """The graph's input names: ``input``, then each extra input's own name (``timestep``, ...)."""
    return [INPUT_NAME, *(e.name for e in spec.extra_inputs)]


@dataclass(frozen=True)
class ExportCheck:
    """How closely the ONNX graph reproduces torch, on inputs of two shapes."""

    max_abs_error: float
    tolerance: float
    shapes: tuple[tuple[int, ...], ...]  # of the main input


def export_onnx(
    generator: Generator,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamic_spatial: bool = True,
    tolerance: float = 1e-3,
    size: int | None = None,
) -> ExportCheck:
    """Export ``generator`` to ``path`` (atomically) and check it against torch.

    The legacy TorchScript exporter is used: it exported every generator shape we
    tried with dynamic axes (see docs/stages.md). The check runs onnxruntime on a
    batch of 2 at the export size and a batch of 1 at another size (when spatial axes
    are dynamic); the max abs error, relative to the output range, must be within
    ``tolerance`` or `ExportError` is raised and nothing is written.
    """
    spec = generator.spec
    module = generator.module.eval()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    batch = 2 if dynamic_batch else 1  # a batch of 1 would fix the batch axis in the graph
    x = spec.example_input(batch=batch, size=size, seed=1)
    dynamic: dict[int, str] = {}
    if dynamic_batch:
        dynamic[0] = "batch"
    spatial = spec.input_kind == "image" or spec.spatial_latent  # image-like input: (N, C, H, W)
    if spatial and dynamic_spatial:
        dynamic.update({2: "height", 3: "width"})
    names = input_names(spec)
    axes = {INPUT_NAME: dynamic, OUTPUT_NAME: dict(dynamic)}
    if dynamic_batch:  # extra inputs (timestep, embedding) carry the batch on their first axis
        axes.update({n: {0: "batch"} for n in names[1:]})
    tmp = temp_beside(p, ".tmp.onnx")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, parts(x), tmp,
                input_names=names, output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes=axes if dynamic else None,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(tmp)
        onnx.checker.check_model(model)
        check = check_against_torch(generator, tmp, tolerance=tolerance, size=size,
                                    other_size=bool(dynamic_spatial and spatial),
                                    batch=batch)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("exported %s (max abs error vs torch %.2e)", p, check.max_abs_error)
    return check


def check_against_torch(
    generator: Generator, onnx_path: str | os.PathLike[str], *, tolerance: float,
    size: int | None = None, other_size: bool = True, batch: int = 2,
) -> ExportCheck:
    spec = generator.spec
    sess = runtime.session(onnx_path, threads=runtime.default_threads())
    inputs = [spec.example_input(batch=batch, size=size, seed=2)]
    if other_size:
        base = size or spec.default_size
        inputs.append(spec.example_input(batch=batch, size=base + spec.size_multiple * max(1, 8 // spec.size_multiple), seed=3))
    lo, hi = spec.output_range
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = call(generator.module, x)
            try:
                got = runtime.run(sess, x)
            except Exception as e:  # onnxruntime raises its own Fail/RuntimeException types
                raise ExportError(
                    f"the ONNX graph does not run on an input of shape {tuple(main(x).shape)} ({type(e).__name__}: "
                    f"{str(e).strip().splitlines()[0][:160]}); the model may bake its input size into the graph — "
                    "set export.dynamic_spatial: false and validate.size to the size it takes"
                ) from None
            if got.shape != ref.shape:
                raise ExportError(f"ONNX output shape {tuple(got.shape)} != torch {tuple(ref.shape)} for input {shapes(x)}")
            worst = max(worst, float((got - ref).abs().max()))
    rel = worst / (hi - lo)
    if rel > tolerance:
        raise ExportError(
            f"the ONNX graph differs from torch by {worst:.3g} (max abs, {rel:.3g} of the output range; "
            f"tolerance {tolerance}); report this model, or raise export.tolerance"
        )
    return ExportCheck(worst, tolerance, tuple(tuple(main(x).shape) for x in inputs))

"""The `quantize` stage: post-training static int8 quantization of the exported ONNX graph.

QDQ format, per-channel int8 weights, uint8 activations calibrated on held-apart inputs.
Backends: onnxruntime's quantizer (default) and NNCF. By default only op types that
onnxruntime's CPU path runs faster in int8 are quantized; ConvTranspose and the norms stay
fp32 (measured in docs/stages.md).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch

from ..errors import RecipeError
from ..recipe import Quantize
from .base import StageContext, StageResult

log = logging.getLogger(__name__)

# Op types whose int8 kernels are faster than fp32 on onnxruntime's CPU execution provider.
AUTO_OP_TYPES = ("Conv", "Gemm", "MatMul")
BATCH = 8


@contextlib.contextmanager
def _in_tempdir() -> Iterator[Path]:
    """onnxruntime's quantizer drops temp files in the cwd; keep them out of the user's."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="imgcompress-q-") as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)


def _batches(calibration: list[torch.Tensor]) -> list[np.ndarray]:
    out = []
    for i in range(0, len(calibration), BATCH):
        out.append(torch.cat(calibration[i:i + BATCH]).numpy().astype(np.float32))
    return out


def _excluded(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    names = [n.name for n in model.graph.node]
    hit = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unused:
        raise RecipeError(
            f"quantize.exclude: {', '.join(map(repr, unused))} match no node of the graph; "
            f"node names look like {', '.join(names[:3])}"
        )
    return hit


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Per op type: how many nodes there are and how many take a dequantized (int8) weight/input."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    total: Counter[str] = Counter()
    q: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        total[n.op_type] += 1
        if any(i in dq_outputs for i in n.input):
            q[n.op_type] += 1
    return {op: {"nodes": total[op], "int8": q[op]} for op in sorted(total)}


def _ort_quantize(src: Path, dst: Path, batches: list[np.ndarray], cfg: Quantize, exclude: list[str], op_types: list[str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {input_name: b}

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[cfg.calibration]
    extra = {"ActivationSymmetric": cfg.symmetric_activations}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    with _in_tempdir():
        quantize_static(
            str(src), str(dst), Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QInt8 if cfg.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=method,
            extra_options=extra,
        )


def _nncf_quantize(src: Path, dst: Path, batches: list[np.ndarray], cfg: Quantize, exclude: list[str]) -> None:
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    import nncf

    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    samples = [{input_name: b[i:i + 1]} for b in batches for i in range(b.shape[0])]
    ignored = nncf.IgnoredScope(names=exclude) if exclude else None
    kwargs = {"subset_size": len(samples)}
    if ignored is not None:
        kwargs["ignored_scope"] = ignored
    if cfg.calibration != "minmax":
        log.info("nncf backend: calibration %r is onnxruntime's; nncf uses its own range estimators", cfg.calibration)
    with _in_tempdir():
        q = nncf.quantize(model, nncf.Dataset(samples), **kwargs)
    onnx.save(q, str(dst))


def run(generator, ctx: StageContext, cfg: Quantize, *, out: Path) -> StageResult:
    """Quantize the graph at ``ctx.onnx_path`` into ``out``."""
    if ctx.onnx_path is None:
        raise RuntimeError("quantize needs the exported fp32 graph in ctx.onnx_path")
    src = ctx.onnx_path
    model = onnx.load(str(src))
    exclude = _excluded(model, cfg.exclude)
    op_types = list(AUTO_OP_TYPES) if cfg.op_types == "auto" else list(cfg.op_types)
    batches = _batches(ctx.inputs.calibration)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.onnx")
    try:
        if cfg.backend == "onnxruntime":
            _ort_quantize(src, tmp, batches, cfg, exclude, op_types)
        else:
            _nncf_quantize(src, tmp, batches, cfg, exclude)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    counts = quantized_op_counts(onnx.load(str(out)))
    info = {
        "backend": cfg.backend,
        "calibration": cfg.calibration if cfg.backend == "onnxruntime" else "nncf-default",
        "calibration_samples": len(ctx.inputs.calibration),
        "per_channel": cfg.per_channel,
        "op_types": op_types if cfg.backend == "onnxruntime" else "nncf-default",
        "excluded_nodes": exclude,
        "ops": counts,
    }
    return StageResult(generator, out, "int8", info)

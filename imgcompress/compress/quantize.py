"""The `quantize` stage: post-training static int8 quantization of the exported ONNX graph.

QDQ format, per-channel int8 weights, uint8 activations calibrated on held-apart inputs.
Backends: onnxruntime's quantizer (default) and NNCF. By default only op types that
onnxruntime's CPU path runs faster in int8 are quantized; ConvTranspose and the norms stay
fp32 (measured in docs/stages.md).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import RecipeError
from ..recipe import Quantize
from ..models.inputs import Batch, cat, feeds, shapes
from ..models.spec import Generator
from .base import StageContext, StageResult

log = logging.getLogger(__name__)

# Op types whose int8 kernels are faster than fp32 on onnxruntime's CPU execution provider.
AUTO_OP_TYPES = ("Conv", "Gemm", "MatMul")
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
BATCH = 8
# entropy calibration: histogram bins collected, and the int8 bins the KL search quantizes them to
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def in_tempdir() -> Iterator[Path]:
    """onnxruntime's quantizer drops temp files in the cwd (keep them out of the user's) and
    logs a hint about its pre-processing on the root logger every call (drop it)."""
    old = os.getcwd()
    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    with tempfile.TemporaryDirectory(prefix="imgcompress-q-") as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)
            logging.getLogger().removeFilter(hint)


Feeds = dict[str, np.ndarray]


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    """The names of the graph's inputs (initializers listed as inputs left out)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _batches(calibration: list[Batch], names: list[str]) -> list[Feeds]:
    """Calibration inputs as onnxruntime feeds, ``BATCH`` samples each."""
    return [feeds(names, cat(calibration[i:i + BATCH])) for i in range(0, len(calibration), BATCH)]


def split_feeds(batches: list[Feeds]) -> list[Feeds]:
    """Batch-1 feeds, one per sample."""
    return [{k: v[i:i + 1] for k, v in b.items()} for b in batches for i in range(len(next(iter(b.values()))))]


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


def _fold_constants(m: onnx.ModelProto) -> None:
    """Replace the nodes computed from constants alone (Pad sizes built from Constant,
    Slice, Transpose ... as the TorchScript exporter writes reflection padding) by
    initializers, in place, so that shape inference sees the sizes."""
    from onnx.reference import ReferenceEvaluator

    const: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    kept, folded = [], []
    for n in m.graph.node:
        if n.op_type != "Constant" and (not n.input or not all(i in const or i == "" for i in n.input)):
            kept.append(n)
            continue
        try:
            ins = [i for i in n.input if i]
            graph = helper.make_graph(
                [n], "fold", [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(const[i].dtype),
                                                             const[i].shape) for i in ins],
                [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in n.output])
            outs = ReferenceEvaluator(helper.make_model(graph, opset_imports=m.opset_import)).run(
                None, {i: const[i] for i in ins})
        except Exception:  # an op the reference evaluator lacks: leave it to shape inference
            kept.append(n)
            continue
        for name, value in zip(n.output, outs):
            const[name] = np.asarray(value)
            folded.append(numpy_helper.from_array(np.asarray(value), name))
    del m.graph.node[:]
    m.graph.node.extend(kept)
    m.graph.initializer.extend(folded)


def node_macs(model: onnx.ModelProto, input_shape: tuple[int, ...] | tuple[tuple[int, ...], ...]) -> dict[str, int]:
    """MACs of each compute node (Conv, ConvTranspose, Gemm, MatMul) at ``input_shape`` (the
    main input's shape, or a tuple with one shape per graph input).

    Shapes come from ONNX shape inference on a copy whose inputs are fixed to those shapes;
    a node whose shapes cannot be inferred is left out.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    per_input = input_shape if input_shape and isinstance(input_shape[0], tuple) else (input_shape,)
    for inp, shape in zip(m.graph.input, per_input):
        for d, v in zip(inp.type.tensor_type.shape.dim, shape):
            d.ClearField("dim_param")
            d.dim_value = int(v)
    try:
        _fold_constants(m)
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # onnx raises assorted errors on graphs it cannot infer
        return {}
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        dd = vi.type.tensor_type.shape.dim
        if dd and all(d.HasField("dim_value") for d in dd):
            shapes[vi.name] = [d.dim_value for d in dd]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    out: dict[str, int] = {}
    for n in m.graph.node:
        if n.op_type not in COMPUTE_OPS or len(n.input) < 2:
            continue
        y, w = shapes.get(n.output[0]), shapes.get(n.input[1])
        x = shapes.get(n.input[0])
        if y is None or w is None:
            continue
        if n.op_type == "Conv":
            out[n.name] = int(np.prod(y)) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose" and x is not None:
            out[n.name] = int(np.prod(x)) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul") and x is not None:
            out[n.name] = int(np.prod(y)) * int(x[-1])
    return out


def auto_fp32_nodes(model: onnx.ModelProto, input_shape: tuple[int, ...] | tuple[tuple[int, ...], ...], *, ends: bool,
                    min_share: float) -> dict[str, str]:
    """Compute nodes that stay fp32 by the generator-aware defaults, with the reason.

    - ``ends``: the first and last compute nodes (they see raw pixels/latents and produce
      the output: int8 error there is not averaged out by later layers);
    - ``min_share``: nodes with less than this share of the graph's MACs (e.g. channel
      attention on pooled 1×1 maps) gain nothing from int8 and only add error.
    """
    nodes = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    compute = [n.name for n in nodes]
    keep: dict[str, str] = {}
    if ends and len(compute) > 2:
        # the first layer on the main input (a UNet's graph computes its timestep MLP first)
        main_input = model.graph.input[0].name
        first = next((n.name for n in nodes if main_input in n.input), compute[0]) if len(model.graph.input) > 1 \
            else compute[0]
        keep[first] = "first layer"
        keep[compute[-1]] = "last layer"
    macs = node_macs(model, input_shape)
    total = sum(macs.values())
    if total and min_share > 0:
        for name, m in macs.items():
            if name not in keep and m / total < min_share:
                keep[name] = f"{100 * m / total:.3f}% of MACs"
    return keep


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


class Quantizer:
    """Quantizes one fp32 graph with the stage's backend and settings."""

    def __init__(self, src: Path, calibration: list[Batch], cfg: Quantize, op_types: list[str]):
        self.src, self.cfg, self.op_types = src.resolve(), cfg, op_types
        self.input_names = graph_inputs(onnx.load(str(src), load_external_data=False))
        self.batches = _batches(calibration, self.input_names)

    def quantize(self, dst: Path, *, exclude: list[str] = ()) -> Path:
        """Write the int8 graph to ``dst`` (atomically), ``exclude``d nodes left in fp32."""
        dst = dst.resolve()  # the quantizers run in a temp dir: relative paths would land there
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp.onnx")
        try:
            if self.cfg.backend == "onnxruntime":
                self._ort(tmp, list(exclude))
            else:
                self._nncf(tmp, list(exclude))
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return dst

    def _ort(self, dst: Path, exclude: list[str]) -> None:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

        batches, cfg = self.batches, self.cfg

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[cfg.calibration]
        extra: dict[str, object] = {"ActivationSymmetric": cfg.symmetric_activations}
        if cfg.calibration == "percentile":
            extra["CalibPercentile"] = cfg.percentile
        with in_tempdir() as tmp, contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress
            cache = None
            if cfg.calibration == "entropy":
                # quantize_static builds its entropy calibrator with 128 histogram bins for 128 int8
                # bins, which leaves the KL search one candidate (the full range, i.e. minmax) and
                # passes no option to change that: calibrate here and hand it the ranges
                cache = self._entropy_ranges(Reader(), tmp)
            quantize_static(
                str(self.src), str(dst), Reader(),
                calibration_cache_path=cache,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=self.op_types,
                per_channel=cfg.per_channel,
                activation_type=QuantType.QInt8 if cfg.symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=method,
                extra_options=extra,
            )

    def _entropy_ranges(self, reader: Any, tmp: Path) -> Path:
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

        calibrator = create_calibrator(
            self.src, self.op_types, augmented_model_path=str(tmp / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
                           "symmetric": self.cfg.symmetric_activations},
        )
        calibrator.collect_data(reader)
        path = tmp / "entropy_ranges.json"
        save_tensors_data(calibrator.compute_data(), path)
        return path

    def _nncf(self, dst: Path, exclude: list[str]) -> None:
        os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
        import nncf

        model = onnx.load(str(self.src))
        samples = split_feeds(self.batches)
        kwargs: dict[str, object] = {"subset_size": len(samples)}
        if exclude:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=exclude, validate=False)
        if self.cfg.calibration != "minmax":
            log.info("nncf backend: calibration %r is onnxruntime's; nncf uses its own range estimators", self.cfg.calibration)
        with in_tempdir():
            q = nncf.quantize(model, nncf.Dataset(samples), **kwargs)
        onnx.save(q, str(dst))


def _precision(counts: dict[str, dict[str, int]]) -> str:
    q = sum(c["int8"] for c in counts.values())
    compute = sum(c["nodes"] for op, c in counts.items() if op in COMPUTE_OPS)
    computed_int8 = sum(c["int8"] for op, c in counts.items() if op in COMPUTE_OPS)
    if q == 0:
        return "fp32"
    return "int8" if computed_int8 == compute else "int8+fp32"


def run(generator: Generator, ctx: StageContext, cfg: Quantize, *, out: Path) -> StageResult:
    """Quantize the graph at ``ctx.onnx_path`` into ``out``."""
    if ctx.onnx_path is None:
        raise RuntimeError("quantize needs the exported fp32 graph in ctx.onnx_path")
    src = ctx.onnx_path
    model = onnx.load(str(src))
    exclude = _excluded(model, cfg.exclude)
    auto = auto_fp32_nodes(model, shapes(ctx.inputs.calibration[0]), ends=cfg.keep_ends_fp32,
                           min_share=cfg.min_mac_share)
    exclude += [n for n in auto if n not in exclude]
    op_types = list(AUTO_OP_TYPES) if cfg.op_types == "auto" else list(cfg.op_types)
    eligible = [n.name for n in model.graph.node if n.op_type in op_types and n.name not in exclude]
    info: dict[str, object] = {
        "backend": cfg.backend,
        "calibration": cfg.calibration if cfg.backend == "onnxruntime" else "nncf-default",
        "calibration_samples": len(ctx.inputs.calibration),
        "per_channel": cfg.per_channel,
        "op_types": op_types if cfg.backend == "onnxruntime" else "nncf-default",
        "kept_fp32_by_default": auto,
    }
    if cfg.backend == "onnxruntime" and not eligible:
        # e.g. a DCGAN: all ConvTranspose, which onnxruntime's CPU path runs slower in int8
        present = sorted({n.op_type for n in model.graph.node if n.op_type in COMPUTE_OPS})
        info["skipped"] = (f"no node to quantize: the graph's compute ops ({', '.join(present) or 'none'}) are "
                           f"not in op_types ({', '.join(op_types)}) or are kept fp32; the graph stays fp32")
        log.warning("quantize: %s", info["skipped"])
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
    elif cfg.budget is None:
        Quantizer(src, ctx.inputs.calibration, cfg, op_types).quantize(out, exclude=exclude)
    else:
        quantizer = Quantizer(src, ctx.inputs.calibration, cfg, op_types)
        if cfg.search == "nncf":
            from .nncf_search import nncf_search

            info["search"] = nncf_search(quantizer, model, ctx, cfg, exclude=exclude, out=out)
        else:
            from .search import budget_search

            info["search"] = budget_search(quantizer, model, ctx, cfg, exclude=exclude, out=out)
        exclude = exclude + [r["node"] for r in info["search"]["fallback"]]
    counts = quantized_op_counts(onnx.load(str(out)))
    info["excluded_nodes"] = exclude
    info["ops"] = counts
    return StageResult(generator, out, _precision(counts), info)

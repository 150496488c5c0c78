"""Side-by-side int8 benchmark: imgcompress against onnxruntime's and NNCF's quantizers.

    .venv/bin/python benchmarks/run.py                          # = make bench; writes docs/benchmarks.md
    .venv/bin/python benchmarks/run.py --models example,imdn --repeats 30
    .venv/bin/python benchmarks/run.py --quick --models example --out /tmp/bench.md   # smoke test

For each model, in ONE process, on the same inputs and the same thread count:

    torch fp32          the original in eager PyTorch
    ORT fp32            the original exported with imgcompress.export_onnx, in onnxruntime
    ORT quantize_static onnxruntime.quantization.quantize_static with its defaults, same calibration inputs
    NNCF PTQ            nncf.quantize on the ONNX model with its defaults, run in onnxruntime
    imgcompress int8    model.onnx of imgcompress.apply("recipes/int8.yaml", ...)

Latency is imgcompress.validate.speed.measure: warm-up, then rounds that run every variant
once in a rotating order (median and p90). Quality is imgcompress.validate.quality on the
recipe's evaluation inputs (imgcompress.data.make_inputs). The hardware ceiling (int8
MatMulInteger and fp32 MatMul GEMM throughput in onnxruntime) is measured in the same run.

Shared checkpoints come from $IMGCOMPRESS_SHARED (default: ../shared when it exists).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")  # nncf's torch extension is not used here
# torch's OpenMP threads spin after each op by default; in interleaved rounds they would take the
# cores from whichever variant runs next (always the same one: the rotation keeps the order).
# Must be set before torch is imported; an OMP_WAIT_POLICY from the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import imgcompress  # noqa: E402
from imgcompress import apply, export_onnx, load_generator, load_recipe  # noqa: E402
from imgcompress.compress.quantize import COMPUTE_OPS, in_tempdir, node_macs  # noqa: E402
from imgcompress.data import Inputs, make_inputs  # noqa: E402
from imgcompress.export import runtime  # noqa: E402
from imgcompress.recipe import Recipe  # noqa: E402
from imgcompress.validate import cost, speed  # noqa: E402
from imgcompress.validate.quality import outputs, quality  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "int8.yaml"
HAND_RUNS = ROOT / "benchmarks" / "distill_runs.md"  # appended to the report as it is
log = logging.getLogger("bench")

VARIANTS = ("torch fp32", "ORT fp32", "ORT quantize_static", "NNCF PTQ", "imgcompress int8", "imgcompress budgeted",
            "imgcompress prune_quant")
# the imgcompress variants and their shipped recipes (int8's can be replaced with --recipe)
IMGCOMPRESS = {"imgcompress int8": ROOT / "recipes" / "int8.yaml",
               "imgcompress budgeted": ROOT / "recipes" / "int8_budget.yaml",
               "imgcompress prune_quant": ROOT / "recipes" / "prune_quant.yaml"}
DISTILL_STEPS = 300  # prune_quant's distill steps in a bench run (--distill-steps); its recipe ships more
INT8_VARIANTS = VARIANTS[2:]
# onnxruntime CPU kernels that compute in integers (what an int8 Q/DQ pattern is fused into)
INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger", "QGemm",
                "DynamicQuantizeMatMul", "QLinearConvTranspose"}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
QUICK_DATA = {"calibration_samples": 4, "eval_samples": 2, "crop": 64, "eval_crop": 64}
QUICK_SIZE = 32


@dataclass(frozen=True)
class Case:
    """One benchmarked checkpoint."""

    key: str
    title: str
    file: str  # relative to the repo root (example) or to SHARED/checkpoints
    shared: bool = True
    images: str | None = None  # calibration folder under SHARED/images; None: the recipe's (bundled images)
    eval_images: str | None = None  # evaluation folder under SHARED/images; None: kept apart from `images`
    eval_samples: int | None = None  # None: the recipe's
    speed_size: int | None = None  # image side of the speed input; None: the recipe's validate.size or the default
    prune_quant: bool = True  # False: training would not fit the bench's time on a small CPU
    note: str = ""


CASES = (
    Case("example", "ESPCN ×2 (example)", "examples/espcn_x2.safetensors", shared=False),
    Case("fsrcnn", "FSRCNN ×2 (Y channel)", "fsrcnn_x2.pth", images="set14", eval_images="set5"),
    Case("imdn", "IMDN ×4", "imdn_x4.pth", images="set14", eval_images="set5"),
    Case("realesr", "Real-ESRGAN Compact ×4 (animevideov3)", "realesr-animevideov3.pth", images="set14",
         eval_images="set5"),
    Case("dcgan", "DCGAN generator (64×64 faces)", "dcgan_faces.tar"),
    Case("vae", "MNIST VAE decoder", "mnist_vae.pth"),
    Case("cyclegan", "CycleGAN ResNet generator (vintage)", "cyclegan_vintage_G_A2B.pth", images="kodak24",
         speed_size=256, prune_quant=False,
         note="imgcompress prune_quant is not run on the CycleGAN: distilling a 3 GMAC-per-64²-crop generator "
              "does not fit a bench run on a small CPU"),
)


# ----------------------------------------------------------------------------- environment

def shared_dir() -> Path | None:
    value = os.environ.get("IMGCOMPRESS_SHARED")
    if value:
        return Path(value).expanduser()
    default = ROOT.parent / "shared"
    return default if default.is_dir() else None


def cpu_info() -> dict[str, Any]:
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("unknown", "", platform.processor()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"name": name, "flags": {f: f in flags for f in CPU_FLAGS}, "logical_cpus": os.cpu_count(),
            "usable_cpus": runtime.default_threads()}


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def versions() -> dict[str, str]:
    import nncf

    out = {"python": platform.python_version(), "imgcompress": imgcompress.__version__, "torch": torch.__version__,
           "onnxruntime": ort.__version__, "nncf": nncf.__version__, "onnx": onnx.__version__,
           "numpy": np.__version__}
    try:
        import torch_pruning

        out["torch-pruning"] = getattr(torch_pruning, "__version__", "?")
    except ImportError:
        pass
    return out


# ----------------------------------------------------------------------------- sessions

SPINNING = False  # set from --spinning


def session(path: str | Path | bytes, *, threads: int) -> ort.InferenceSession:
    """`imgcompress.export.runtime.session` (spinning off, as in `imgcompress apply`) unless
    --spinning. With spinning on (onnxruntime's default), the spinners of the previous variant
    steal the CPU from the next one (identical graphs measured 1.5 / 5.9 / 2.0 ms here)."""
    return runtime.session(path, threads=threads, spinning=SPINNING)


# ----------------------------------------------------------------------------- hardware ceiling

def _gemm_runner(n: int, int8: bool, threads: int) -> Callable[[], object]:
    """An n×n×n GEMM in onnxruntime: uint8×int8 MatMulInteger (int32 out) or fp32 MatMul; constant B."""
    rng = np.random.default_rng(0)
    if int8:
        b = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "B")
        zp = numpy_helper.from_array(np.array(128, np.uint8), "a_zero_point")
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zero_point"], ["Y"])
        a_type, y_type, inits = TensorProto.UINT8, TensorProto.INT32, [b, zp]
        x = rng.integers(0, 256, (n, n), dtype=np.uint8)
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type, inits = TensorProto.FLOAT, TensorProto.FLOAT, [b]
        x = rng.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", y_type, [n, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = session(model.SerializeToString(), threads=threads)
    return lambda: sess.run(None, {"A": x})


def measure_ceiling(threads: int, *, repeats: int, sizes: tuple[int, ...] = (512, 1024)) -> dict[str, Any]:
    """Best GEMM throughput (MAC/s, median over repeats) of int8 and fp32 over square ``sizes``."""
    runners: dict[str, Callable[[], object]] = {}
    for n in sizes:
        runners[f"int8 {n}"] = _gemm_runner(n, True, threads)
        runners[f"fp32 {n}"] = _gemm_runner(n, False, threads)
    t = speed.measure(runners, warmup=2, repeats=max(5, repeats))
    rates = {k: int(k.split()[1]) ** 3 / (v.median_ms / 1e3) for k, v in t.items()}
    return {
        "rates": rates,
        "int8": max(v for k, v in rates.items() if k.startswith("int8")),
        "fp32": max(v for k, v in rates.items() if k.startswith("fp32")),
    }


# ----------------------------------------------------------------------------- quantizers

def ort_quantize_static(src: Path, dst: Path, calibration: list[torch.Tensor]) -> None:
    """onnxruntime's quantize_static with every option at its default (QDQ, its default op
    types, per-tensor int8 weights, int8 activations, MinMax), fed the calibration inputs."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {name: x.numpy().astype(np.float32)}

    with in_tempdir(), contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(src.resolve()), str(dst.resolve()), Reader())


def nncf_quantize(src: Path, dst: Path, calibration: list[torch.Tensor]) -> None:
    """nncf.quantize on the ONNX model with its defaults, fed the calibration inputs."""
    import nncf

    model = onnx.load(str(src))
    name = model.graph.input[0].name
    dataset = nncf.Dataset([{name: x.numpy().astype(np.float32)} for x in calibration])
    with in_tempdir():
        q = nncf.quantize(model, dataset)
    onnx.save(q, str(dst))


# ----------------------------------------------------------------------------- MACs and int8 accounting

def _node_macs(n: onnx.NodeProto, shapes: dict[str, list[int]]) -> int | None:
    """MACs of one compute node from its shapes (as imgcompress.compress.quantize.node_macs counts them)."""
    y, w, x = shapes.get(n.output[0]), shapes.get(n.input[1]), shapes.get(n.input[0])
    if y is None or w is None:
        return None
    if n.op_type == "Conv":
        return int(np.prod(y)) * int(np.prod(w[1:]))
    if n.op_type == "ConvTranspose" and x is not None:
        return int(np.prod(x)) * int(np.prod(w[1:]))  # per input pixel: stride² fewer than per output pixel
    if n.op_type in ("Gemm", "MatMul") and x is not None:
        return int(np.prod(y)) * int(x[-1])
    return None


def graph_macs(path: Path, x: torch.Tensor) -> dict[str, int]:
    """MACs of each compute node (Conv, ConvTranspose, Gemm, MatMul) of the graph at input ``x``.

    imgcompress's `node_macs` (ONNX shape inference) first; nodes whose shapes it cannot infer
    (e.g. everything after an exported ReflectionPad, whose pads are computed in the graph)
    are filled in from the shapes of one onnxruntime run.
    """
    model = onnx.load(str(path))
    macs = node_macs(model, tuple(x.shape))
    missing = [n for n in model.graph.node if n.op_type in COMPUTE_OPS and len(n.input) >= 2 and n.name not in macs]
    if not missing:
        return macs
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    known = {o.name for o in model.graph.output}
    for t in dict.fromkeys(t for n in missing for t in (n.input[0], n.input[1], n.output[0])):
        if t not in shapes and t not in known:
            model.graph.output.append(helper.make_empty_tensor_value_info(t))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, {model.graph.input[0].name: x.numpy().astype(np.float32)})
    shapes.update({k: list(v.shape) for k, v in zip(names, values)})
    for n in missing:
        m = _node_macs(n, shapes)
        if m is not None:
            macs[n.name] = m
    return macs


@dataclass(frozen=True)
class Int8Use:
    """What onnxruntime really runs in integers, out of an artifact's compute nodes."""

    mac_share: float  # share of the compute MACs run in integer kernels
    int8_nodes: int  # compute nodes run as integer kernels
    qdq_fp32_nodes: int  # compute nodes with Q/DQ on them in the graph that still run in fp32
    compute_nodes: int


def int8_use(artifact: Path, onnx_macs: dict[str, int], threads: int) -> Int8Use:
    """Which compute nodes onnxruntime actually runs in integer kernels.

    Reads the graph onnxruntime optimises the artifact into (QDQ patterns fused into
    QLinearConv, QGemm, ...); each integer kernel is traced back, through its int8 weight,
    to the compute node of the artifact it replaced.
    """
    art = onnx.load(str(artifact))
    inits = {i.name for i in art.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in art.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    weight_to_node: dict[str, str] = {}
    dq_fed: set[str] = set()  # compute nodes that read a dequantized tensor
    for n in art.graph.node:
        if n.op_type == "DequantizeLinear":
            dq_fed.update(c.name for c in consumers.get(n.output[0], []) if c.op_type in COMPUTE_OPS)
    for n in art.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            for c in consumers.get(n.output[0], []):
                if c.op_type in COMPUTE_OPS:
                    weight_to_node[n.input[0]] = c.name
    with tempfile.TemporaryDirectory(prefix="bench-opt-") as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(str(artifact), sess_options=opts, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(Path(d) / "opt.onnx"))
    compute = [n.name for n in art.graph.node if n.op_type in COMPUTE_OPS]
    int8_nodes: set[str] = set()
    for n in opt.graph.node:
        if n.op_type not in INT8_KERNELS:
            continue
        hit = [weight_to_node[i] for i in n.input if i in weight_to_node]
        if not hit:  # fall back on the name onnxruntime derives from the node it fused
            hit = [c for c in compute if n.name == c or n.name.startswith(c + "_token")]
        int8_nodes.update(hit[:1])
    total = sum(onnx_macs.values())
    share = sum(onnx_macs.get(n, 0) for n in int8_nodes) / total if total else 0.0
    return Int8Use(share, len(int8_nodes), len(dq_fed - int8_nodes), len(compute))


# ----------------------------------------------------------------------------- one model

@dataclass
class Row:
    variant: str
    latency_ms: float | None = None
    p90_ms: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    gt_psnr_db: float | None = None
    gt_ssim: float | None = None
    size_bytes: int | None = None
    int8_mac_share: float | None = None
    int8_nodes: int | None = None
    qdq_fp32_nodes: int | None = None
    macs: int | None = None  # None: the original's (the variant does not change the graph's shape)
    error: str | None = None


@dataclass
class ModelResult:
    case: Case
    arch: str = ""
    task: str = ""
    params: int = 0
    macs: int = 0  # of the exported graph's compute nodes
    macs_torch_pruning: int = 0  # imgcompress.validate.cost.macs
    speed_shape: list[int] = field(default_factory=list)
    compute_nodes: int = 0
    compute_ops: dict[str, int] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    rows: dict[str, Row] = field(default_factory=dict)
    apply_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # per imgcompress variant
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:200]}"


def bench_model(case: Case, recipes: dict[str, Recipe], ckpt: Path, image_dirs: dict[str, str], work: Path, *,
                threads: int, warmup: int, repeats: int, speed_size: int | None) -> ModelResult:
    rec = recipes["imgcompress int8"]
    res = ModelResult(case)
    timer = time.perf_counter

    t0 = timer()
    gen = load_generator(ckpt, model=rec.model)
    spec = gen.spec
    data_cfg = rec.data.model_copy(update=image_dirs)
    inputs: Inputs = make_inputs(spec, data_cfg)
    res.arch, res.task, res.params = gen.arch, inputs.task, cost.params(gen.module)
    res.data = dict(inputs.description)
    x_speed = spec.example_input(batch=rec.validate_config.batch, size=speed_size, seed=7)
    res.speed_shape = list(x_speed.shape)
    res.macs_torch_pruning = cost.macs(gen.module, x_speed)

    ecfg = rec.export
    original = work / "original.onnx"
    export_onnx(gen, original, opset=ecfg.opset, dynamic_batch=ecfg.dynamic_batch,
                dynamic_spatial=ecfg.dynamic_spatial, tolerance=ecfg.tolerance)
    orig_model = onnx.load(str(original))
    per_node = graph_macs(original, x_speed)
    res.macs = sum(per_node.values())
    res.compute_nodes = sum(1 for n in orig_model.graph.node if n.op_type in COMPUTE_OPS)
    for n in orig_model.graph.node:
        if n.op_type in COMPUTE_OPS:
            res.compute_ops[n.op_type] = res.compute_ops.get(n.op_type, 0) + 1
    res.seconds["load+export"] = timer() - t0

    paths: dict[str, Path] = {"ORT fp32": original}
    for variant in VARIANTS[2:]:
        if variant in IMGCOMPRESS and variant not in recipes:
            continue  # not run on this model (its recipe is missing, or the case opts out)
        row = res.rows.setdefault(variant, Row(variant))
        t0 = timer()
        try:
            if variant == "ORT quantize_static":
                paths[variant] = work / "ort_quantize_static.onnx"
                ort_quantize_static(original, paths[variant], inputs.calibration)
            elif variant == "NNCF PTQ":
                paths[variant] = work / "nncf.onnx"
                nncf_quantize(original, paths[variant], inputs.calibration)
            else:
                out = work / variant.replace(" ", "_")
                result = apply(recipes[variant], ckpt, out=out, threads=threads,
                               progress=lambda m, v=variant: log.info("    %s: %s", v, m), **image_dirs)
                paths[variant] = result.model_path
                data = result.report.data
                stage = next(st["info"] for st in data["stages"] if st["stage"] == "quantize")
                search = stage.get("search") or {}
                distill = next((st["info"] for st in data["stages"] if st["stage"] == "distill"), None)
                res.apply_info[variant] = {
                    "passed": result.passed,
                    "failures": result.report.failures,
                    "kept_fp32_by_default": len(stage.get("kept_fp32_by_default", {})),
                    "fallback": len(search.get("fallback", [])),
                    "search_psnr_db": (search.get("result") or {}).get("psnr_db"),
                    "budget": (search.get("budget") or {}).get("min_psnr_db"),
                    "against": (search.get("budget") or {}).get("against"),
                    "budget_met": search.get("met"),
                    "skipped": stage.get("skipped"),
                    "distill_steps": distill["steps_done"] if distill else None,
                    "distill_s": distill["seconds"] if distill else None,
                }
                if distill is not None:  # a pruned graph: its own MACs
                    row.macs = sum(graph_macs(paths[variant], x_speed).values())
        except Exception as e:  # a peer tool failing on a model is a result, not a crash
            row.error = _short_error(e)
            log.warning("  %s failed: %s", variant, row.error)
            if os.environ.get("IMGCOMPRESS_DEBUG"):
                traceback.print_exc()
            paths.pop(variant, None)
        res.seconds[variant] = timer() - t0
        log.info("  %s: %.1f s", variant, res.seconds[variant])

    t0 = timer()
    sessions = {}
    for variant, path in list(paths.items()):
        try:
            sessions[variant] = session(path, threads=threads)
        except Exception as e:  # onnxruntime raises its own exception types
            res.rows.setdefault(variant, Row(variant)).error = _short_error(e)
            paths.pop(variant)
    module = gen.module.eval()

    def ort_fn(sess: ort.InferenceSession) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: runtime.run(sess, x)

    eval_x = [s.input for s in inputs.evaluation]
    refs = outputs(module, eval_x)
    res.rows["torch fp32"] = Row("torch fp32", **_q(quality(refs, None, inputs, spec)))
    for variant, sess in sessions.items():
        row = res.rows.setdefault(variant, Row(variant))
        try:
            q = quality(outputs(ort_fn(sess), eval_x), refs, inputs, spec)
        except Exception as e:  # e.g. a graph that does not take the evaluation shape
            row.error = _short_error(e)
            continue
        for k, v in _q(q).items():
            setattr(row, k, v)
        row.size_bytes = paths[variant].stat().st_size
        if variant in INT8_VARIANTS:
            use = int8_use(paths[variant], per_node if row.macs is None else graph_macs(paths[variant], x_speed),
                           threads)
            row.int8_mac_share, row.int8_nodes, row.qdq_fp32_nodes = use.mac_share, use.int8_nodes, use.qdq_fp32_nodes
    res.seconds["quality"] = timer() - t0

    t0 = timer()
    runners: dict[str, Callable[[], object]] = {}

    def torch_run() -> object:
        with torch.no_grad():
            return module(x_speed)

    runners["torch fp32"] = torch_run
    for variant in VARIANTS[1:]:
        if variant in sessions and res.rows[variant].error is None:
            runners[variant] = (lambda f=ort_fn(sessions[variant]): f(x_speed))
    timings = speed.measure(runners, warmup=warmup, repeats=repeats)
    for variant, t in timings.items():
        res.rows[variant].latency_ms, res.rows[variant].p90_ms = t.median_ms, t.p90_ms
    res.seconds["speed"] = timer() - t0
    return res


def _q(q: dict[str, float | None]) -> dict[str, float | None]:
    return {k: q.get(k) for k in ("psnr_db", "ssim", "gt_psnr_db", "gt_ssim")}


# ----------------------------------------------------------------------------- markdown

def _f(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{format(v, spec)}{suffix}"


def _human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "–"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suf}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _model_notes(r: ModelResult) -> list[str]:
    """Facts read off this model's numbers (nothing here is assumed)."""
    rows, notes = r.rows, []
    t_torch, t_ort = rows["torch fp32"].latency_ms, rows.get("ORT fp32", Row("")).latency_ms
    ratio = _ratio(t_torch, t_ort)
    if ratio is not None and ratio >= 1.5:
        notes.append(f"torch eager is {ratio:.1f}× slower than onnxruntime fp32 on this net: it is a weak "
                     "baseline here; compare int8 against ORT fp32.")
    elif ratio is not None and ratio <= 1 / 1.3:
        notes.append(f"torch eager is {1 / ratio:.1f}× faster than onnxruntime fp32 on this net, so ORT fp32 is "
                     "the weaker baseline here.")
    ops = ", ".join(f"{v} {k}" for k, v in sorted(r.compute_ops.items()))
    if r.compute_ops and set(r.compute_ops) <= {"ConvTranspose"}:
        notes.append(f"Every compute op is ConvTranspose ({ops}), which onnxruntime's CPU int8 path does not "
                     "run in integer kernels: no quantizer can speed this graph up here.")
    for v, a in r.apply_info.items():
        if rows.get(v) is None:
            continue
        if a.get("skipped"):
            notes.append(f"{v} left the graph fp32 (no op it quantizes); any latency difference to the fp32 graph "
                         "it came from is noise.")
            continue
        budget = (f" and fell back {a['fallback']} more to meet the {a['budget']:g} dB budget vs "
                  f"{'the original' if a['against'] == 'original' else 'its input graph'} "
                  f"({'met' if a['budget_met'] else 'not met'} on the calibration inputs"
                  + (f", {a['search_psnr_db']:.1f} dB" if a.get("search_psnr_db") is not None else "") + ")"
                  if a.get("budget") is not None else "")
        notes.append(f"{v} kept {a['kept_fp32_by_default']} compute node(s) fp32 by default (first/last layer, "
                     f"negligible MACs){budget}.")
        if a.get("distill_steps"):
            notes.append(f"{v}: pruned, then distilled for {a['distill_steps']} steps ({a['distill_s']:.0f} s; the "
                         "shipped recipe trains longer, see the hand-run results below), then int8.")
    for v in INT8_VARIANTS:
        row = rows.get(v)
        if row is None or row.error:
            continue
        if row.qdq_fp32_nodes:
            speedup = _ratio(t_ort, row.latency_ms)
            notes.append(f"{v}: {row.qdq_fp32_nodes} of {r.compute_nodes} compute nodes carry Q/DQ in the graph but "
                         "onnxruntime runs them in fp32 (DequantizeLinear → fp32 op, no integer kernel): their "
                         f"rounding costs quality and their Q/DQ cost time; {100 * (row.int8_mac_share or 0):.0f}% "
                         f"of the MACs run in int8, {_f(speedup)}× ORT fp32.")
    if r.macs and abs(r.macs_torch_pruning - r.macs) > 0.01 * r.macs:
        notes.append(f"`imgcompress.validate.cost.macs` gives {_human(r.macs_torch_pruning)} MACs where the "
                     f"graph's compute nodes give {_human(r.macs)}. The tables use the graph's count.")
    if r.case.note:
        notes.append(r.case.note[0].upper() + r.case.note[1:] + ".")
    return notes


def to_markdown(results: list[ModelResult], meta: dict[str, Any]) -> str:
    cpu, ceil = meta["cpu"], meta["ceiling"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    vers = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    int8_c, fp32_c = ceil["int8"], ceil["fp32"]
    lines = [
        "# Benchmarks: int8 post-training quantization, side by side",
        "",
        "Generated by `benchmarks/run.py` — do not edit by hand; rerun it."
        + (" **Quick smoke run (`--quick`): few repeats, small inputs — not a benchmark.**" if meta["quick"] else ""),
        "",
        "```",
        meta["command"],
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| date | {meta['date']} |",
        f"| CPU | {cpu['name']} ({cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical CPUs) |",
        f"| CPU flags | {flags} |",
        f"| threads | {meta['threads']} (torch intra-op and onnxruntime intra-op alike; ORT sequential, 1 inter-op, "
        f"spinning {'on' if meta['spinning'] else 'off'}; torch `OMP_WAIT_POLICY={meta['omp_wait_policy']}`) |",
        f"| timing | {meta['warmup']} warm-up runs each, then {meta['repeats']} rounds; each round runs every variant "
        "once in a rotating order; median and p90 |",
        f"| versions | {vers} |",
        f"| recipe | `{meta['recipe']}` ({meta['recipe_note']}) |",
        f"| wall time | {meta['total_s'] / 60:.1f} min in all |",
        f"| load average | {meta['load_start']} at the start, {meta['load_end']} at the end (1-minute; other work "
        "on the machine shows here) |",
        "",
        "## Variants",
        "",
        "| variant | what it is |",
        "|---|---|",
        "| torch fp32 | the original in eager PyTorch (`torch.no_grad`) |",
        "| ORT fp32 | the original exported with `imgcompress.export_onnx` (TorchScript exporter, opset "
        f"{meta['opset']}), in onnxruntime's CPU provider with all graph optimisations |",
        "| ORT quantize_static | `onnxruntime.quantization.quantize_static(src, dst, reader)` with every option at its "
        "default: QDQ, its default op types (every op it has a quantizer for), per-tensor int8 weights, int8 "
        "activations, MinMax; no `quant_pre_process`; same calibration inputs as imgcompress |",
        "| NNCF PTQ | `nncf.quantize(onnx_model, nncf.Dataset(calibration))` with its defaults (its own op "
        "placement and range estimators, fast bias correction), run in onnxruntime |",
        "| imgcompress int8 | `model.onnx` of `imgcompress.apply(recipes/int8.yaml)`: per-channel int8 weights, "
        "uint8 activations at the 99.999th percentile, first/last layers fp32, fp32 fallback to a 46 dB drift "
        "budget |",
        "| imgcompress budgeted | `recipes/int8_budget.yaml`: int8 with a 45 dB PSNR budget vs the original (greedy "
        "sensitivity-ranked fp32 fallback) |",
        f"| imgcompress prune_quant | `recipes/prune_quant.yaml`: prune 0.5 → distill (capped at "
        f"{meta['distill_steps']} steps here) → int8 with a 40 dB budget vs its input; fewer MACs (its own column) |",
        "",
        "Speedups are latency ratios (higher = faster). PSNR/SSIM vs original: the variant's output against "
        "the eager torch original's on the evaluation inputs (drift). GT: against ground truth (SR: Y channel, "
        "border cropped by the scale). *int8 MACs*: the share of the compute MACs onnxruntime actually runs in "
        "integer kernels (QLinearConv, QGemm, …) after it optimises the graph, and how many of the graph's "
        "compute nodes (Conv, ConvTranspose, Gemm, MatMul) that is. *GMAC/s*: the model's MACs at the "
        "speed input / median latency; *of ceiling*: that against the GEMM ceiling below (int8 rows against the "
        "int8 ceiling, fp32 rows against the fp32 one).",
        "",
        "## Hardware ceiling (measured in this run)",
        "",
        "Square n×n×n GEMMs in onnxruntime with a constant (prepacked) B, same threads, median of the rounds: "
        "uint8×int8 `MatMulInteger` for int8, `MatMul` for fp32. The ceiling is the best of the sizes, "
        "measured at the start and again at the end of the run.",
        "",
        "| GEMM | start GMAC/s | end GMAC/s |",
        "|---|---|---|",
    ]
    for k in ceil["start"]["rates"]:
        lines.append(f"| {k} | {ceil['start']['rates'][k] / 1e9:.1f} | {ceil['end']['rates'].get(k, 0) / 1e9:.1f} |")
    lines += [
        f"| **ceiling** | int8 **{int8_c / 1e9:.1f}** | fp32 **{fp32_c / 1e9:.1f}** (int8/fp32 = "
        f"{int8_c / fp32_c:.2f}×) |",
        "",
    ]
    lines += _summary(results)
    for r in results:
        lines += _model_section(r, int8_c, fp32_c)
    lines += [
        "## Notes",
        "",
        "- One process, one thread setting, the same inputs for every variant; the rounds interleave the "
        "variants so that machine noise hits all alike. Numbers from another machine (or another run on a "
        "busy one) are not comparable cell by cell — rerun `make bench`.",
        "- torch eager is not an optimised runtime (no operator fusion, NCHW only); the fair fp32 baseline for "
        "an int8 onnxruntime graph is ORT fp32, and every speedup is given against both.",
        "- ORT quantize_static's defaults quantize every op type it knows (Add, Mul, Pad, Resize, "
        "InstanceNormalization, …) with per-tensor weight scales and MinMax ranges; that costs quality on some "
        "nets and adds Q/DQ pairs that onnxruntime cannot fuse, which costs speed.",
        "- MACs are those of the exported graph's Conv, ConvTranspose, Gemm and MatMul nodes at the speed "
        "input (ConvTranspose counted per input pixel); other ops (activations, norms, adds) are not counted.",
        ("- onnxruntime intra-op spinning is **off** in every session (`session.intra_op.allow_spinning=0`), and "
         f"torch's OpenMP threads wait passively (`OMP_WAIT_POLICY={meta['omp_wait_policy']}`): otherwise the "
         "threads of the variant that just ran keep spinning and take the cores from the next one, which on 2 "
         "cores skews interleaved timings by several times (three sessions of one graph measured 1.5 / 5.9 / "
         "2.0 ms), and always against the same variant, since the rotation keeps the order. A single deployed "
         "model would keep spinning on and can be a little faster than shown, most on the smallest models."
         if not meta["spinning"] else
         "- onnxruntime intra-op spinning is **on** (`--spinning`, onnxruntime's default): interleaved timings on "
         "few cores are skewed by the previous variant's spinning threads."),
        "",
    ]
    if HAND_RUNS.is_file():  # long training runs make bench does not repeat, each with its command
        lines += ["---", "", HAND_RUNS.read_text(encoding="utf-8").rstrip("\n"), ""]
    return "\n".join(lines)


def _summary(results: list[ModelResult]) -> list[str]:
    head = "| model | speed input | ORT fp32 speedup vs torch | " + " | ".join(
        f"{v}: speedup vs ORT fp32 · PSNR dB" for v in INT8_VARIANTS) + " |"
    lines = ["## Summary", "", head, "|---|---|---|" + "---|" * len(INT8_VARIANTS)]
    for r in results:
        if r.error:
            lines.append(f"| {r.case.title} | failed: {r.error} |" + " |" * (1 + len(INT8_VARIANTS)))
            continue
        t_ort = r.rows.get("ORT fp32", Row("")).latency_ms
        cells = []
        for v in INT8_VARIANTS:
            row = r.rows.get(v)
            if row is None or row.error or row.latency_ms is None:
                cells.append("failed" if row is not None and row.error else "–")
            else:
                psnr = "≥ 100" if (row.psnr_db or 0) >= 100 else _f(row.psnr_db, ".1f")
                cells.append(f"{_f(_ratio(t_ort, row.latency_ms))}× · {psnr}")
        lines.append(f"| {r.case.title} | {'×'.join(map(str, r.speed_shape))} | "
                     f"{_f(_ratio(r.rows['torch fp32'].latency_ms, t_ort))}× | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _model_section(r: ModelResult, int8_c: float, fp32_c: float) -> list[str]:
    c = r.case
    lines = [f"## {c.title} — `{Path(c.file).name}`", ""]
    if r.error:
        return lines + [f"Failed: `{r.error}`", ""]
    ops = ", ".join(f"{v} {k}" for k, v in sorted(r.compute_ops.items()))
    lines += [
        f"arch `{r.arch}` · task `{r.task}` · {_human(r.params)} params · {_human(r.macs)} MACs at the speed "
        f"input {'×'.join(map(str, r.speed_shape))} (`imgcompress.validate.cost.macs`: "
        f"{_human(r.macs_torch_pruning)}) · compute ops: {ops}",
        "",
        f"Calibration: {r.data.get('calibration', '–')}. Evaluation: {r.data.get('evaluation', '–')}.",
        "",
        "| variant | int8 MACs | latency ms (median / p90) | speedup vs ORT fp32 | vs torch fp32 | PSNR vs "
        "original | SSIM vs original | GT PSNR | GT SSIM | MACs | size | GMAC/s | of ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    t_torch = r.rows["torch fp32"].latency_ms
    t_ort = r.rows.get("ORT fp32", Row("")).latency_ms
    for v in VARIANTS:
        row = r.rows.get(v)
        if row is None:
            continue
        if row.error:
            lines.append(f"| {v} | failed: `{row.error}` |" + " |" * 11)
            continue
        macs = row.macs or r.macs
        rate = macs / (row.latency_ms / 1e3) if row.latency_ms else None
        is_int8 = v in INT8_VARIANTS
        ceil = int8_c if is_int8 else fp32_c
        of = f"{100 * rate / ceil:.1f}% of {'int8' if is_int8 else 'fp32'}" if rate else "–"
        share = (f"{100 * row.int8_mac_share:.0f}% ({row.int8_nodes}/{r.compute_nodes} nodes)"
                 if row.int8_mac_share is not None else ("0%" if not is_int8 else "–"))
        psnr = "ref." if v == "torch fp32" else ("≥ 100" if (row.psnr_db or 0) >= 100 else _f(row.psnr_db))
        ssim = "ref." if v == "torch fp32" else _f(row.ssim, ".4f")
        lines.append(
            f"| {v} | {share} | {_f(row.latency_ms)} / {_f(row.p90_ms)} | {_f(_ratio(t_ort, row.latency_ms))}× | "
            f"{_f(_ratio(t_torch, row.latency_ms))}× | {psnr} | {ssim} | {_f(row.gt_psnr_db)} | "
            f"{_f(row.gt_ssim, '.4f')} | {_human(macs)} | {_human(row.size_bytes, 'B')} | "
            f"{_f(rate / 1e9 if rate else None, '.1f')} | {of} |")
    notes = _model_notes(r)
    for v, a in r.apply_info.items():
        if not a.get("passed"):
            notes.append(f"{v}: the recipe's gate failed: " + "; ".join(a.get("failures", [])))
    lines.append("")
    lines += [f"- {n}" for n in notes]
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items())
    lines += [f"- Time spent on this model: {sum(r.seconds.values()):.0f} s ({secs}).", ""]
    return lines


# ----------------------------------------------------------------------------- main

def build_recipe(path: Path, *, quick: bool, case: Case, distill_steps: int = DISTILL_STEPS) -> Recipe:
    """The recipe as imgcompress applies it here: its stages, data and export untouched except
    in --quick (smaller data) and for a case's stated eval_samples; its own timing is cut to
    the minimum, because this script re-times its model.onnx beside the others."""
    rec = load_recipe(path)
    data = dict(QUICK_DATA) if quick else {}
    if case.eval_samples is not None and not quick:
        data["eval_samples"] = case.eval_samples
    vcfg = rec.validate_config.model_copy(update={"repeats": 3, "warmup": 1, **({"size": QUICK_SIZE} if quick else {})})
    stages = [st.model_copy(update={"steps": min(st.steps, 20 if quick else distill_steps)}) if st.kind == "distill"
              else st for st in rec.stages]
    return rec.model_copy(update={"data": rec.data.model_copy(update=data), "validate_": vcfg, "stages": stages})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all",
                   help="comma-separated: " + ", ".join(c.key for c in CASES) + " (default: all available; the "
                        "shared ones need $IMGCOMPRESS_SHARED or ../shared)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per variant first (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: 3 rounds, {QUICK_SIZE} px speed input, "
                        f"{QUICK_DATA['calibration_samples']} calibration / {QUICK_DATA['eval_samples']} evaluation "
                        f"inputs of {QUICK_DATA['crop']} px")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all usable cores)")
    p.add_argument("--recipe", default=str(RECIPE.relative_to(ROOT)), help="imgcompress recipe (default: %(default)s)")
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown to write (default: %(default)s)")
    p.add_argument("--distill-steps", type=int, default=DISTILL_STEPS,
                   help="cap on prune_quant's distillation steps (default %(default)s; 20 with --quick)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON here")
    p.add_argument("--spinning", action="store_true",
                   help="leave onnxruntime's intra-op spinning on (its default); skews interleaved timings. "
                        "torch's OpenMP threads wait passively unless OMP_WAIT_POLICY is set")
    p.add_argument("--keep", default=None, help="keep the ONNX artifacts in this folder (default: a temp folder)")
    return p.parse_args(argv)


def select_cases(spec: str, shared: Path | None) -> list[Case]:
    by_key = {c.key: c for c in CASES}
    if spec == "all":
        return [c for c in CASES if not c.shared or shared is not None]
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise SystemExit(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(by_key)} or all")
    chosen = [by_key[k] for k in keys]
    if shared is None and any(c.shared for c in chosen):
        raise SystemExit("--models names shared checkpoints, but there is no shared folder: set IMGCOMPRESS_SHARED "
                         "to the folder holding checkpoints/ and images/ (e.g. ../shared)")
    return chosen


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("nncf", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    args = parse_args(argv)
    t_start = time.perf_counter()
    shared = shared_dir()
    cases = select_cases(args.models, shared)
    threads = args.threads or runtime.default_threads()
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    recipe_path = Path(args.recipe)
    if not recipe_path.is_absolute():
        recipe_path = (Path.cwd() / recipe_path) if (Path.cwd() / recipe_path).is_file() else ROOT / recipe_path
    torch.set_num_threads(threads)
    global SPINNING
    SPINNING = args.spinning
    logging.getLogger().addFilter(lambda r: "pre-processing" not in r.getMessage())  # ORT's quantizer hint

    load_start = _loadavg()
    log.info("hardware ceiling (GEMM throughput)")
    ceiling_start = measure_ceiling(threads, repeats=repeats)
    results: list[ModelResult] = []
    keep = Path(args.keep) if args.keep else None
    with tempfile.TemporaryDirectory(prefix="imgcompress-bench-") as tmp:
        for case in cases:
            log.info("== %s", case.key)
            recipes = {v: build_recipe(recipe_path if v == "imgcompress int8" else path, quick=args.quick, case=case,
                                       distill_steps=args.distill_steps)
                       for v, path in IMGCOMPRESS.items()
                       if path.is_file() and (v != "imgcompress prune_quant" or case.prune_quant)}
            rec = recipes["imgcompress int8"]
            if case.shared:
                assert shared is not None
                ckpt = shared / "checkpoints" / case.file
                dirs = {k: str(shared / "images" / v) for k, v in
                        (("images", case.images), ("eval_images", case.eval_images)) if v is not None}
            else:
                ckpt, dirs = ROOT / case.file, {}
            work = (keep or Path(tmp)) / case.key
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            size = QUICK_SIZE if args.quick else (case.speed_size or rec.validate_config.size)
            t0 = time.perf_counter()
            try:
                res = bench_model(case, recipes, ckpt, dirs, work, threads=threads, warmup=warmup, repeats=repeats,
                                  speed_size=size)
            except Exception as e:  # keep going: one broken model must not lose the others' numbers
                if os.environ.get("IMGCOMPRESS_DEBUG"):
                    traceback.print_exc()
                res = ModelResult(case, error=_short_error(e))
                log.error("  %s failed: %s", case.key, res.error)
            results.append(res)
            log.info("  %s done in %.0f s", case.key, time.perf_counter() - t0)
    ceiling_end = measure_ceiling(threads, repeats=repeats)
    ceiling = {"start": ceiling_start, "end": ceiling_end,
               "int8": max(ceiling_start["int8"], ceiling_end["int8"]),
               "fp32": max(ceiling_start["fp32"], ceiling_end["fp32"])}

    env = f"IMGCOMPRESS_SHARED={os.environ['IMGCOMPRESS_SHARED']} " if os.environ.get("IMGCOMPRESS_SHARED") else ""
    argv_shown = sys.argv[1:] if argv is None else argv
    rec0 = load_recipe(recipe_path)
    meta = {
        "command": f"{env}.venv/bin/python benchmarks/run.py {shlex.join(argv_shown)}".rstrip()
                   + ("" if argv_shown else "    # = make bench"),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_info(), "threads": threads, "versions": versions(), "quick": args.quick,
        "repeats": repeats, "warmup": warmup, "spinning": args.spinning,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "ceiling": ceiling, "opset": rec0.export.opset,
        "recipe": os.path.relpath(recipe_path, ROOT) if recipe_path.is_relative_to(ROOT) else str(recipe_path),
        "recipe_note": ("data shrunk by --quick" if args.quick else "its stages, data and export as shipped")
                       + "; its own timing cut to 3 repeats, since this script re-times its model.onnx",
        "total_s": time.perf_counter() - t_start, "load_start": load_start, "load_end": _loadavg(),
        "shared": str(shared) if shared else None,
        "distill_steps": 20 if args.quick else args.distill_steps,
    }
    md = to_markdown(results, meta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md, encoding="utf-8")
    log.info("wrote %s (%.1f min)", out, meta["total_s"] / 60)
    if args.json:
        raw = {"meta": meta, "models": [{**{k: v for k, v in vars(r).items() if k not in ("case", "rows")},
                                         "case": vars(r.case), "rows": {k: vars(v) for k, v in r.rows.items()}}
                                        for r in results]}
        Path(args.json).write_text(json.dumps(raw, indent=2, default=str), encoding="utf-8")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

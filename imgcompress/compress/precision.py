"""The `precision` stage: an fp16 (or bf16) graph with fp32 islands, made from the exported ONNX graph.

Our own pass over the graph (onnxconverter_common's converter breaks graphs that already hold
Cast nodes): every node that computes in float32 is either converted or kept fp32, and a Cast
is placed wherever a tensor crosses between the two, so nodes that are not float math (shape
arithmetic, Cast, Q/DQ) keep the types they had. The graph's inputs and outputs stay float32.

What stays fp32:

- ``keep_fp32: auto``: numerically fragile ops (normalizations, Softmax, Exp, Log, Pow, Sqrt,
  Reciprocal, reductions over more than `LARGE_REDUCTION` elements or over axes unknown until
  run time), the last compute layers (the ones that write the output) and what follows them;
- ``keep_fp32: [patterns]``: the nodes whose name or op type matches a shell-style pattern
  (``"auto"`` among them adds the rules above); a pattern that matches nothing is an error;
- always: nodes next to int8 Q/DQ pairs (a graph from an earlier `quantize` stage keeps its
  int8 nodes, Q/DQ nodes and their scales as they are), fp16 nodes whose activations or weights
  reach `RANGE_LIMIT` on the check inputs (fp16 overflows at 65504), ops ONNX defines no
  fp16/bf16 version of at the graph's opset, and non-compute ops stranded between fp32 nodes
  (in low precision they would only add casts).

bf16 Conv/ConvTranspose/InstanceNormalization need ONNX opset 22: a bf16 graph of a lower
opset is converted to 22 first.

onnxruntime's CPU execution provider runs fp16 graphs by casting to fp32 around its ops and
drops most of the casts it makes, so on CPU an fp16 graph's output mostly shows the rounding
of its weights, not of its activations; it has no bf16 kernels for compute ops at all. So the
stage also writes an *emulation* graph beside ``out`` (``<stem>.emulated.onnx``): fp32
arithmetic with every converted tensor rounded to the low precision's 11 (fp16) or 8 (bf16)
significant bits, which is what a GPU that computes in fp32 and stores in fp16/bf16 produces.
Both drifts vs the input graph are measured on a few calibration inputs and reported.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from ..errors import RecipeError
from ..export import runtime
from ..files import temp_beside
from ..models.inputs import Batch, feeds
from ..models.spec import Generator
from ..recipe import Precision
from ..validate import metrics
from .base import StageContext, StageResult
from .quantize import COMPUTE_OPS

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
# |value| from which an fp16 node stays fp32: half of fp16's largest, headroom for inputs the
# check did not see
RANGE_LIMIT = 32768.0
# reductions over more elements than this stay fp32 under `auto`
LARGE_REDUCTION = 256
# calibration inputs the stage measures ranges and drift on
CHECK_SAMPLES = 4
BF16_OPSET = 22

LOW = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
TYPE_STR = {TensorProto.FLOAT16: "tensor(float16)", TensorProto.BFLOAT16: "tensor(bfloat16)"}
# significant bits of fp32 (24) minus those of the low type (fp16 11, bf16 8): the Veltkamp split
SPLIT_BITS = {"fp16": 13, "bf16": 16}
CPU_FLAGS = {"fp16": ("avx512_fp16", "amx_fp16"), "bf16": ("avx512_bf16", "amx_bf16")}

NORMALIZATIONS = ("InstanceNormalization", "BatchNormalization", "LayerNormalization", "GroupNormalization",
                  "MeanVarianceNormalization", "LpNormalization")
FRAGILE = {
    "Softmax": "softmax (exp of large logits overflows fp16)",
    "LogSoftmax": "softmax (exp of large logits overflows fp16)",
    "Exp": "exp (overflows fp16 above 11)",
    "Log": "log (loses precision near 1 in fp16)",
    "Pow": "pow (squares overflow fp16)",
    "Sqrt": "sqrt (of fp16 statistics)",
    "Reciprocal": "reciprocal (overflows fp16 below 1.5e-5)",
}
REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceProd")
# never converted: they are not float math, or their output type is set by an attribute
NEVER = {"Cast", "CastLike", "Constant", "ConstantOfShape", "QuantizeLinear", "DequantizeLinear",
         "DynamicQuantizeLinear", "Shape", "Size", "EyeLike", "Range", "RandomNormal", "RandomNormalLike",
         "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan"}
# consumers that take a tensor of any type: a low-precision input needs no Cast back
TYPE_AGNOSTIC = {"Shape", "Size", "Cast"}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Slots:
    """The inputs and outputs of a node that carry its float32 data (they change type together)."""

    ins: tuple[int, ...]
    outs: tuple[int, ...]


@dataclass
class Plan:
    """Which nodes of a graph convert to the low precision, which stay fp32 and why."""

    dtype: str
    slots: dict[int, Slots]  # every convertible node: index -> its float slots
    kept: dict[int, str] = field(default_factory=dict)  # index -> reason (float nodes left fp32)
    retarget: set[int] = field(default_factory=set)  # Cast(to=float) nodes that now cast to low precision

    @property
    def converted(self) -> list[int]:
        return sorted(i for i in self.slots if i not in self.kept)


def _label(i: int, node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}#{i}"


# ----------------------------------------------------------------------------- graph facts

def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Turn float32 ``Constant`` nodes into initializers (in place), so that converting one is a
    matter of storing a low-precision copy instead of casting at run time."""
    keep, inits = [], []
    for n in model.graph.node:
        t = None
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1:
            a = n.attribute[0]
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                t = TensorProto()
                t.CopyFrom(a.t)
            elif a.name == "value_float":
                t = numpy_helper.from_array(np.array(a.f, np.float32))
            elif a.name == "value_floats":
                t = numpy_helper.from_array(np.array(list(a.floats), np.float32))
        if t is None:
            keep.append(n)
        else:
            t.name = n.output[0]
            inits.append(t)
    if inits:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        model.graph.initializer.extend(inits)


def _infer(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, list[int | None]]]:
    """Element types and (partly symbolic) shapes of the graph's tensors, as far as ONNX infers them."""
    try:
        g = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # onnx raises assorted errors on graphs it cannot infer; types then come from the schemas
        g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type:
            types[vi.name] = tt.elem_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return types, shapes


def _opset(model: onnx.ModelProto, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return o.version
    return 0


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every tensor name read inside a node's subgraphs (outer-scope reads among them)."""
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                names.update(i for i in n.input if i)
                names |= _subgraph_inputs(n)
            names.update(o.name for o in g.output)
    return names


def _float_slots(node: onnx.NodeProto, opset: int, low: int, types: dict[str, int]) -> tuple[Slots | None, str | None]:
    """The float32 slots of ``node`` if it can compute in ``low``; else (None, why) for float
    nodes, (None, None) for nodes that are not float math. Records the types of its outputs
    that the schema fixes (for nodes that shape inference left untyped)."""
    if node.op_type in NEVER or node.domain not in ("", "ai.onnx"):
        return None, None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None, None
    allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}

    def param(formals: Any, k: int) -> str | None:
        if not formals:
            return None
        f = formals[min(k, len(formals) - 1)]  # a variadic formal is the last one
        return f.type_str if f.type_str in allowed else None

    bound: dict[str, set[int | None]] = {}
    for k, name in enumerate(node.input):
        p = param(schema.inputs, k)
        if name and p is not None:
            bound.setdefault(p, set()).add(types.get(name))
    for k, name in enumerate(node.output):
        p = param(schema.outputs, k)
        if name and p is not None and p in bound and types.get(name) is None:
            ts = bound[p] - {None}
            if len(ts) == 1:
                types[name] = next(iter(ts))  # same type parameter, same type
    floats = {p for p, ts in bound.items() if TensorProto.FLOAT in ts}
    if not floats:
        return None, None
    if any(p for p in floats if bound[p] != {TensorProto.FLOAT}):
        return None, "inputs of mixed or unknown types"
    if any(p for p in floats if TYPE_STR[low] not in allowed[p]):
        name = "bfloat16" if low == TensorProto.BFLOAT16 else "float16"
        return None, f"ONNX opset {opset} defines no {name} {node.op_type}"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return None, "holds a subgraph"
    ins = tuple(k for k, name in enumerate(node.input) if name and param(schema.inputs, k) in floats)
    outs = tuple(k for k, name in enumerate(node.output) if name and param(schema.outputs, k) in floats)
    return Slots(ins, outs), None


# ----------------------------------------------------------------------------- the plan

def _reduction_extent(node: onnx.NodeProto, shapes: dict[str, list[int | None]],
                      inits: dict[str, TensorProto]) -> int | None:
    """How many elements one output of a reduction sums over; None when not known before run time."""
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    axes: list[int] | None = None
    for a in node.attribute:
        if a.name == "axes":
            axes = list(a.ints)
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in inits:
            return None
        axes = [int(v) for v in numpy_helper.to_array(inits[node.input[1]]).reshape(-1)]
    if not axes:
        noop = any(a.name == "noop_with_empty_axes" and a.i for a in node.attribute)
        if noop:
            return 1
        axes = list(range(len(shape)))
    n = 1
    for ax in axes:
        d = shape[ax % len(shape)] if shape else None
        if d is None or d == 0:
            return None
        n *= d
    return n


def _last_layers(nodes: list[onnx.NodeProto], producer: dict[str, int], outputs: Iterable[str]) -> set[int]:
    """Compute nodes that reach a graph output through no other compute node."""
    last: set[int] = set()
    seen: set[int] = set()
    stack = [producer[o] for o in outputs if o in producer]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if nodes[i].op_type in COMPUTE_OPS:
            last.add(i)
            continue
        stack.extend(producer[t] for t in nodes[i].input if t in producer)
    return last


def _downstream(nodes: list[onnx.NodeProto], start: set[int], consumers: dict[str, list[int]]) -> set[int]:
    out: set[int] = set()
    stack = [j for i in start for t in nodes[i].output for j in consumers.get(t, [])]
    while stack:
        j = stack.pop()
        if j in out or j in start:
            continue
        out.add(j)
        stack.extend(k for t in nodes[j].output for k in consumers.get(t, []))
    return out


def _matches(node: onnx.NodeProto, pattern: str) -> bool:
    return fnmatch.fnmatchcase(node.name, pattern) or fnmatch.fnmatchcase(node.op_type, pattern)


def make_plan(model: onnx.ModelProto, *, dtype: str = "fp16", keep_fp32: str | list[str] = "auto",
              ranges: dict[str, float] | None = None) -> Plan:
    """Decide, node by node, what converts to ``dtype`` and what stays fp32 (with the reason).

    ``ranges``: the largest |value| of each float tensor on sample inputs (fp16 overflow guard).
    Raises `RecipeError` when a ``keep_fp32`` pattern matches no node.
    """
    g = model.graph
    nodes = list(g.node)
    low = LOW[dtype]
    opset = _opset(model)
    types, shapes = _infer(model)
    inits = {t.name: t for t in g.initializer}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            if t:
                consumers.setdefault(t, []).append(i)
    graph_outputs = [o.name for o in g.output]

    slots: dict[int, Slots] = {}
    kept: dict[int, str] = {}
    for i, n in enumerate(nodes):
        s, why = _float_slots(n, opset, low, types)
        if s is not None:
            slots[i] = s
        elif why is not None:
            kept[i] = why
    plan = Plan(dtype, slots, kept)

    def keep(i: int, reason: str) -> None:
        if i in slots and i not in plan.kept:
            plan.kept[i] = reason

    # tensors read inside subgraphs keep their type: their producers stay fp32
    for n in nodes:
        for t in _subgraph_inputs(n):
            if t in producer:
                keep(producer[t], "read inside a subgraph")
    # int8: a node next to a Q/DQ pair is (or feeds) an int8 kernel; Q/DQ and their scales stay as they are
    for i, n in enumerate(nodes):
        reads_dq = any(t in producer and nodes[producer[t]].op_type == "DequantizeLinear" for t in n.input)
        feeds_q = any(nodes[j].op_type == "QuantizeLinear" for t in n.output for j in consumers.get(t, []))
        if reads_dq or feeds_q:
            keep(i, "int8 (next to a Q/DQ pair)")

    patterns = [keep_fp32] if isinstance(keep_fp32, str) else list(keep_fp32)
    globs = [p for p in patterns if p != "auto"]
    unused = [p for p in globs if not any(_matches(n, p) for n in nodes)]
    if unused:
        names = [n.name for n in nodes if n.name][:3]
        ops = sorted({n.op_type for n in nodes})
        raise RecipeError(
            f"precision.keep_fp32: {', '.join(map(repr, unused))} match no node name or op type of the graph; "
            f"node names look like {', '.join(names) or '(unnamed)'}, op types are {', '.join(ops)}"
        )
    for i, n in enumerate(nodes):
        hit = next((p for p in globs if _matches(n, p)), None)
        if hit is not None:
            keep(i, f"keep_fp32 pattern {hit!r}")

    if "auto" in patterns:
        for i, n in enumerate(nodes):
            if n.op_type in NORMALIZATIONS:
                keep(i, "normalization (its statistics lose precision in low precision)")
            elif n.op_type in FRAGILE:
                keep(i, FRAGILE[n.op_type])
            elif n.op_type in REDUCTIONS:
                extent = _reduction_extent(n, shapes, inits)
                if extent is None:
                    keep(i, "reduction over axes whose size is known only at run time")
                elif extent > LARGE_REDUCTION:
                    keep(i, f"reduction over {extent} elements")
        last = _last_layers(nodes, producer, graph_outputs)
        for i in sorted(last):
            keep(i, "last layer (writes the output)")
        for j in sorted(_downstream(nodes, last, consumers)):
            keep(j, "after the last layer")

    if dtype == "fp16" and ranges:
        for i, n in enumerate(nodes):
            if i not in slots:
                continue
            s = slots[i]
            worst = 0.0
            for t in [n.input[k] for k in s.ins] + [n.output[k] for k in s.outs]:
                if t in inits:
                    a = numpy_helper.to_array(inits[t])
                    worst = max(worst, float(np.abs(a).max()) if a.size else 0.0)
                else:
                    worst = max(worst, ranges.get(t, 0.0))
            if worst >= RANGE_LIMIT:
                keep(i, f"values reach {worst:.4g} on the check inputs (fp16 ends at {FP16_MAX:g})")

    _strand_pass(plan, nodes, producer, consumers, set(graph_outputs), set(inits))
    # a Cast to float32 whose readers all convert casts to the low type instead
    for i, n in enumerate(nodes):
        if n.op_type != "Cast":
            continue
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        readers = consumers.get(n.output[0], [])
        if to == TensorProto.FLOAT and readers and n.output[0] not in graph_outputs and all(
                j in slots and j not in plan.kept and any(nodes[j].input[k] == n.output[0] for k in slots[j].ins)
                for j in readers):
            plan.retarget.add(i)
    return plan


def _strand_pass(plan: Plan, nodes: list[onnx.NodeProto], producer: dict[str, int], consumers: dict[str, list[int]],
                 graph_outputs: set[str], inits: set[str]) -> None:
    """Keep fp32 every group of connected non-compute nodes whose float inputs all come from fp32
    and whose float outputs all go to fp32: converting them would only add casts."""
    low_nodes = {i for i in plan.converted if nodes[i].op_type not in COMPUTE_OPS}
    parent = {i: i for i in low_nodes}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in low_nodes:
        for k in plan.slots[i].ins:
            p = producer.get(nodes[i].input[k])
            if p in low_nodes:
                parent[find(i)] = find(p)
    groups: dict[int, list[int]] = {}
    for i in low_nodes:
        groups.setdefault(find(i), []).append(i)
    converted = set(plan.converted)
    for members in groups.values():
        inside = set(members)
        ok = True
        for i in members:
            n, s = nodes[i], plan.slots[i]
            for k in s.ins:
                t = n.input[k]
                p = producer.get(t)
                if t not in inits and p is not None and p not in inside and p in converted:
                    ok = False  # reads a low-precision tensor from outside
            for k in s.outs:
                for j in consumers.get(nodes[i].output[k], []):
                    if j in inside or nodes[j].op_type in TYPE_AGNOSTIC:
                        continue
                    if j in converted:
                        ok = False  # feeds a low-precision node outside
        if ok:
            for i in members:
                plan.kept[i] = "between fp32 nodes (low precision would only add casts)"


# ----------------------------------------------------------------------------- the rewrite

def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounding to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` and back to float32."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "fp16":
        return a.astype(np.float16).astype(np.float32)
    return (_bf16_bits(a).astype(np.uint32) << 16).view(np.float32).reshape(a.shape)


def _low_initializer(t: TensorProto, name: str, dtype: str, emulate: bool) -> TensorProto:
    a = numpy_helper.to_array(t)
    if emulate:
        return numpy_helper.from_array(round_to(a, dtype), name)
    if dtype == "fp16":
        return numpy_helper.from_array(a.astype(np.float16), name)
    out = TensorProto(name=name, data_type=TensorProto.BFLOAT16, dims=list(a.shape))
    out.raw_data = _bf16_bits(a).astype("<u2").tobytes()
    return out


def rewrite(model: onnx.ModelProto, plan: Plan, *, emulate: bool = False) -> onnx.ModelProto:
    """The graph with ``plan`` applied: converted nodes in the low precision, Casts where a
    tensor crosses between them and fp32 nodes; inputs and outputs float32.

    ``emulate``: keep float32 types and round every tensor the real graph would hold in low
    precision to its significant bits (a Veltkamp split: c = x·(2^s+1), x' = c − (c − x)),
    which onnxruntime computes as written on any execution provider.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    nodes = list(g.node)
    dtype, low = plan.dtype, LOW[plan.dtype]
    inits = {t.name: t for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    used = {t for n in nodes for t in list(n.input) + list(n.output)} | set(inits) | {i.name for i in g.input}
    used |= {n.name for n in nodes}
    converted = set(plan.converted)
    new_inits: list[TensorProto] = []
    out: list[onnx.NodeProto] = []
    low_version: dict[str, str] = {}  # tensor -> the name of its low-precision (or rounded) version
    fp32_version: dict[str, str] = {}  # a low-precision tensor -> the name of its float32 version
    home_low: set[str] = set()  # tensors a converted node writes

    def unique(base: str) -> str:
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    k_name = None

    def rounding(src: str, dst: str) -> list[onnx.NodeProto]:
        nonlocal k_name
        if k_name is None:
            k_name = unique(f"imgcompress_round_{dtype}")
            new_inits.append(numpy_helper.from_array(np.array(2.0 ** SPLIT_BITS[dtype] + 1.0, np.float32), k_name))
        c, d = unique(f"{dst}__c"), unique(f"{dst}__d")
        base = unique(f"{dst}__round")
        return [helper.make_node("Mul", [src, k_name], [c], name=f"{base}/Mul"),
                helper.make_node("Sub", [c, src], [d], name=f"{base}/Sub"),
                helper.make_node("Sub", [c, d], [dst], name=f"{base}/Sub_1")]

    def to_low(t: str) -> str:
        if t in low_version:
            return low_version[t]
        name = unique(f"{t}__{dtype}")
        if t in inits:
            new_inits.append(_low_initializer(inits[t], name, dtype, emulate))
        elif emulate:
            out.extend(rounding(t, name))
        else:
            out.append(helper.make_node("Cast", [t], [name], to=low, name=unique(f"{t}/to_{dtype}")))
        low_version[t] = name
        return name

    def to_fp32(t: str) -> str:
        if emulate or t not in home_low:
            return t
        if t not in fp32_version:
            name = unique(f"{t}__fp32")
            out.append(helper.make_node("Cast", [low_version[t]], [name], to=TensorProto.FLOAT,
                                        name=unique(f"{t}/to_fp32")))
            fp32_version[t] = name
        return fp32_version[t]

    def low_outputs(n: onnx.NodeProto, ks: Iterable[int]) -> list[onnx.NodeProto]:
        """Make outputs ``ks`` of ``n`` low precision; returns the nodes that go right after it."""
        after: list[onnx.NodeProto] = []
        for k in ks:
            t = n.output[k]
            home_low.add(t)
            if emulate:
                n.output[k] = unique(f"{t}__raw")
                after.extend(rounding(n.output[k], t))
                low_version[t] = t
            elif t in graph_outputs:  # outputs stay float32: the node writes a renamed tensor, a Cast the output
                n.output[k] = unique(f"{t}__{dtype}")
                low_version[t] = n.output[k]
                after.append(helper.make_node("Cast", [n.output[k]], [t], to=TensorProto.FLOAT,
                                              name=unique(f"{t}/to_fp32")))
                fp32_version[t] = t
            else:
                low_version[t] = t
        return after

    for i, n in enumerate(nodes):
        if i in converted:
            s = plan.slots[i]
            for k in s.ins:
                n.input[k] = to_low(n.input[k])
            after = low_outputs(n, s.outs)
        elif i in plan.retarget:
            if not emulate:
                for a in n.attribute:
                    if a.name == "to":
                        a.i = low
            if n.input[0] in home_low and not emulate:
                n.input[0] = low_version[n.input[0]]
            after = low_outputs(n, [0])
        else:
            for k, t in enumerate(n.input):
                if t in home_low:
                    n.input[k] = low_version[t] if n.op_type in TYPE_AGNOSTIC and not emulate else to_fp32(t)
            after = []
        out.append(n)
        out.extend(after)

    del g.node[:]
    g.node.extend(out)
    g.initializer.extend(new_inits)
    del g.value_info[:]  # types changed; consumers re-infer them
    # initializers that only converted nodes read are now stored once, in low precision
    read = {t for n in g.node for t in n.input} | {o.name for o in g.output}
    for n in g.node:
        read |= _subgraph_inputs(n)
    keep_inits = [t for t in g.initializer if t.name in read]
    if len(keep_inits) != len(g.initializer):
        gone = {t.name for t in g.initializer} - read
        del g.initializer[:]
        g.initializer.extend(keep_inits)
        inputs = [i for i in g.input if i.name not in gone]
        del g.input[:]
        g.input.extend(inputs)
    m.doc_string = (m.doc_string + " " if m.doc_string else "") + (
        f"imgcompress precision: {dtype} ({'fp32 emulation' if emulate else 'converted'}), "
        f"{len(converted)} nodes converted, {len(plan.kept)} kept fp32")
    return m


def prepare(model: onnx.ModelProto, dtype: str) -> onnx.ModelProto:
    """A copy of ``model`` ready to plan: float Constant nodes as initializers and, for bf16, ONNX
    opset `BF16_OPSET` when the graph's opset has no bf16 Conv (or norm)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    constants_to_initializers(m)
    if dtype == "bf16" and _opset(m) < BF16_OPSET and any(n.op_type in COMPUTE_OPS + NORMALIZATIONS for n in m.graph.node):
        m = onnx.version_converter.convert_version(m, BF16_OPSET)
        constants_to_initializers(m)  # the converter adds Constant nodes (e.g. reduction axes)
    return m


@dataclass
class Conversion:
    prepared: onnx.ModelProto  # the input graph as planned (see `prepare`); plan indices refer to its nodes
    plan: Plan
    graph: onnx.ModelProto  # the low-precision graph
    emulated: onnx.ModelProto  # its float32 emulation


def convert(model: onnx.ModelProto, *, dtype: str = "fp16", keep_fp32: str | list[str] = "auto",
            ranges: dict[str, float] | None = None) -> Conversion:
    """The ``dtype`` graph of a float32 (or int8 QDQ) graph, with its emulation and plan."""
    prepared = prepare(model, dtype)
    plan = make_plan(prepared, dtype=dtype, keep_fp32=keep_fp32, ranges=ranges)
    return Conversion(prepared, plan, rewrite(prepared, plan), rewrite(prepared, plan, emulate=True))


# ----------------------------------------------------------------------------- running the check

def _float_tensors(model: onnx.ModelProto) -> list[str]:
    types, _ = _infer(model)
    outputs = {o.name for o in model.graph.output}
    return [t for n in model.graph.node for t in n.output
            if t and t not in outputs and types.get(t) == TensorProto.FLOAT]


def reference_run(model: onnx.ModelProto, xs: list[Batch], *, threads: int,
                  ranges: bool) -> tuple[list[np.ndarray], dict[str, float]]:
    """The graph's outputs on ``xs`` and, with ``ranges``, the largest finite |value| of every
    float tensor the nodes write (one input at a time, so memory stays one input's activations)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = _float_tensors(m) if ranges else []
    for t in names:
        m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = runtime.session(m.SerializeToString(), threads=threads)
    names = [i.name for i in sess.get_inputs()]
    outs: list[np.ndarray] = []
    peak: dict[str, float] = {}
    for x in xs:
        res = sess.run(None, feeds(names, x))
        outs.append(res[0])
        if not ranges:
            continue
        for t, v in zip([o.name for o in model.graph.output] + names, res):
            v = np.abs(v[np.isfinite(v)]) if v.size else v
            if v.size:
                peak[t] = max(peak.get(t, 0.0), float(v.max()))
    return outs, peak


def _drift(model: bytes, xs: list[Batch], refs: list[np.ndarray], rng: tuple[float, float],
           threads: int) -> float:
    """Mean PSNR (dB) of the graph's outputs vs ``refs``."""
    sess = runtime.session(model, threads=threads)
    ps = []
    for x, ref in zip(xs, refs):
        y = runtime.run(sess, x)
        ps.append(metrics.psnr(metrics.normalise(y, rng), metrics.normalise(torch.from_numpy(ref), rng)))
    return float(np.mean(ps))


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def speed_note(dtype: str, providers: list[str]) -> str | None:
    """Why latency measured here says little about a GPU (None when a CUDA provider is present)."""
    if "CUDAExecutionProvider" in providers:
        return None
    flags = _cpu_flags()
    if flags and not flags & set(CPU_FLAGS[dtype]):
        return f"this CPU has no {dtype} arithmetic: latency here is not what a GPU would show"
    return (f"onnxruntime's CPU execution provider computes {dtype} graphs in fp32 (or cannot run them) and no "
            "GPU execution provider is available: latency here is not what a GPU would show")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _precision_label(model: onnx.ModelProto, plan: Plan) -> str:
    parts = []
    if any(n.op_type in QDQ_OPS for n in model.graph.node):
        parts.append("int8")
    if plan.converted:
        parts.append(plan.dtype)
    if plan.kept or not parts:
        parts.append("fp32")
    return "+".join(parts)


def _save(model: onnx.ModelProto, tmp: Path) -> None:
    onnx.save(model, str(tmp))


def run(generator: Generator, ctx: StageContext, cfg: Precision, *, out: Path) -> StageResult:
    """Convert the graph at ``ctx.onnx_path`` to ``cfg.dtype`` into ``out``, and its fp32 emulation
    beside it (``<stem>.emulated.onnx``). Nothing is written unless both are complete and valid."""
    if ctx.onnx_path is None:
        raise RuntimeError("precision needs the exported graph in ctx.onnx_path")
    src = onnx.load(str(ctx.onnx_path))
    constants_to_initializers(src)
    xs = ctx.inputs.calibration[:CHECK_SAMPLES]
    refs, ranges = reference_run(src, xs, threads=ctx.threads, ranges=cfg.dtype == "fp16")
    conv = convert(src, dtype=cfg.dtype, keep_fp32=cfg.keep_fp32, ranges=ranges)
    plan = conv.plan
    try:
        onnx.checker.check_model(conv.graph, full_check=True)
        onnx.checker.check_model(conv.emulated, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise RuntimeError(f"precision: the {cfg.dtype} graph is not valid ONNX ({_first_line(e)}); "
                           "this is a bug in imgcompress, please report it with the model") from e

    rng = generator.spec.output_range
    low_bytes, emu_bytes = conv.graph.SerializeToString(), conv.emulated.SerializeToString()
    providers = ort.get_available_providers()
    check: dict[str, Any] = {"inputs": f"{len(xs)} calibration inputs", "vs": "the input graph's output"}
    reason = None
    try:
        check["psnr_db_onnxruntime_cpu"] = _drift(low_bytes, xs, refs, rng, ctx.threads)
    except Exception as e:  # onnxruntime raises its own Fail/NotImplemented types
        reason = (f"onnxruntime {ort.__version__} CPUExecutionProvider cannot run the {cfg.dtype} graph: "
                  f"{_first_line(e)}")
        if cfg.dtype == "fp16":
            raise RuntimeError(f"precision: {reason}; this is a bug in imgcompress, please report it") from e
        check["psnr_db_onnxruntime_cpu"] = None
    check["psnr_db_emulated"] = _drift(emu_bytes, xs, refs, rng, ctx.threads)
    check["note"] = (f"onnxruntime's CPU provider computes {cfg.dtype} ops in fp32 and drops most casts between "
                     f"them, so its figure shows mostly the rounding of the weights; the emulation rounds every "
                     f"{cfg.dtype} tensor, as a GPU storing {cfg.dtype} would")

    emulated_path = out.with_name(f"{out.stem}.emulated.onnx")
    tmp_low = temp_beside(out, ".tmp.onnx")
    tmp_emu = temp_beside(emulated_path, ".tmp.onnx")
    try:
        _save(conv.graph, tmp_low)
        _save(conv.emulated, tmp_emu)
        os.replace(tmp_emu, emulated_path)
        os.replace(tmp_low, out)
    except BaseException:
        tmp_low.unlink(missing_ok=True)
        tmp_emu.unlink(missing_ok=True)
        if not out.exists():
            emulated_path.unlink(missing_ok=True)
        raise

    nodes = list(conv.prepared.graph.node)
    converted = set(plan.converted)
    ops: dict[str, dict[str, int]] = {}
    for i, n in enumerate(nodes):
        row = ops.setdefault(n.op_type, {"nodes": 0, cfg.dtype: 0})
        row["nodes"] += 1
        row[cfg.dtype] += i in converted
    n_casts = [sum(n.op_type == "Cast" for n in m.graph.node) for m in (conv.prepared, conv.graph)]
    info: dict[str, Any] = {
        "dtype": cfg.dtype,
        "keep_fp32": cfg.keep_fp32,
        "opset": _opset(conv.graph),
        "kept_fp32": [{"node": _label(i, nodes[i]), "op": nodes[i].op_type, "reason": r}
                      for i, r in sorted(plan.kept.items())],
        "counts": {
            "converted": len(converted),
            "kept_fp32": len(plan.kept),
            "not_float_math": len(nodes) - len(set(plan.slots) | set(plan.kept)),
            "casts_added": n_casts[1] - n_casts[0],
        },
        "ops": dict(sorted(ops.items())),
        "size_bytes": {"input": ctx.onnx_path.stat().st_size, "output": out.stat().st_size},
        "providers_available": providers,
        "speed_note": speed_note(cfg.dtype, providers),
        "runnable_here": reason is None,
        "check": check,
        "emulated_onnx": emulated_path.name,  # beside the stage's graph
    }
    if _opset(conv.graph) != _opset(src):
        info["opset_upgraded_from"] = _opset(src)
    if reason is not None:
        info["not_runnable_reason"] = reason
    if not converted:
        log.warning("precision: no node converted to %s; the graph stays fp32", cfg.dtype)
    log.info("precision: %d nodes in %s, %d kept fp32; drift vs the input graph %.1f dB (emulated)",
             len(converted), cfg.dtype, len(plan.kept), check["psnr_db_emulated"])
    return StageResult(generator, out, _precision_label(conv.graph, plan), info, quality_onnx=emulated_path,
                       runnable=reason is None)

"""Quality-aware int8: fall back the most damaging layers to fp32 until a drift budget is met.

1. Quantize every eligible node once (calibration runs once); if the budget is met on the
   search inputs, done.
2. Sensitivity: each node alone in int8 (the fp32 graph plus that node's Q/DQ, see
   `compose`) and the drift it causes (PSNR vs the original's output). Rank nodes by
   damage per MAC, so cheap layers that hurt most fall back first.
3. Fall back the top-k for growing k (1, 2, 4, ...), then bisect to the smallest k that
   meets the budget.

The search inputs are the calibration inputs; the pipeline then measures the result on
evaluation inputs the search never saw, so the report shows both.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..export import runtime
from ..models.inputs import call, cat, shapes
from ..recipe import Quantize
from ..validate import metrics
from .base import StageContext

log = logging.getLogger(__name__)


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
SUFFIX = "__int8"


def compose(fp32: onnx.ModelProto, qdq: onnx.ModelProto, quantized: set[str]) -> onnx.ModelProto:
    """The fp32 graph with int8 (the Q/DQ chains of ``qdq``) on exactly the nodes named in ``quantized``.

    ``qdq`` is the quantizer's output for the same graph with every candidate quantized; node
    and activation names are shared between the two, except where the quantizer rounds a graph
    output ``y``: its producer then writes ``y_QuantizeLinear_Input`` and Q -> DQ writes ``y``,
    which is done here too. Lets a search try any subset of int8 nodes without re-running the
    quantizer.
    """
    producers = {o: n for n in qdq.graph.node for o in n.output}
    q_inits = {i.name: i for i in qdq.graph.initializer}
    q_nodes = {n.name: n for n in qdq.graph.node}
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    graph_outputs = {o.name for o in m.graph.output}
    imported: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []

    def rename_init(name: str) -> str:
        key = "init:" + name
        if key not in imported:
            t = onnx.TensorProto()
            t.CopyFrom(q_inits[name])
            t.name = name + SUFFIX
            new_inits.append(t)
            imported[key] = t.name
        return imported[key]

    def chain(tensor: str, out: list[onnx.NodeProto]) -> str:
        if tensor in imported:
            return imported[tensor]
        p = producers.get(tensor)
        if p is None:  # a quantized weight, a scale, a zero point: copy; else an fp32 tensor both graphs share
            return rename_init(tensor) if tensor in q_inits else tensor
        if p.op_type not in QDQ_OPS:
            return tensor
        ins = [chain(i, out) if i else i for i in p.input]
        node = onnx.NodeProto()
        node.CopyFrom(p)
        node.name = p.name + SUFFIX
        del node.input[:]
        node.input.extend(ins)
        # a graph output keeps its name (the quantizer's DQ writes it); the rest get the suffix
        names = [o if o in graph_outputs else o + SUFFIX for o in p.output]
        del node.output[:]
        node.output.extend(names)
        out.append(node)
        imported.update(zip(p.output, names))
        return imported[tensor]

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qdq.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def q_source(dq_output: str) -> str | None:
        """The fp32 activation behind a DQ output (DQ <- Q <- t), or None for a DQ of a constant."""
        d = producers[dq_output]
        q = producers.get(d.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None

    # the activations the quantizer rounds to int8 because a chosen node reads or writes them;
    # like the quantizer, every reader of such a tensor then reads the rounded value
    rounded: set[str] = set()
    for name in quantized:
        q = q_nodes.get(name)
        if q is None:
            continue
        for i in q.input:
            if i in producers and producers[i].op_type == "DequantizeLinear":
                t = q_source(i)
                if t is not None:
                    rounded.add(t)
        for o in q.output:
            if any(c.op_type == "QuantizeLinear" for c in consumers.get(o, [])):
                rounded.add(o)

    nodes: list[onnx.NodeProto] = []
    for n in m.graph.node:
        q = q_nodes.get(n.name)
        if q is not None:
            pre: list[onnx.NodeProto] = []
            for k, i in enumerate(q.input):
                if k >= len(n.input) or i not in producers or producers[i].op_type != "DequantizeLinear":
                    continue
                t = q_source(i)
                if (t is not None and t in rounded) or (t is None and n.name in quantized):
                    n.input[k] = chain(i, pre)
            nodes.extend(pre)
        nodes.append(n)
        if q is not None:
            # a rounded graph output: the node writes what the quantizer renamed it to, and the
            # output's Q -> DQ (still named as the graph output) follows, as in the quantizer's graph
            post: list[onnx.NodeProto] = []
            for k, o in enumerate(n.output):
                if (o in graph_outputs and k < len(q.output) and q.output[k] != o and q.output[k] in rounded
                        and producers.get(o) is not None and producers[o].op_type == "DequantizeLinear"
                        and q_source(o) == q.output[k]):
                    n.output[k] = q.output[k]
                    chain(o, post)
            nodes.extend(post)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(new_inits)
    return m


class _Scorer:
    """PSNR/SSIM of a graph's outputs on the search inputs vs the original's (or, with
    ``against="input"``, vs the outputs of ``model``, the graph being quantized)."""

    def __init__(self, ctx: StageContext, samples: int, *, with_ssim: bool, against: str = "original",
                 model: onnx.ModelProto | None = None):
        self.ctx, self.with_ssim = ctx, with_ssim
        xs = ctx.inputs.calibration[:samples]
        self.batches = [cat(xs[i:i + 8]) for i in range(0, len(xs), 8)]
        rng = ctx.teacher.spec.output_range
        if against == "input":
            assert model is not None
            sess = runtime.session(model.SerializeToString(), threads=ctx.threads)
            self.refs = [metrics.normalise(runtime.run(sess, b), rng) for b in self.batches]
        else:
            with torch.no_grad():
                self.refs = [metrics.normalise(call(ctx.teacher.module, b), rng) for b in self.batches]
        self.rng = rng
        self.n = len(xs)

    def __call__(self, model: onnx.ModelProto) -> tuple[float, float | None]:
        sess = runtime.session(model.SerializeToString(), threads=self.ctx.threads)
        ps, ss = [], []
        for b, ref in zip(self.batches, self.refs):
            y = metrics.normalise(runtime.run(sess, b), self.rng)
            for i in range(y.shape[0]):
                ps.append(metrics.psnr(y[i:i + 1], ref[i:i + 1]))
                if self.with_ssim:
                    ss.append(metrics.ssim(y[i:i + 1], ref[i:i + 1]))
        return float(np.mean(ps)), (float(np.mean(ss)) if ss else None)


def _meets(score: tuple[float, float | None], cfg: Quantize) -> bool:
    assert cfg.budget is not None
    psnr, ssim = score
    b = cfg.budget
    return (b.min_psnr_db is None or psnr >= b.min_psnr_db) and (b.min_ssim is None or (ssim or 0.0) >= b.min_ssim)


def budget_search(quantizer: Any, model: onnx.ModelProto, ctx: StageContext, cfg: Quantize, *,
                  exclude: list[str], out: Path) -> dict[str, Any]:
    """Write to ``out`` the int8 graph with the fewest fp32 fallbacks that meets ``cfg.budget``.

    Returns what the report shows: the budget, the sensitivity table, the fallback list, the
    score of all-int8 and of the result on the search inputs, and whether the budget was met.
    """
    from .quantize import node_macs, quantized_op_counts

    assert cfg.budget is not None
    start = time.perf_counter()
    score = _Scorer(ctx, cfg.search_samples, with_ssim=cfg.budget.min_ssim is not None, against=cfg.budget.against,
                    model=model)

    quantizer.quantize(out, exclude=exclude)
    qdq = onnx.load(str(out))
    all_int8 = score(qdq)
    counts = quantized_op_counts(qdq)
    result: dict[str, Any] = {
        "method": "greedy",
        "budget": cfg.budget.model_dump(),
        "search_inputs": f"{score.n} calibration inputs (evaluation inputs are kept apart)",
        "against": "the original's output" if cfg.budget.against == "original" else "this stage's input graph's output",
        "all_int8": {"psnr_db": all_int8[0], "ssim": all_int8[1]},
        "sensitivity": [],
        "fallback": [],
        "result": {"psnr_db": all_int8[0], "ssim": all_int8[1]},
        "met": _meets(all_int8, cfg),
        "int8_nodes_before": sum(v["int8"] for v in counts.values()),
        "evaluations": 1,
    }
    if result["met"]:
        result["seconds"] = time.perf_counter() - start
        return result

    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    # the nodes int8 was asked for (other readers of a rounded tensor follow their producer)
    candidates = [n for n in qdq.graph.node
                  if n.op_type in quantizer.op_types and any(i in dq_out for i in n.input)]
    macs = node_macs(model, shapes(ctx.inputs.calibration[0]))
    total = sum(macs.values()) or 1
    rows = []
    for n in candidates:
        p, s = score(compose(model, qdq, {n.name}))
        share = macs.get(n.name, 0) / total
        rows.append({"node": n.name, "op": n.op_type, "mac_share": share, "psnr_db_alone": p, "ssim_alone": s})
    # damage (the MSE a node adds alone) per MAC share: cheap layers that hurt most fall back first
    rows.sort(key=lambda r: 10 ** (-r["psnr_db_alone"] / 10) / (r["mac_share"] + 1e-4), reverse=True)
    result["sensitivity"] = rows
    names = [r["node"] for r in rows]

    def graph(k: int) -> onnx.ModelProto:
        return compose(model, qdq, set(names[k:]))

    tried: dict[int, tuple[float, float | None]] = {0: all_int8}

    def attempt(k: int) -> tuple[float, float | None]:
        if k not in tried:
            tried[k] = score(graph(k))
            log.info("%d layers in fp32: PSNR %.2f dB on the search inputs", k, tried[k][0])
        return tried[k]

    k, lo = 1, 0
    while k < len(rows) and not _meets(attempt(k), cfg):
        lo, k = k, min(2 * k, len(rows))
    if _meets(attempt(k), cfg):
        hi = k
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _meets(attempt(mid), cfg):
                hi = mid
            else:
                lo = mid
        k = hi
    else:  # not even all-fp32 candidates meet it: keep the best mix found, the gate decides
        k = max(tried, key=lambda j: tried[j][0])
    tmp = out.with_name(f".{out.name}.tmp.onnx")
    onnx.save(graph(k), str(tmp))
    os.replace(tmp, out)
    result.update({
        "fallback": [{"node": r["node"], "op": r["op"], "mac_share": r["mac_share"], "to": "fp32"} for r in rows[:k]],
        "result": {"psnr_db": tried[k][0], "ssim": tried[k][1]},
        "met": _meets(tried[k], cfg),
        "evaluations": 1 + len(rows) + len(tried) - 1,
        "seconds": time.perf_counter() - start,
    })
    return result

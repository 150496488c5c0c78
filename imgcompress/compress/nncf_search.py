"""`search: nncf`: meet a PSNR drift budget with NNCF's accuracy-aware quantization.

`nncf.quantize_with_accuracy_control` quantizes the ONNX graph with NNCF, then reverts to
fp32 the groups of quantizers that cost the most until the metric's drop from the fp32
graph's own value is at most ``max_drop``. Its metric is "higher is better" and the drop is
absolute. Ours is the mean PSNR of the outputs vs the budget's reference on the search
inputs, exactly what `search: greedy` scores (the same inputs, reference and batching),
capped at C, the fp32 graph's own score:

    metric(g) = min(PSNR(g), C),   metric(fp32) = C,   max_drop = C - min_psnr_db

so NNCF's stopping rule ``metric(fp32) - metric(g) <= max_drop`` is ``PSNR(g) >= min_psnr_db``.
The cap makes NNCF's own measurement of the fp32 graph come out at exactly C. PSNR alone:
NNCF controls one metric, so a budget with ``min_ssim`` is refused in the recipe.

NNCF's log goes to our logger (debug), its progress bars nowhere. The report gets the keys
of the greedy search where they mean the same (``fallback`` = the nodes NNCF reverted to fp32,
found by comparing its all-int8 graph with the result).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..export import runtime
from ..models.inputs import cat, feeds, shapes, take
from ..recipe import Quantize
from ..validate import metrics
from .base import StageContext
from .search import _Scorer

log = logging.getLogger(__name__)

BATCH = 8  # as the greedy search's scorer batches the search inputs


class _Forward(logging.Handler):
    """Re-emits NNCF's records on our logger: debug, warnings as info."""

    def emit(self, record: logging.LogRecord) -> None:
        level = logging.INFO if record.levelno >= logging.WARNING else logging.DEBUG
        log.log(level, "nncf: %s", record.getMessage())


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs to stdout through its own handler and draws rich progress bars on stdout:
    route the log to ours and swallow the bars, for the duration of the call."""
    nncf_logger = logging.getLogger("nncf")
    # NNCF probes torch's C++ extension loader, which warns that there is no CUDA runtime
    cpp_ext = logging.getLogger("torch.utils.cpp_extension")
    handlers, level = nncf_logger.handlers[:], cpp_ext.level
    nncf_logger.handlers = [_Forward()]
    cpp_ext.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.handlers = handlers
        cpp_ext.setLevel(level)


class _PsnrMetric:
    """NNCF's validation function: ``(model, items) -> (metric, per-item PSNR)``.

    Items are indices into the search inputs; they are run in batches of 8 in the order
    given, so on all the search inputs the value is the greedy scorer's to the last bit.
    """

    def __init__(self, scorer: _Scorer, threads: int):
        self.scorer, self.threads = scorer, threads
        self.xs = cat(scorer.batches)
        self.refs = torch.cat(scorer.refs)
        self.cap = metrics.PSNR_CAP
        self.calls = 0
        self._session: tuple[onnx.ModelProto, Any] | None = None

    def psnrs(self, model: onnx.ModelProto, idx: list[int]) -> list[float]:
        if self._session is None or self._session[0] is not model:  # NNCF calls once per item when ranking
            self._session = (model, runtime.session(model.SerializeToString(), threads=self.threads))
        sess = self._session[1]
        out: list[float] = []
        for i in range(0, len(idx), BATCH):
            part = idx[i:i + BATCH]
            y = metrics.normalise(runtime.run(sess, take(self.xs, part)), self.scorer.rng)
            out.extend(metrics.psnr(y[j:j + 1], self.refs[k:k + 1]) for j, k in enumerate(part))
        return out

    def __call__(self, model: onnx.ModelProto, items: Iterable[Any]) -> tuple[float, list[float]]:
        idx = [int(i) for i in items]
        self.calls += 1
        ps = self.psnrs(model, idx)
        return min(float(np.mean(ps)), self.cap), ps


def _int8_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes (not Q/DQ) that read a dequantized tensor, with their op type."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: n.op_type for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq for i in n.input)}


def nncf_search(quantizer: Any, model: onnx.ModelProto, ctx: StageContext, cfg: Quantize, *,
                exclude: list[str], out: Path) -> dict[str, Any]:
    """Write to ``out`` NNCF's accuracy-controlled int8 graph for ``cfg.budget`` (PSNR only).

    Returns what the report shows, with the greedy search's keys where they mean the same:
    the budget, the scores of NNCF's all-int8 graph and of the result on the search inputs,
    the nodes reverted to fp32, whether the budget was met, evaluations and seconds.
    """
    from .quantize import in_tempdir, node_macs, split_feeds

    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    budget = cfg.budget
    assert budget is not None and budget.min_psnr_db is not None and budget.min_ssim is None
    start = time.perf_counter()
    score = _Scorer(ctx, cfg.search_samples, with_ssim=False, against=budget.against, model=model)
    metric = _PsnrMetric(score, ctx.threads)
    # C: the fp32 graph's own score (100 dB, the PSNR cap, against its own output)
    cap = metric(model, range(score.n))[0]
    metric.cap = cap
    max_drop = max(cap - budget.min_psnr_db, 0.0)

    names = quantizer.input_names
    calibration = split_feeds(quantizer.batches)
    # validation items are indices into the search inputs (the metric batches them itself)
    validation = nncf.Dataset(list(range(score.n)), lambda i: feeds(names, take(metric.xs, slice(i, i + 1))))
    kwargs: dict[str, Any] = {"subset_size": len(calibration), "max_drop": max_drop,
                              "drop_type": nncf.DropType.ABSOLUTE}
    if exclude:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(exclude), validate=False)
    with tempfile.TemporaryDirectory(prefix="imgcompress-nncf-") as keep:
        kwargs["advanced_accuracy_restorer_parameters"] = AdvancedAccuracyRestorerParameters(
            ranking_subset_size=score.n, intermediate_model_dir=keep)
        with in_tempdir(), _quiet_nncf():
            q = nncf.quantize_with_accuracy_control(model, nncf.Dataset(calibration), validation, metric, **kwargs)
        all_int8_graph = onnx.load(str(Path(keep) / "intermediate_model.onnx"))

    dst = out.resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.onnx")
    onnx.save(q, str(tmp))
    os.replace(tmp, dst)

    all_int8 = score(all_int8_graph)
    result = score(q)
    before, after = _int8_nodes(all_int8_graph), _int8_nodes(q)
    macs = node_macs(model, shapes(ctx.inputs.calibration[0]))
    total = sum(macs.values()) or 1
    fallback = [{"node": n, "op": op, "mac_share": macs.get(n, 0) / total, "to": "fp32"}
                for n, op in before.items() if n not in after]
    met = result[0] >= budget.min_psnr_db
    log.info("nncf search: all int8 %.2f dB, result %.2f dB (budget %.1f dB), %d nodes back in fp32",
             all_int8[0], result[0], budget.min_psnr_db, len(fallback))
    return {
        "method": "nncf",
        "budget": budget.model_dump(),
        "search_inputs": f"{score.n} calibration inputs (evaluation inputs are kept apart)",
        "against": "the original's output" if budget.against == "original" else "this stage's input graph's output",
        "nncf": {"metric": "mean PSNR (dB) on the search inputs, capped at the fp32 graph's",
                 "fp32_metric": cap, "max_drop": max_drop, "drop_type": "absolute"},
        "all_int8": {"psnr_db": all_int8[0], "ssim": None},
        "fallback": fallback,
        "result": {"psnr_db": result[0], "ssim": None},
        "met": met,
        "int8_nodes_before": len(before),
        "evaluations": metric.calls + 3,  # NNCF's validation calls, C, and the two scores above
        "seconds": time.perf_counter() - start,
    }

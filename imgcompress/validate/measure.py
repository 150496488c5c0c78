"""Measure the original and every artifact in one run: cost, quality, interleaved speed."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from ..data import Inputs
from ..export import runtime
from ..models.inputs import Batch, call, main
from ..models.spec import Generator
from ..recipe import ValidateConfig
from . import cost, sampling, speed
from .metrics import normalise
from .quality import outputs, quality


@dataclass(frozen=True)
class Artifact:
    """A stage's product: its name in the report, the model behind it, its graph, its precision.

    ``quality_path``: the graph whose outputs stand for this artifact's quality when it is not
    ``path`` itself (a precision stage's fp32 emulation); ``runnable``: False when onnxruntime
    here cannot run ``path``, so latency is not measured (reported as null with the reason)."""

    name: str
    generator: Generator
    path: Path
    precision: str
    quality_path: Path | None = None
    runnable: bool = True
    speed_note: str | None = None


@dataclass(frozen=True)
class SampleOutputs:
    """One evaluation input's images as measured, for report.html: the original model's output,
    each artifact's (by name; a precision artifact's from its quality graph, as its PSNR/SSIM) and
    the ground truth where the task has one; all (1, C, H, W) in [0, 1] (as a viewer shows them)."""

    name: str
    original: torch.Tensor
    artifacts: dict[str, torch.Tensor]
    target: torch.Tensor | None = None


def _ort(sess: ort.InferenceSession) -> Callable[[Batch], torch.Tensor]:
    return lambda x: runtime.run(sess, x)


def measure(teacher: Generator, original_onnx: Path, artifacts: list[Artifact], inputs: Inputs, *,
            cfg: ValidateConfig, threads: int, root: Path, keep: int = 0,
            ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], list[SampleOutputs]]:
    """The report's ``original``, ``artifacts`` and ``speed`` sections, and the outputs on the
    first ``keep`` evaluation inputs (not part of report.json; report.html shows them).

    Quality is on the evaluation inputs: each output against the original's (drift) and
    against ground truth where there is one; where evaluation samples carry a group (a UNet's
    timestep bucket), also per group. A diffusion UNet also gets the end-to-end drift of a DDIM
    sampling run (`imgcompress.validate.sampling`); its samples are then what report.html shows.
    Speed: the original in torch and in onnxruntime fp32 and every artifact, interleaved in each
    round, on one input, with ``threads``.
    """
    spec = teacher.spec
    eval_x = [s.input for s in inputs.evaluation]
    refs = outputs(lambda b: call(teacher.module, b), eval_x)
    x = spec.example_input(batch=cfg.batch, size=cfg.size, seed=7)
    orig_sess = runtime.session(original_onnx, threads=threads)
    sessions = {a.name: runtime.session(a.path, threads=threads) for a in artifacts if a.runnable}
    quality_sessions = {a.name: runtime.session(a.quality_path, threads=threads) if a.quality_path else sessions[a.name]
                        for a in artifacts}

    orig_q = quality(refs, None, inputs, spec)
    ort_q = quality(outputs(_ort(orig_sess), eval_x), refs, inputs, spec)

    def torch_run() -> object:
        with torch.no_grad():
            return call(teacher.module, x)

    runners: dict[str, Callable[[], object]] = {"torch": torch_run, "ort": lambda: _ort(orig_sess)(x)}
    for name, sess in sessions.items():
        runners[name] = (lambda f=_ort(sess): f(x))
    t = speed.measure(runners, warmup=cfg.warmup, repeats=cfg.repeats)
    t_torch, t_ort = t["torch"], t["ort"]

    macs: dict[int, int] = {}

    def macs_of(g: Generator) -> int:
        if id(g.module) not in macs:
            macs[id(g.module)] = cost.macs(g.module, x)
        return macs[id(g.module)]

    original = {
        "params": cost.params(teacher.module),
        "macs": macs_of(teacher),
        "size_bytes": original_onnx.stat().st_size,
        "torch_latency_ms": t_torch.median_ms, "torch_latency_p90_ms": t_torch.p90_ms,
        "ort_latency_ms": t_ort.median_ms, "ort_latency_p90_ms": t_ort.p90_ms,
        "gt_psnr_db": orig_q["gt_psnr_db"], "gt_ssim": orig_q["gt_ssim"],
        "ort_psnr_db": ort_q["psnr_db"], "ort_ssim": ort_q["ssim"],
        "ort_gt_psnr_db": ort_q["gt_psnr_db"], "ort_gt_ssim": ort_q["gt_ssim"],
    }
    sample_set = inputs.sampling if inputs.sampling is not None and inputs.sampling.steps > 0 else None
    if sample_set is not None:
        sample_refs = sampling.finals(lambda b: call(teacher.module, b), sample_set)
        original["sampling"] = sampling.describe(sample_set)
        original["ort_sampling"] = sampling.drift(sampling.finals(_ort(orig_sess), sample_set), sample_refs)
        kept_names = [f"seed {s}" for s in sample_set.seeds][:keep]
    else:
        kept_names = [s.name for s in inputs.evaluation[:keep]]
    shown: list[dict[str, torch.Tensor]] = [{} for _ in kept_names]
    rows = []
    for a in artifacts:
        ta = t.get(a.name)
        outs = outputs(_ort(quality_sessions[a.name]), eval_x)
        q = quality(outs, refs, inputs, a.generator.spec)
        if sample_set is not None:
            finals = sampling.finals(_ort(quality_sessions[a.name]), sample_set)
            q["sampling"] = sampling.drift(finals, sample_refs)
            for d, o in zip(shown, finals):
                d[a.name] = o
        else:
            for d, o in zip(shown, outs):
                d[a.name] = normalise(o, a.generator.spec.output_range)
        row = {
            "name": a.name, "file": str(a.path.relative_to(root)), "precision": a.precision,
            "params": cost.params(a.generator.module), "macs": macs_of(a.generator), "size_bytes": a.path.stat().st_size,
            "latency_ms": ta.median_ms if ta else None, "latency_p90_ms": ta.p90_ms if ta else None,
            "speedup_vs_ort_fp32": t_ort.median_ms / ta.median_ms if ta else None,
            "speedup_vs_torch_fp32": t_torch.median_ms / ta.median_ms if ta else None,
            "psnr_db": q["psnr_db"], "ssim": q["ssim"], "gt_psnr_db": q["gt_psnr_db"], "gt_ssim": q["gt_ssim"],
        }
        if "per_group" in q:
            row["per_group"] = q["per_group"]
        if "sampling" in q:
            row["sampling_psnr_db"], row["sampling_ssim"] = q["sampling"]["psnr_db"], q["sampling"]["ssim"]
        if a.quality_path is not None:
            row["quality_measured_on"] = str(a.quality_path.relative_to(root))
        if a.speed_note is not None:
            row["speed_note"] = a.speed_note
        rows.append(row)
    speed_info = {"input_shape": list(main(x).shape), "threads": threads, "warmup": cfg.warmup,
                  "repeats": cfg.repeats, "interleaved": True}
    if sample_set is not None:
        samples = [SampleOutputs(n, r, d) for n, r, d in zip(kept_names, sample_refs, shown)]
    else:
        samples = [SampleOutputs(s.name, normalise(r, spec.output_range), d,
                                 None if s.target is None else normalise(s.target, spec.output_range))
                   for s, r, d in zip(inputs.evaluation[:keep], refs, shown)]
    return original, rows, speed_info, samples


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "machine": platform.machine(), "processor": cpu,
            "providers_available": ort.get_available_providers(), "provider_used": "CPUExecutionProvider"}

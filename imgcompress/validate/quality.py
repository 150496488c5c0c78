"""Quality of a model's outputs on evaluation samples: drift vs the original, and vs ground truth."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data import Inputs
from ..models.inputs import Batch
from ..models.spec import GeneratorSpec
from . import metrics


def outputs(run: Callable[[Batch], torch.Tensor], inputs: list[Batch]) -> list[torch.Tensor]:
    """``run`` (a torch module or an onnxruntime runner) on each input, as float tensors."""
    with torch.no_grad():
        return [run(x).float() for x in inputs]


def quality(outs: list[torch.Tensor], refs: list[torch.Tensor] | None, inputs: Inputs,
            spec: GeneratorSpec) -> dict[str, float | None]:
    """Mean PSNR/SSIM vs the original's outputs ``refs`` (drift; skipped when None) and vs the
    evaluation samples' ground truth where the task has one (SR: on the Y channel with a border
    of ``scale`` pixels cropped, the usual SR convention)."""
    res: dict[str, float | None] = {}
    norm = [metrics.normalise(o, spec.output_range) for o in outs]
    if refs is not None:
        rn = [metrics.normalise(r, spec.output_range) for r in refs]
        res["psnr_db"] = sum(metrics.psnr(a, b) for a, b in zip(norm, rn)) / len(norm)
        res["ssim"] = sum(metrics.ssim(a, b) for a, b in zip(norm, rn)) / len(norm)
    targets = [s.target for s in inputs.evaluation]
    if all(t is not None for t in targets):
        gts = [metrics.normalise(t, spec.output_range) for t in targets if t is not None]
        border = spec.scale if inputs.task == "sr" else 0
        if inputs.task == "sr":
            norm, gts = [metrics.y_channel(a) for a in norm], [metrics.y_channel(b) for b in gts]
        res["gt_psnr_db"] = sum(metrics.psnr(a, b, border=border) for a, b in zip(norm, gts)) / len(norm)
        res["gt_ssim"] = sum(metrics.ssim(a, b, border=border) for a, b in zip(norm, gts)) / len(norm)
    else:
        res["gt_psnr_db"] = res["gt_ssim"] = None
    return res


def by_group(outs: list[torch.Tensor], refs: list[torch.Tensor], inputs: Inputs,
             spec: GeneratorSpec) -> list[dict[str, object]]:
    """PSNR/SSIM vs the original's outputs per group of evaluation samples (a UNet's timestep
    buckets), in the order the groups first appear; empty when the samples carry no group."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(inputs.evaluation):
        if s.group is not None:
            groups.setdefault(s.group, []).append(i)
    rows: list[dict[str, object]] = []
    for name, idx in groups.items():
        a = [metrics.normalise(outs[i], spec.output_range) for i in idx]
        b = [metrics.normalise(refs[i], spec.output_range) for i in idx]
        rows.append({"group": name, "samples": len(idx),
                     "psnr_db": sum(metrics.psnr(x, y) for x, y in zip(a, b)) / len(idx),
                     "ssim": sum(metrics.ssim(x, y) for x, y in zip(a, b)) / len(idx)})
    return rows

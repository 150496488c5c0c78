"""Quality of a model's outputs on evaluation samples: drift vs the original, and vs ground truth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
            spec: GeneratorSpec) -> dict[str, Any]:
    """Mean PSNR/SSIM vs the original's outputs ``refs`` (drift; skipped when None) and vs the
    evaluation samples' ground truth where the task has one (SR: on the Y channel with a border
    of ``scale`` pixels cropped, the usual SR convention). Where evaluation samples carry a group
    (a UNet's timestep bucket), ``per_group`` holds the drift of each group, in the order the
    groups first appear."""
    res: dict[str, Any] = {}
    norm = [metrics.normalise(o, spec.output_range) for o in outs]
    if refs is not None:
        scores = metrics.pair_scores(norm, [metrics.normalise(r, spec.output_range) for r in refs])
        res.update(metrics.mean_scores(scores))
        groups: dict[str, list[tuple[float, float]]] = {}
        for s, score in zip(inputs.evaluation, scores):
            if s.group is not None:
                groups.setdefault(s.group, []).append(score)
        if groups:
            res["per_group"] = [{"group": g, "samples": len(v), **metrics.mean_scores(v)} for g, v in groups.items()]
    targets = [s.target for s in inputs.evaluation]
    if all(t is not None for t in targets):
        gts = [metrics.normalise(t, spec.output_range) for t in targets if t is not None]
        border = spec.scale if inputs.task == "sr" else 0
        if inputs.task == "sr":
            norm, gts = [metrics.y_channel(a) for a in norm], [metrics.y_channel(b) for b in gts]
        gt = metrics.mean_scores(metrics.pair_scores(norm, gts, border=border))
        res["gt_psnr_db"], res["gt_ssim"] = gt["psnr_db"], gt["ssim"]
    else:
        res["gt_psnr_db"] = res["gt_ssim"] = None
    return res


"""Quality of a model's outputs on evaluation samples: drift vs the original, and vs ground truth."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data import Inputs
from ..models.spec import GeneratorSpec
from . import metrics


def outputs(run: Callable[[torch.Tensor], torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
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

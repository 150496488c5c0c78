"""The quality gate: thresholds checked against the final artifact of a report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from ..errors import UsageError
from ..recipe import GateConfig

FLAGS = {"min_psnr": "--min-psnr", "min_ssim": "--min-ssim", "max_gt_psnr_drop": "--max-gt-psnr-drop",
         "min_speedup": "--min-speedup", "min_sampling_psnr": "--min-sampling-psnr"}


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# name -> (artifact field or derived value, comparison, description)
def _checks(report: dict[str, Any], gate: GateConfig) -> list[Check]:
    final = final_artifact(report)
    orig = report["original"]
    out: list[Check] = []

    def add(name: str, value: float | None, threshold: float, higher_is_better: bool, what: str) -> None:
        ok = value is not None and (value >= threshold if higher_is_better else value <= threshold)
        op = ">=" if higher_is_better else "<="
        shown = "n/a" if value is None else f"{value:.4g}"
        out.append(Check(name, value, threshold, ok, f"{what} {shown} {op} {threshold:g}"))

    if gate.min_psnr is not None:
        add("min_psnr", final.get("psnr_db"), gate.min_psnr, True, "PSNR vs original (dB)")
    if gate.min_ssim is not None:
        add("min_ssim", final.get("ssim"), gate.min_ssim, True, "SSIM vs original")
    if gate.max_gt_psnr_drop is not None:
        if orig.get("gt_psnr_db") is None or final.get("gt_psnr_db") is None:
            raise UsageError(
                "gate max_gt_psnr_drop needs ground truth, and this report has none "
                f"(task {report.get('data', {}).get('task', '?')}); drop that threshold"
            )
        drop = orig["gt_psnr_db"] - final["gt_psnr_db"]
        add("max_gt_psnr_drop", drop, gate.max_gt_psnr_drop, False, "ground-truth PSNR drop (dB)")
    if gate.min_speedup is not None:
        add("min_speedup", final.get("speedup_vs_ort_fp32"), gate.min_speedup, True, "speedup vs ORT fp32 original")
    if gate.min_sampling_psnr is not None:
        if "sampling" not in orig:
            raise UsageError(
                "gate min_sampling_psnr needs the end-to-end sampling check of a diffusion UNet, and this report "
                "has none; drop that threshold (or set data.diffusion.sampling_steps above 0)"
            )
        add("min_sampling_psnr", final.get("sampling_psnr_db"), gate.min_sampling_psnr, True,
            "end-to-end DDIM sample PSNR vs original (dB)")
    return out


def final_artifact(report: dict[str, Any]) -> dict[str, Any]:
    arts = report.get("artifacts") or []
    name = report.get("final")
    for a in arts:
        if a.get("name") == name:
            return a
    if not arts:
        raise UsageError("the report has no artifacts to gate; re-run imgcompress apply")
    return arts[-1]


def check_gate(report: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """Evaluate ``gate`` on ``report``; returns ``{"passed", "checks", "artifact"}``."""
    checks = _checks(report, gate)
    return {
        "passed": all(c.passed for c in checks),
        "artifact": final_artifact(report).get("name"),
        "checks": [c.to_dict() for c in checks],
    }


def merge_gate(base: GateConfig | None = None, **overrides: float | None) -> GateConfig:
    """The recipe's gate with CLI flags (when given) taking precedence.

    An out-of-range flag raises `UsageError` naming the flag (``--min-ssim 5: ...``).
    """
    data = base.model_dump() if base is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = [k for k in given if k not in FLAGS]
    if unknown:
        raise UsageError(f"unknown gate threshold {unknown[0]!r}; use one of {', '.join(FLAGS)}")
    data.update(given)
    try:
        return GateConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        flag = FLAGS.get(name, name)
        raise UsageError(f"{flag} {data.get(name)}: {err['msg'].lower()}") from None

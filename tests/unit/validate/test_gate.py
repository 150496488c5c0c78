"""The quality gate: each threshold at its boundary, ground truth required where asked, CLI over recipe."""

from __future__ import annotations

from typing import Any

import pytest

from imgcompress.errors import UsageError
from imgcompress.recipe import GateConfig
from imgcompress.validate.gate import check_gate, final_artifact, merge_gate


def _report(*, psnr: float | None = 32.5, ssim: float | None = 0.9375, speedup: float | None = 1.5,
            gt: tuple[float | None, float | None] = (30.5, 29.25), task: str = "sr") -> dict[str, Any]:
    """The parts of a pipeline report the gate reads; the final artifact is not the last one."""
    orig_gt, final_gt = gt
    return {
        "data": {"task": task},
        "original": {"gt_psnr_db": orig_gt, "gt_ssim": None if orig_gt is None else 0.9},
        "artifacts": [
            {"name": "0-quantize", "psnr_db": psnr, "ssim": ssim, "speedup_vs_ort_fp32": speedup,
             "gt_psnr_db": final_gt},
            {"name": "1-precision", "psnr_db": 1.0, "ssim": 0.0, "speedup_vs_ort_fp32": 0.1, "gt_psnr_db": 1.0},
        ],
        "final": "0-quantize",
    }


def _one(report: dict[str, Any], **gate: float) -> dict[str, Any]:
    verdict = check_gate(report, GateConfig(**gate))
    (check,) = verdict["checks"]
    assert verdict["passed"] is check["passed"]
    assert verdict["artifact"] == "0-quantize"
    return check


# threshold, value on the report (exactly representable), pass-side and fail-side thresholds
BOUNDARIES = [
    ("min_psnr", 32.5, 32.5, 32.5 + 1e-9),
    ("min_ssim", 0.9375, 0.9375, 0.9375 + 1e-9),
    ("min_speedup", 1.5, 1.5, 1.5 + 1e-9),
    ("max_gt_psnr_drop", 1.25, 1.25, 1.25 - 1e-9),  # 30.5 - 29.25
]


@pytest.mark.parametrize(("name", "value", "ok", "fail"), BOUNDARIES, ids=[b[0] for b in BOUNDARIES])
def test_threshold_boundary(name: str, value: float, ok: float, fail: float) -> None:
    passed = _one(_report(), **{name: ok})
    assert passed["passed"] is True and passed["name"] == name
    assert passed["value"] == pytest.approx(value) and passed["threshold"] == ok
    failed = _one(_report(), **{name: fail})
    assert failed["passed"] is False and failed["value"] == pytest.approx(value)


@pytest.mark.parametrize(("name", "detail"), [
    ("min_psnr", "PSNR vs original (dB) 32.5 >= 30"),
    ("min_ssim", "SSIM vs original 0.9375 >= 30"),
    ("min_speedup", "speedup vs ORT fp32 original 1.5 >= 30"),
    ("max_gt_psnr_drop", "ground-truth PSNR drop (dB) 1.25 <= 30"),
])
def test_detail_says_value_and_threshold(name: str, detail: str) -> None:
    gate = GateConfig.model_construct(**{name: 30.0})  # min_ssim 30 is out of its range; the text is what matters
    (check,) = check_gate(_report(), gate)["checks"]
    assert check["detail"] == detail


def test_missing_value_fails() -> None:
    check = _one(_report(psnr=None), min_psnr=0.0)
    assert check["passed"] is False and "n/a" in check["detail"]


def test_no_thresholds_pass() -> None:
    assert check_gate(_report(psnr=1.0), GateConfig()) == {"passed": True, "artifact": "0-quantize", "checks": []}


def test_all_checks_must_pass() -> None:
    verdict = check_gate(_report(), GateConfig(min_psnr=30, min_ssim=0.99, min_speedup=1.0))
    assert [c["passed"] for c in verdict["checks"]] == [True, False, True]
    assert verdict["passed"] is False


def test_gate_reads_the_final_artifact() -> None:
    report = _report()
    assert final_artifact(report)["name"] == "0-quantize"
    report["final"] = "1-precision"
    assert check_gate(report, GateConfig(min_psnr=30))["passed"] is False
    del report["final"]
    assert final_artifact(report)["name"] == "1-precision"  # the last one when none is named
    report["artifacts"] = []
    with pytest.raises(UsageError, match="no artifacts"):
        check_gate(report, GateConfig(min_psnr=30))


@pytest.mark.parametrize("gt", [(None, None), (30.0, None), (None, 30.0)])
def test_gt_drop_without_ground_truth_is_a_usage_error(gt: tuple[float | None, float | None]) -> None:
    with pytest.raises(UsageError, match=r"max_gt_psnr_drop needs ground truth.*task translate.*drop that threshold"):
        check_gate(_report(gt=gt, task="translate"), GateConfig(max_gt_psnr_drop=1.0))


def test_gt_drop_can_be_negative() -> None:
    check = _one(_report(gt=(30.0, 31.0)), max_gt_psnr_drop=0.0)  # compression improved on ground truth
    assert check["passed"] is True and check["value"] == pytest.approx(-1.0)


# --- merge_gate: the CLI over the recipe ------------------------------------------------------------


def test_cli_flag_overrides_the_recipe() -> None:
    recipe = GateConfig(min_psnr=30, min_ssim=0.9)
    merged = merge_gate(recipe, min_psnr=35.0, min_ssim=None, min_speedup=1.2, max_gt_psnr_drop=None)
    assert merged == GateConfig(min_psnr=35.0, min_ssim=0.9, min_speedup=1.2)
    assert recipe == GateConfig(min_psnr=30, min_ssim=0.9)  # the recipe's gate is not changed


def test_merge_without_flags_is_the_recipe() -> None:
    recipe = GateConfig(max_gt_psnr_drop=0.5)
    assert merge_gate(recipe) == recipe
    assert merge_gate(recipe, min_psnr=None) == recipe


def test_merged_gate_decides() -> None:
    report = _report()
    recipe = GateConfig(min_psnr=40)
    assert check_gate(report, recipe)["passed"] is False
    assert check_gate(report, merge_gate(recipe, min_psnr=32.0))["passed"] is True


@pytest.mark.parametrize(("flag", "name"), [({"min_ssim": 2.0}, "--min-ssim"), ({"min_speedup": 0.0}, "--min-speedup")])
def test_bad_cli_threshold_is_a_usage_error(flag: dict[str, float], name: str) -> None:
    # bad input (exit 2) naming the flag, not a pydantic error (exit 3, "internal error")
    with pytest.raises(UsageError, match=rf"{name}\b"):
        merge_gate(GateConfig(min_psnr=30), **flag)

"""report.json loading and the report.md summary."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from imgcompress.errors import UsageError
from imgcompress.recipe import GateConfig
from imgcompress.validate.gate import check_gate
from imgcompress.files import atomic_write_text
from imgcompress.validate.report import SCHEMA, Report, to_markdown


def _artifact(name: str, precision: str, *, psnr: float, ssim: float, latency: float, gt: float | None) -> dict[str, Any]:
    return {
        "name": name, "file": f"stages/{name}.onnx", "precision": precision, "params": 57_000, "macs": 2_300_000_000,
        "size_bytes": 61_440, "latency_ms": latency, "latency_p90_ms": latency * 1.2,
        "speedup_vs_ort_fp32": 8.0 / latency, "speedup_vs_torch_fp32": 12.0 / latency,
        "psnr_db": psnr, "ssim": ssim, "gt_psnr_db": gt, "gt_ssim": None if gt is None else 0.88,
    }


def _report(*, task: str = "sr", gate: GateConfig | None = None) -> dict[str, Any]:
    """A report in the schema pipeline.py writes (schema 1)."""
    gt = task == "sr"
    r: dict[str, Any] = {
        "schema": SCHEMA,
        "imgcompress_version": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "passed": False,
        "recipe": {"path": "recipes/int8.yaml", "name": "int8", "sha256": "0" * 64, "stages": ["quantize", "precision"]},
        "checkpoint": {"path": "/ckpts/espcn_x3.safetensors", "arch": "espcn", "kwargs": {"scale": 3},
                       "spec": {"task": task}},
        "data": {"task": task, "calibration": "32 random 96px crops", "evaluation": "8 images in /imgs"},
        "environment": {"python": "3.11", "torch": "2", "onnxruntime": "1", "machine": "x86_64"},
        "export": {"opset": 17, "max_abs_error": 1e-7, "tolerance": 1e-3, "checked_shapes": [[2, 3, 64, 64]]},
        "speed": {"input_shape": [1, 3, 64, 64], "threads": 2, "warmup": 3, "repeats": 20, "interleaved": True},
        "original": {
            "params": 57_000, "macs": 2_300_000_000, "size_bytes": 230_000,
            "torch_latency_ms": 12.0, "torch_latency_p90_ms": 13.0, "ort_latency_ms": 8.0, "ort_latency_p90_ms": 9.0,
            "gt_psnr_db": 30.5 if gt else None, "gt_ssim": 0.9 if gt else None,
            "ort_psnr_db": 80.0, "ort_ssim": 1.0, "ort_gt_psnr_db": 30.5 if gt else None,
            "ort_gt_ssim": 0.9 if gt else None,
        },
        "stages": [],
        "artifacts": [
            _artifact("0-quantize", "int8", psnr=41.25, ssim=0.9912, latency=4.0, gt=30.25 if gt else None),
            _artifact("1-precision", "int8+fp16", psnr=39.5, ssim=0.9871, latency=3.2, gt=30.0 if gt else None),
        ],
        "final": "1-precision",
        "files": {"model_onnx": "model.onnx"},
    }
    verdict = check_gate(r, gate or GateConfig())
    r["gate"], r["passed"] = verdict, verdict["passed"]
    return r


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- Report.load ----------------------------------------------------------------------------------


def test_load_from_a_folder_and_a_file(tmp_path: Path) -> None:
    data = _report(gate=GateConfig(min_psnr=40))
    _write(tmp_path / "out" / "report.json", data)
    for where in (tmp_path / "out", tmp_path / "out" / "report.json"):
        rep = Report.load(where)
        assert rep.data == data
        assert rep.passed is False
        assert rep.final["name"] == "1-precision"
        assert [a["name"] for a in rep.artifacts] == ["0-quantize", "1-precision"]
        assert rep.failures == ["min_psnr: PSNR vs original (dB) 39.5 >= 40"]


def test_passed_report_has_no_failures(tmp_path: Path) -> None:
    rep = Report.load(_write(tmp_path / "report.json", _report(gate=GateConfig(min_psnr=39.5, min_ssim=0.98))))
    assert rep.passed is True and rep.failures == [] and len(rep.checks) == 2


def test_to_json_round_trips(tmp_path: Path) -> None:
    rep = Report(_report())
    p = tmp_path / "report.json"
    p.write_text(rep.to_json())
    assert Report.load(p).data == rep.data


@pytest.mark.parametrize(("content", "match"), [
    (None, r"no such report; run imgcompress apply first"),
    ("{not json", r"not a JSON report"),
    (b"\xff\xfe\x00garbage", r"not a JSON report"),
    ("[1, 2, 3]", r"not an imgcompress report \(schema 1\)"),
    ('"report"', r"not an imgcompress report"),
    (json.dumps({"schema": 2, "artifacts": [], "original": {}}), r"not an imgcompress report"),
    (json.dumps({"artifacts": [], "original": {}}), r"not an imgcompress report"),
    (json.dumps({"schema": 1, "original": {}}), r"not an imgcompress report"),
    (json.dumps({"schema": 1, "artifacts": []}), r"not an imgcompress report"),
])
def test_load_refuses_what_is_not_a_report(tmp_path: Path, content: str | bytes | None, match: str) -> None:
    p = tmp_path / "report.json"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(UsageError, match=match):
        Report.load(p)


def test_load_on_a_folder_without_report(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"report\.json: no such report"):
        Report.load(tmp_path)


def test_atomic_write_text(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "report.md"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [f.name for f in p.parent.iterdir()] == ["report.md"]


# --- to_markdown ------------------------------------------------------------------------------------


def _rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]


def test_markdown_has_a_row_per_artifact_and_the_originals() -> None:
    md = to_markdown(_report())
    rows = _rows(md)
    header, *body = rows
    assert header[0] == "model" and len(header) == 12
    assert [r[0] for r in body] == ["original (torch)", "original (ORT)", "0-quantize", "1-precision (final)"]
    assert all(len(r) == len(header) for r in body)
    quant = body[2]
    assert quant[1] == "int8"
    assert quant[5] == "4.00 / 4.80"  # median / p90
    assert quant[6] == "2.00×" and quant[7] == "3.00×"  # vs ORT fp32 8 ms, vs torch 12 ms
    assert quant[8] == "41.25" and quant[9] == "0.9912" and quant[10] == "30.25"
    assert body[0][6] == "0.67×" and body[1][7] == "1.50×"  # the originals against each other


def test_markdown_names_checkpoint_and_verdict() -> None:
    failed = to_markdown(_report(gate=GateConfig(min_psnr=40, min_speedup=2.0)))
    assert failed.startswith("## imgcompress — espcn_x3.safetensors: FAILED")
    assert "### Gate on `1-precision`: FAILED" in failed
    assert "- ❌ `min_psnr`: PSNR vs original (dB) 39.5 >= 40" in failed
    assert "- ✅ `min_speedup`: speedup vs ORT fp32 original 2.5 >= 2" in failed
    passed = to_markdown(_report(gate=GateConfig(min_psnr=39)))
    assert passed.startswith("## imgcompress — espcn_x3.safetensors: PASSED")
    assert "### Gate on `1-precision`: PASSED" in passed and "❌" not in passed


def test_markdown_without_thresholds() -> None:
    md = to_markdown(_report())
    assert "PASSED" in md.splitlines()[0]
    assert "### Gate: no thresholds set (passes)" in md


def test_markdown_without_ground_truth_shows_dashes() -> None:
    md = to_markdown(_report(task="translate"))
    body = _rows(md)[1:]
    assert all(r[10] == "–" and r[11] == "–" for r in body)
    assert "Y channel" not in md
    assert "Y channel, border cropped by the scale" in to_markdown(_report(task="sr"))


def test_markdown_states_how_speed_was_measured() -> None:
    md = to_markdown(_report())
    assert "speed input 1×3×64×64, 2 threads, median of 20" in md
    assert "Recipe `recipes/int8.yaml`" in md and "arch `espcn`" in md and "task `sr`" in md


def test_markdown_follows_the_data() -> None:
    r = _report()
    r2 = copy.deepcopy(r)
    r2["artifacts"][0]["latency_ms"] = 2.0
    r2["artifacts"].append(_artifact("2-extra", "fp16", psnr=50.0, ssim=0.999, latency=1.0, gt=None))
    rows = _rows(to_markdown(r2))
    assert [row[0] for row in rows[1:]] == ["original (torch)", "original (ORT)", "0-quantize", "1-precision (final)",
                                            "2-extra"]
    assert rows[3][5].startswith("2.00 / ")

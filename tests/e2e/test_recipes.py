"""The shipped pruning and mixed-precision recipes, end to end on the example checkpoint.

Each recipe runs once (module-scoped) through the CLI in-process, with fewer inputs and
timing repeats than it ships with so the file takes seconds; everything else is the recipe's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import yaml
from typer.testing import CliRunner

from imgcompress import load_generator
from imgcompress.cli import app
from imgcompress.export import runtime

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "espcn_x2.safetensors"
runner = CliRunner()


def _apply(recipe: str, tmp: Path) -> tuple[int, str, Path]:
    data = yaml.safe_load((ROOT / "recipes" / recipe).read_text())
    data["data"] = {**data.get("data", {}), "calibration_samples": 8, "eval_samples": 3}
    data["validate"] = {"repeats": 3, "warmup": 1}
    path = tmp / recipe
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp / "out"
    res = runner.invoke(app, ["apply", str(path), str(EXAMPLE), "--out", str(out), "--threads", "2"])
    return res.exit_code, res.output, out


@pytest.fixture(scope="module")
def prune_quant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    code, output, out = _apply("prune_quant.yaml", tmp_path_factory.mktemp("pq"))
    return {"code": code, "output": output, "out": out,
            "report": json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None}


@pytest.fixture(scope="module")
def fp16(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    code, output, out = _apply("fp16.yaml", tmp_path_factory.mktemp("fp16"))
    return {"code": code, "output": output, "out": out,
            "report": json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None}


# --- prune -> quantize ----------------------------------------------------------------------


def test_prune_quant_passes_its_own_gate_on_the_example(prune_quant: dict[str, Any]) -> None:
    r = prune_quant["report"]
    assert r is not None, prune_quant["output"]
    assert prune_quant["code"] == 0, prune_quant["output"]
    (check,) = r["gate"]["checks"]
    assert check["name"] == "min_psnr" and check["passed"] is True and check["value"] >= 30
    names = [a["name"] for a in r["artifacts"]]
    assert names == ["0-prune", "1-distill", "2-quantize"] and r["final"] == "2-quantize"
    pruned, distilled, final = r["artifacts"]
    # pruning alone is far off; distillation wins most of it back; int8 keeps it
    assert pruned["psnr_db"] < 20 < 30 <= distilled["psnr_db"]
    assert final["psnr_db"] >= distilled["psnr_db"] - 1.0
    assert final["macs"] * 2.5 <= r["original"]["macs"]


def test_distill_stage_reports_its_training(prune_quant: dict[str, Any]) -> None:
    info = prune_quant["report"]["stages"][1]["info"]
    assert info["steps_done"] == info["steps"] == 1500 and info["resumed_from_step"] is None
    assert info["history"][-1]["step"] == 1500 and info["psnr_vs_teacher_held_out"] >= 30
    assert info["nproc"] == 1 and info["device"] == "cpu" and info["steps_per_s"] > 0
    assert info["student_params"] == prune_quant["report"]["stages"][0]["info"]["params_after"]
    # the resume checkpoint is gone once the run finished
    assert not (prune_quant["out"] / ".resume").exists()


def test_prune_stage_reports_params_macs_and_protected_layers(prune_quant: dict[str, Any]) -> None:
    r = prune_quant["report"]
    info = r["stages"][0]["info"]
    assert info["params_after"] < info["params_before"] == r["original"]["params"]
    assert info["macs_before"] / info["macs_after"] >= 2.5
    assert info["macs_factor"] == pytest.approx(info["macs_before"] / info["macs_after"], abs=1e-3)
    assert info["steps"] == 4  # iterative_steps
    # the last conv writes the image: protected, with the reason
    assert {p["layer"] for p in info["protected"]} == {"tail"}
    assert "model output" in info["protected"][0]["reason"]
    pruned = r["artifacts"][0]
    assert pruned["params"] == info["params_after"] and pruned["precision"] == "fp32"
    # MACs scale with the input area: the stage counts at the calibration crop, the report at the speed input
    area = {k: shape[-1] * shape[-2] for k, shape in (("stage", info["input_shape"]), ("speed", r["speed"]["input_shape"]))}
    assert pruned["macs"] * area["stage"] == info["macs_after"] * area["speed"]
    # the pruned graph is validated like any artifact: real latency and drift
    assert pruned["latency_ms"] > 0 and pruned["speedup_vs_ort_fp32"] > 0


def test_quantize_budget_after_distill_is_measured_against_its_input(prune_quant: dict[str, Any]) -> None:
    search = prune_quant["report"]["stages"][2]["info"]["search"]
    assert search["budget"] == {"min_psnr_db": 40.0, "min_ssim": None, "against": "input"}
    assert search["against"] == "this stage's input graph's output"
    assert search["met"] is True and search["result"]["psnr_db"] >= 40.0
    final = prune_quant["report"]["artifacts"][2]
    assert "int8" in final["precision"]


def test_the_pruned_distilled_model_reloads_from_its_safetensors_alone(prune_quant: dict[str, Any]) -> None:
    out = prune_quant["out"]
    g = load_generator(out / "model.safetensors")
    info = prune_quant["report"]["stages"][0]["info"]
    assert sum(p.numel() for p in g.module.parameters()) == info["params_after"]
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        y = g.module(x)
    ref = runtime.run(runtime.session(out / "stages" / "01-distill.onnx", threads=1), x)
    assert y.shape == (1, 3, 48, 48)
    assert float((y - ref).abs().max()) < 1e-4


# --- precision (fp16) -------------------------------------------------------------------------


def test_fp16_recipe_meets_its_gate_on_the_emulated_graph(fp16: dict[str, Any]) -> None:
    r = fp16["report"]
    assert r is not None, fp16["output"]
    assert fp16["code"] == 0, fp16["output"]
    (a,) = r["artifacts"]
    assert a["precision"] == "fp16+fp32"
    assert a["psnr_db"] >= 60
    # quality comes from the emulation (every fp16 tensor rounded), which the stage wrote beside the graph
    assert a["quality_measured_on"] == "stages/00-precision.emulated.onnx"
    assert (fp16["out"] / a["quality_measured_on"]).is_file()
    info = r["stages"][0]["info"]
    assert info["check"]["psnr_db_emulated"] <= info["check"]["psnr_db_onnxruntime_cpu"] + 1e-6


def test_fp16_model_onnx_is_fp16_with_float32_io(fp16: dict[str, Any]) -> None:
    m = onnx.load(str(fp16["out"] / "model.onnx"))
    f32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in m.graph.output] == [f32]
    weights = [t for t in m.graph.initializer if len(t.dims) == 4]
    assert weights and any(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


def test_fp16_speed_is_marked_as_not_what_a_gpu_would_show(fp16: dict[str, Any]) -> None:
    if "CUDAExecutionProvider" in fp16["report"]["environment"]["providers_available"]:
        pytest.skip("a CUDA provider is present: the CPU caveat does not apply")
    (a,) = fp16["report"]["artifacts"]
    assert "GPU" in a["speed_note"]
    md = (fp16["out"] / "report.md").read_text()
    assert "quality measured on `stages/00-precision.emulated.onnx`" in md
    assert a["speed_note"] in md

"""The CLI's other faces: `inspect`, `--json` output for scripts, and the summary table."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import yaml
from typer.testing import CliRunner

from imgcompress import export_onnx, load_generator
from imgcompress.compress.quantize import node_macs

from imgcompress.cli import app
from imgcompress.models import names

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "espcn_x2.safetensors"
runner = CliRunner()


def test_inspect_json_describes_the_example(tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(EXAMPLE), "--json", "--size", "32"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["arch"] == "espcn" and info["resolved_by"] == "imgcompress metadata"
    assert info["params"] == 24396
    assert info["macs_input"] == [1, 3, 32, 32]
    # the count of the exported graph's shapes at the same input
    path = tmp_path / "espcn.onnx"
    export_onnx(load_generator(EXAMPLE), path)
    assert info["macs"] == sum(node_macs(onnx.load(str(path)), (1, 3, 32, 32)).values()) > 0
    assert info["output"].endswith("×2")


def test_inspect_lists_every_builtin_arch() -> None:
    res = runner.invoke(app, ["inspect", "--archs"])
    assert res.exit_code == 0
    listed = {line.split(":")[0] for line in res.stdout.splitlines()}
    assert set(names()) | {"spandrel"} <= listed


def test_apply_json_prints_only_the_report(tmp_path: Path) -> None:
    recipe = yaml.safe_load((ROOT / "recipes" / "int8.yaml").read_text())
    recipe["validate"] = {"repeats": 3, "warmup": 1}
    recipe["data"] = {**recipe["data"], "calibration_samples": 8, "eval_samples": 2}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = runner.invoke(app, ["apply", str(path), str(EXAMPLE), "--out", str(tmp_path / "o"), "--json",
                              "--min-psnr", "30"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # nothing but JSON on stdout
    assert report == json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["gate"]["checks"][0]["name"] == "min_psnr" and report["passed"]
    # the same run's markdown summary names every artifact and the verdict
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| 0-quantize (final) |" in md and "PASSED" in md


def test_a_command_run_in_process_leaves_logging_as_it_found_it() -> None:
    """CliRunner's stderr is closed after the call: a handler left on it breaks every later log call."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    nncf_level = logging.getLogger("nncf").level
    res = runner.invoke(app, ["inspect", "--archs"])
    assert res.exit_code == 0
    assert root.handlers == handlers and root.level == level
    assert logging.getLogger("nncf").level == nncf_level
    res = runner.invoke(app, ["inspect", "no-such-file.pth"])  # the error path restores it too
    assert res.exit_code == 2
    assert root.handlers == handlers and root.level == level

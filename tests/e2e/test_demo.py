"""End to end: the real `imgcompress` CLI on the example checkpoint with the int8 recipe.

One `apply` run (module-scoped) feeds every test; `validate.repeats` is lowered so the
whole file takes well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import imgcompress

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "espcn_x2.safetensors"
RECIPE = ROOT / "recipes" / "int8.yaml"


def cli(*args: str | Path, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI as a user would (a fresh interpreter, real argv)."""
    return subprocess.run(
        [sys.executable, "-m", "imgcompress.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    assert EXAMPLE.is_file(), f"{EXAMPLE} is missing: run examples/train_example.py"
    tmp = tmp_path_factory.mktemp("demo")
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["validate"] = {**(recipe.get("validate") or {}), "repeats": 5}
    fast = tmp / "int8_fast.yaml"
    fast.write_text(yaml.safe_dump(recipe, sort_keys=False))
    before = sha256(EXAMPLE)
    # a relative --out, as in `make demo` (--out out/demo): every stage must cope with it
    proc = cli("apply", fast, EXAMPLE, "--out", "out/demo", cwd=tmp)
    out = tmp / "out" / "demo"
    return {"proc": proc, "out": out, "sha_before": before}


@pytest.fixture
def out(run: dict) -> Path:
    """The output folder of a finished run (a failed run fails each test that reads it, briefly)."""
    proc = run["proc"]
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.fail(f"imgcompress apply exited {proc.returncode} (see test_apply_exits_0): {last}", pytrace=False)
    return run["out"]


def test_apply_exits_0(run: dict) -> None:
    proc = run["proc"]
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "PASSED" in proc.stderr


def test_writes_every_file_and_no_partial(out: Path) -> None:
    for name in ("report.json", "report.md", "model.onnx", "model.safetensors"):
        assert (out / name).is_file(), f"{name} missing; {out} holds {sorted(p.name for p in out.iterdir())}"
        assert (out / name).stat().st_size > 0, name
    assert not (out / ".partial").exists()
    assert not list(out.rglob(".partial"))
    assert not [p.name for p in out.rglob("*") if ".tmp" in p.name]


def test_report_json(out: Path) -> None:
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == 1
    assert report["passed"] is True
    assert report["gate"]["passed"] is True
    assert report["checkpoint"]["arch"] == "espcn"
    assert report["speed"]["repeats"] == 5
    arts = report["artifacts"]
    assert len(arts) == 1
    art = arts[0]
    assert art["precision"].startswith("int8"), art["precision"]
    assert report["final"] == art["name"]
    assert art["psnr_db"] >= 35, art
    assert art["speedup_vs_ort_fp32"] > 0
    assert art["speedup_vs_torch_fp32"] > 0
    assert art["latency_ms"] > 0
    # the sr task has ground truth: the original's and the artifact's are both reported
    assert report["original"]["gt_psnr_db"] > 20
    assert art["gt_psnr_db"] > 20


def test_report_md_names_the_verdict(out: Path) -> None:
    text = (out / "report.md").read_text()
    assert "espcn_x2.safetensors: PASSED" in text
    assert "int8" in text
    assert "min_psnr" in text


def test_model_safetensors_reloads_to_the_same_outputs(out: Path) -> None:
    original = imgcompress.load_generator(EXAMPLE)
    saved = imgcompress.load_generator(out / "model.safetensors")
    assert saved.arch == original.arch == "espcn"
    assert saved.kwargs == original.kwargs
    assert saved.spec == original.spec
    x = original.spec.example_input(batch=2, size=24, seed=3)
    with torch.no_grad():
        assert torch.equal(saved(x), original(x))


def test_input_checkpoint_unchanged(run: dict) -> None:
    assert sha256(EXAMPLE) == run["sha_before"]


def test_gate_rechecks_the_report(out: Path) -> None:
    report = out / "report.json"
    strict = cli("gate", report, "--min-psnr", "99")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    said = strict.stdout + strict.stderr
    assert "FAIL" in said and "min_psnr" in said, said

    lenient = cli("gate", report, "--min-psnr", "1")
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "PASSED" in lenient.stdout + lenient.stderr

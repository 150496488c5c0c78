"""Distillation from the command line: killed with SIGKILL mid-way and restarted with the same
command it resumes and ends where an uninterrupted run ends; `--nproc 2` trains with DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgcompress import load_generator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "espcn_x2.safetensors"
RECIPE = """\
stages:
  - prune: {ratio: 0.5}
  - distill: {steps: STEPS, batch_size: 8, lr: 2.0e-3, checkpoint_every: 50}
data: {crop: 64, calibration_samples: 8, eval_samples: 2}
validate: {repeats: 3, warmup: 1}
"""


def _cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgcompress.cli", "apply", str(recipe), str(EXAMPLE), "--out", str(out),
            "--threads", "2", *extra]


def _recipe(tmp: Path, steps: int) -> Path:
    p = tmp / f"distill{steps}.yaml"
    p.write_text(RECIPE.replace("STEPS", str(steps)))
    return p


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_generator(out / "model.safetensors").module.state_dict()


def test_a_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, 400)
    out = tmp_path / "killed"
    ckpt = out / ".resume" / "01-distill.pt"
    proc = subprocess.Popen(_cmd(recipe, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ckpt.is_file(), f"no checkpoint appeared (exit {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists() and not (out / "model.safetensors").exists()

    resumed = subprocess.run(_cmd(recipe, out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    info = json.loads((out / "report.json").read_text())["stages"][1]["info"]
    assert info["resumed_from_step"] is not None and 50 <= info["resumed_from_step"] < 400
    assert info["steps_done"] == 400
    assert "resuming from step" in resumed.stderr
    assert not ckpt.exists()  # finished: nothing left to resume

    whole = tmp_path / "whole"
    plain = subprocess.run(_cmd(recipe, whole), capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    a, b = _weights(out), _weights(whole)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    ref = json.loads((whole / "report.json").read_text())["stages"][1]["info"]
    assert ref["resumed_from_step"] is None
    assert info["psnr_vs_teacher_held_out"] == pytest.approx(ref["psnr_vs_teacher_held_out"], abs=0.01)


def test_fresh_starts_over_and_nproc_2_trains_with_ddp(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, 20)
    out = tmp_path / "ddp"
    res = subprocess.run(_cmd(recipe, out, "--nproc", "2", "--fresh"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads((out / "report.json").read_text())["stages"][1]["info"]
    assert info["nproc"] == 2 and info["backend"] == "gloo" and info["threads_per_process"] == 1
    assert info["ranks_max_param_diff"] == 0.0 and info["steps_done"] == 20


def test_nproc_that_does_not_divide_the_batch_is_bad_input(tmp_path: Path) -> None:
    res = subprocess.run(_cmd(_recipe(tmp_path, 20), tmp_path / "o", "--nproc", "3"), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "error: --nproc 3 does not divide distill.batch_size 8; choose a batch size that is a multiple of the "
        "process count")


def test_the_same_command_under_torchrun_trains_with_ddp_and_rank_0_writes(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip(f"no torchrun beside {sys.executable}")
    out = tmp_path / "tr"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "imgcompress.cli", "apply",
           str(_recipe(tmp_path, 20)), str(EXAMPLE), "--out", str(out), "--threads", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    info = report["stages"][1]["info"]
    assert info["nproc"] == 2 and info["launcher"] == "torchrun" and info["backend"] == "gloo"
    assert info["ranks_max_param_diff"] == 0.0 and info["steps_done"] == 20
    assert res.stdout.count("imgcompress: espcn_x2.safetensors") == 1  # one summary: rank 0's
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "model.safetensors", "original.onnx", "report.json", "report.md", "stages"]
        + [n for n in ("report.html",) if (out / n).exists()])

"""`imgcompress apply recipes/int8.yaml` on every shared checkpoint: it runs, and the report is honest.

Speed is not asserted here (benchmarks measure it); quality and the report's shape are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from imgcompress import apply, load_generator, parse_recipe

ROOT = Path(__file__).resolve().parents[2]


def _int8_recipe(**overrides: dict) -> object:
    """The shipped int8 recipe with smaller data/validation settings, for test time."""
    data = yaml.safe_load((ROOT / "recipes" / "int8.yaml").read_text())
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_recipe(yaml.safe_dump(data))


def test_imdn_int8_keeps_set5_quality(shared_dir: Path, tmp_path: Path) -> None:
    """The issue's bar: int8 IMDN ×4 within 0.1 dB of the original on Set5, ≥ 40 dB vs its output."""
    recipe = _int8_recipe(validate={"repeats": 3, "warmup": 1})
    result = apply(recipe, shared_dir / "checkpoints" / "imdn_x4.pth", out=tmp_path / "out",
                   images=str(shared_dir / "images" / "set14"), eval_images=str(shared_dir / "images" / "set5"))
    r = result.report.data
    final = result.report.final
    assert result.passed
    assert final["precision"] in ("int8", "int8+fp32")
    assert r["stages"][0]["info"]["ops"]["Conv"]["int8"] >= 20  # most of the 46 convs run in int8
    assert final["psnr_db"] >= 40.0
    assert r["original"]["gt_psnr_db"] == pytest.approx(32.21, abs=0.05)
    assert r["original"]["gt_psnr_db"] - final["gt_psnr_db"] <= 0.1
    search = r["stages"][0]["info"]["search"]
    assert search["result"]["psnr_db"] >= 46.0 or not search["met"]


@pytest.mark.parametrize(("file", "arch", "extra"), [
    ("fsrcnn_x2.pth", "fsrcnn", {"images": "set14", "eval_images": "set5"}),
    ("realesr-animevideov3.pth", "spandrel", {"images": "set14", "eval_images": "set5"}),
    ("dcgan_faces.tar", "dcgan", {}),
    ("mnist_vae.pth", "mnist_vae_decoder", {}),
    ("cyclegan_vintage_G_A2B.pth", "cyclegan_resnet", {"images": "kodak24"}),
])
def test_int8_runs_on_every_shared_checkpoint(shared_dir: Path, tmp_path: Path, file: str, arch: str, extra: dict) -> None:
    recipe = _int8_recipe(
        data={"calibration_samples": 8, "eval_samples": 2, "crop": 64, "eval_crop": 64},
        validate={"repeats": 3, "warmup": 1, "size": 32},
    )
    ckpt = shared_dir / "checkpoints" / file
    before = ckpt.read_bytes()
    images = {k: str(shared_dir / "images" / v) for k, v in extra.items()}
    result = apply(recipe, ckpt, out=tmp_path / "out", **images)
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r == result.report.data
    assert r["checkpoint"]["arch"] == arch
    final = result.report.final
    # every figure is there and plausible
    assert final["latency_ms"] > 0 and r["original"]["ort_latency_ms"] > 0
    assert final["psnr_db"] >= 30.0, "int8 with a 46 dB budget must not wreck the output"
    assert r["original"]["ort_psnr_db"] >= 60.0, "the fp32 export must reproduce torch"
    # the artifacts are real: the ONNX file runs, the safetensors reloads to the same outputs
    g = load_generator(tmp_path / "out" / "model.safetensors")
    original = load_generator(ckpt)
    assert g.arch == arch and g.spec == original.spec
    x = g.spec.example_input(batch=1, size=32)
    assert torch.equal(g.module(x), original.module(x))
    assert (tmp_path / "out" / "model.onnx").stat().st_size == final["size_bytes"]
    assert ckpt.read_bytes() == before


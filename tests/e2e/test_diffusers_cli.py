"""A diffusers autoencoder folder through `imgcompress apply`: its decoder is pruned, distilled
(the pruned copy, or a fresh TAESD-style student) and int8-quantized on latents its own encoder
makes of the bundled images; the report says so and the result reloads from model.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from imgcompress import load_generator
from imgcompress.cli import app

pytest.importorskip("diffusers")
runner = CliRunner()

RECIPE = """\
stages:
  - prune: {ratio: 0.5}
  - distill: {student: STUDENT, steps: 30, batch_size: 4, lr: 2.0e-3, checkpoint_every: 1000}
  - quantize: {calibration: percentile, budget: {min_psnr_db: 30, against: input}}
data: {encoder: ENCODER, crop: 64, eval_crop: 64, calibration_samples: 8, eval_samples: 2}
validate: {repeats: 3, warmup: 1, size: 8}
"""
TAESD_STUDENT = ("{arch: taesd_decoder, kwargs: {latent_channels: 4, channels: 16, out_channels: 3, "
                 "blocks: [1, 1, 1], pool_stages: [], pool_channels: 16, pool_groups: 4}}")


@pytest.mark.parametrize("student", ["pruned", "taesd"])
def test_apply_on_an_autoencoder_kl_folder(diffusers_folders: dict[str, Path], tmp_path: Path, student: str) -> None:
    folder = diffusers_folders["autoencoder_kl"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("ENCODER", str(folder))
                      .replace("STUDENT", "pruned" if student == "pruned" else TAESD_STUDENT))
    out = tmp_path / "out"
    res = runner.invoke(app, ["apply", str(recipe), str(folder), "--out", str(out), "--json", "--threads", "2"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    assert r["checkpoint"]["arch"] == "diffusers" and r["checkpoint"]["kwargs"]["class_name"] == "AutoencoderKL"
    assert "from encoder" in r["data"]["calibration"] and "ground truth" in r["data"]["evaluation"]
    assert r["speed"]["input_shape"] == [1, 4, 8, 8]
    names = [a["name"] for a in r["artifacts"]]
    assert names == ["0-prune", "1-distill", "2-quantize"]
    prune_, distill_, quant = r["artifacts"]
    assert r["original"]["macs"] / prune_["macs"] >= 3.0
    assert quant["precision"] in ("int8", "int8+fp32") and quant["psnr_db"] is not None
    assert r["original"]["ort_psnr_db"] >= 60
    g = load_generator(out / "model.safetensors")
    if student == "pruned":
        assert g.arch == "diffusers" and g.widths  # the pruned diffusers decoder, rebuilt from its config
        assert distill_["macs"] == prune_["macs"]
    else:
        assert g.arch == "taesd_decoder" and distill_["macs"] < prune_["macs"]
    assert g.spec.output_range == (-1.0, 1.0) and g.spec.scale == 4
    with torch.no_grad():
        assert g.module(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 32, 32)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the input folder is untouched


def test_a_unet_folder_is_refused_with_one_line(diffusers_folders: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: [quantize]\n")
    unet = diffusers_folders["unet"]
    for args in (["inspect", str(unet)], ["apply", str(recipe), str(unet), "--out", str(tmp_path / "o")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert errors == lines[-1:] and "a UNet2DModel takes (latent, timestep" in errors[0], res.stderr
    assert not (tmp_path / "o" / "report.json").exists()

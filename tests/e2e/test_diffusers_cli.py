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
RECIPES = Path(__file__).resolve().parents[2] / "recipes"

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


def _one_error_line(res: object) -> str:
    lines = res.stderr.strip().splitlines()  # type: ignore[attr-defined]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], res.stderr  # type: ignore[attr-defined]
    return errors[0]


def test_unet_int8_recipe_on_a_unet_folder(diffusers_folders: dict[str, Path], tmp_path: Path) -> None:
    """The shipped recipe: per-bucket drift, an end-to-end DDIM drift, and the gate on it."""
    folder = diffusers_folders["unet"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "out"
    res = runner.invoke(app, ["apply", str(RECIPES / "unet_int8.yaml"), str(folder), "--out", str(out), "--json",
                              "--threads", "2"])
    r = json.loads((out / "report.json").read_text())
    assert res.exit_code == (0 if r["passed"] else 1), res.output
    assert r["data"]["task"] == "diffusion" and "4 equal buckets" in r["data"]["calibration"]
    assert r["speed"]["input_shape"] == [1, 4, 16, 16]
    sampling = r["original"]["sampling"]
    assert sampling["steps"] == 10 and sampling["samples"] == 2 and sampling["compared_on"] == "final latents, over ±4"
    assert r["original"]["ort_sampling"]["psnr_db"] >= 60  # ORT fp32 samples what torch samples
    (q,) = r["artifacts"]
    info = r["stages"][0]["info"]
    assert q["precision"] in ("int8", "int8+fp32") and info["ops"]["Conv"]["int8"] > 0
    # the first layer on the latent stays fp32, not the timestep MLP the graph computes first
    assert info["kept_fp32_by_default"]["/unet/conv_in/Conv"] == "first layer"
    assert info["kept_fp32_by_default"]["/unet/conv_out/Conv"] == "last layer"
    assert [g["group"] for g in q["per_group"]] == ["t 0-249", "t 250-499", "t 500-749", "t 750-999"]
    assert all(g["samples"] == 2 and 20 < g["psnr_db"] < 100 for g in q["per_group"])
    assert q["psnr_db"] == pytest.approx(sum(g["psnr_db"] for g in q["per_group"]) / 4)
    assert 0 < q["sampling_psnr_db"] < 100 and 0 < q["sampling_ssim"] <= 1
    check = {c["name"]: c for c in r["gate"]["checks"]}["min_sampling_psnr"]
    assert check["value"] == q["sampling_psnr_db"] and check["passed"] == (q["sampling_psnr_db"] >= 25)
    md = (out / "report.md").read_text()
    assert "### Drift per timestep bucket and end to end" in md and "| PSNR t 750-999 |" in md
    assert "Drift per timestep bucket" in (out / "report.html").read_text()
    import onnx

    assert [i.name for i in onnx.load(str(out / "model.onnx")).graph.input] == ["input", "timestep"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the input folder is untouched


def test_prune_and_quantize_a_text_conditional_unet(diffusers_folders: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: [{prune: {ratio: 0.5}}, {quantize: {}}]\n"
                      f"data: {{encoder: {diffusers_folders['autoencoder_kl']}, crop: 64, calibration_samples: 8, "
                      "eval_samples: 4, diffusion: {sampling_steps: 4}}\n"
                      "validate: {repeats: 3, warmup: 1}\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["apply", str(recipe), str(diffusers_folders["unet_cond"]), "--out", str(out),
                              "--threads", "2", "--min-sampling-psnr", "0"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    assert "text embeddings: synthetic N(0, 1)" in r["data"]["calibration"]
    assert "scaling_factor 0.18215" in r["data"]["calibration"]
    assert r["original"]["sampling"]["compared_on"].startswith("images decoded by autoencoder_kl")
    prune_, quant = r["artifacts"]
    info = r["stages"][0]["info"]
    assert r["original"]["macs"] / prune_["macs"] >= 1.5
    assert any("time_emb_proj" in name for name in info["pruned_layers"])  # pruned with its ResNet block
    assert any("attn" in p["layer"] for p in info["protected"])  # attention channels kept whole
    assert prune_["sampling_psnr_db"] < 100 and len(prune_["per_group"]) == 4
    g = load_generator(out / "model.safetensors")
    assert g.widths and [e.name for e in g.spec.extra_inputs] == ["timestep", "encoder_hidden_states"]
    from imgcompress.export import runtime

    sess = runtime.session(out / "stages" / "00-prune.onnx", threads=1)
    x = g.spec.example_input(batch=2, seed=5)
    with torch.no_grad():
        assert (runtime.run(sess, x) - g(x)).abs().max() < 1e-4  # the pruned UNet reloads exactly


def test_what_a_unet_cannot_do_fails_with_one_line(diffusers_folders: dict[str, Path], tmp_path: Path) -> None:
    unet = diffusers_folders["unet"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: [prune, distill]\ndata: {calibration_samples: 4, eval_samples: 4}\n")
    res = runner.invoke(app, ["apply", str(recipe), str(unet), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "stages.1.distill: the model takes extra inputs (timestep)" in _one_error_line(res)
    assert not (tmp_path / "o" / "report.json").exists()
    decoder = diffusers_folders["autoencoder_kl"]
    recipe.write_text("stages: [quantize]\ndata: {calibration_samples: 4, eval_samples: 2}\n")
    res = runner.invoke(app, ["apply", str(recipe), str(decoder), "--out", str(tmp_path / "o"),
                              "--min-sampling-psnr", "20"])
    assert res.exit_code == 2, res.output
    assert "gate min_sampling_psnr needs the end-to-end sampling check of a diffusion UNet" in _one_error_line(res)

"""TAEF2 (the tiny FLUX.2 VAE, ../shared/checkpoints/taef2_*.pth) as a generator: detected and
built from its keys, it reconstructs Kodak photos through its encoder, and int8 with encoder
latents keeps ≥ 40 dB of the original's output while running faster than ORT fp32.

Sizes are cut for test time (the torch baseline is slow on this CPU: ~1 s per 256 px decode
on an idle machine); docs/latent.md has the full-size numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from imgcompress import apply, load_generator, parse_recipe
from imgcompress.data import center_crop, to_tensor
from imgcompress.models import taesd
from imgcompress.validate.metrics import psnr

ROOT = Path(__file__).resolve().parents[2]

TAEF2 = {"latent_channels": 32, "channels": 64, "out_channels": 3, "blocks": [3, 3, 3, 1], "pool_stages": [0],
         "pool_channels": 256, "pool_groups": 4}


@pytest.fixture(scope="module")
def ckpts(shared_dir: Path) -> Path:
    return shared_dir / "checkpoints"


def test_taef2_is_detected_with_its_layout_and_reconstructs_kodak(ckpts: Path, shared_dir: Path) -> None:
    g = load_generator(ckpts / "taef2_decoder.pth")
    assert g.arch == "taesd_decoder" and g.kwargs == TAEF2
    assert g.params == 1_338_499  # the README's 1.34M
    assert (g.spec.task, g.spec.input_kind, g.spec.spatial_latent) == ("generate", "latent", True)
    assert (g.spec.latent_shape, g.spec.scale, g.spec.output_range) == ((32, 32, 32), 8, (0.0, 1.0))
    encoder = taesd.load_encoder(str(ckpts / "taef2_encoder.pth"))
    assert (encoder.latent_channels, encoder.factor) == (32, 8)
    assert sum(p.numel() for p in encoder.parameters()) == 1_338_528
    scores = []
    for name in ("kodim05.png", "kodim23.png"):
        x = to_tensor(center_crop(Image.open(shared_dir / "images" / "kodak24" / name).convert("RGB"), 256))
        with torch.no_grad():
            z = encoder(x)
            y = g.module(z)
        assert z.shape == (1, 32, 32, 32) and y.shape == x.shape
        # the decoder's own range is [0, 1]: only a sliver overshoots, and not by much
        assert float(((y < 0) | (y > 1)).float().mean()) < 0.1 and -0.3 < float(y.min()) and float(y.max()) < 1.3
        scores.append(float(psnr(y.clamp(0, 1), x)))
    assert min(scores) > 25.0, scores


def _recipe(ckpts: Path, quantize: dict | None = None, **overrides: dict) -> object:
    """The shipped recipe with the shared encoder and smaller settings, for test time."""
    data = yaml.safe_load((ROOT / "recipes" / "vae_decoder_int8.yaml").read_text())
    data["data"]["encoder"] = str(ckpts / "taef2_encoder.pth")
    data["stages"][0]["quantize"].update(quantize or {})
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_recipe(yaml.safe_dump(data))


def test_taef2_int8_keeps_40_db_on_encoder_latents_of_kodak(ckpts: Path, shared_dir: Path, tmp_path: Path) -> None:
    recipe = _recipe(
        ckpts,
        quantize={"search_samples": 8},  # the budget search is most of the test's time
        data={"calibration_samples": 16, "eval_samples": 4, "eval_crop": 192},
        validate={"repeats": 5, "warmup": 1, "size": 16},
    )
    ckpt = ckpts / "taef2_decoder.pth"
    before = ckpt.stat().st_mtime_ns
    result = apply(recipe, ckpt, out=tmp_path / "out", images=str(shared_dir / "images" / "kodak24"))
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    final = result.report.final
    assert result.passed, result.report.failures
    assert r["checkpoint"]["arch"] == "taesd_decoder"
    # the latents are the encoder's, of Kodak images, and the report says so
    assert "from encoder taef2_encoder.pth" in r["data"]["calibration"] and "kodak24" in r["data"]["calibration"]
    assert "ground truth" in r["data"]["evaluation"]
    assert r["speed"]["input_shape"] == [1, 32, 16, 16]
    # quality: ≥ 40 dB vs the original's output on evaluation latents, the round trip barely moves
    assert final["precision"] in ("int8", "int8+fp32")
    assert final["psnr_db"] >= 40.0
    assert r["original"]["ort_psnr_db"] >= 60.0
    assert r["original"]["gt_psnr_db"] > 25.0
    assert r["original"]["gt_psnr_db"] - final["gt_psnr_db"] < 0.5
    ops = r["stages"][0]["info"]["ops"]["Conv"]
    assert ops["int8"] >= 15, ops
    # speed is measured and reported (its size depends on the load of the machine)
    assert final["speedup_vs_ort_fp32"] > 0 and r["original"]["ort_latency_ms"] > 0
    print(f"taef2 int8: {final['psnr_db']:.2f} dB vs original, {final['speedup_vs_ort_fp32']:.2f}x vs ORT fp32, "
          f"{ops['int8']}/{ops['nodes']} Conv int8, round trip {r['original']['gt_psnr_db']:.2f} -> "
          f"{final['gt_psnr_db']:.2f} dB")
    # the compressed model reloads from its safetensors alone
    g = load_generator(tmp_path / "out" / "model.safetensors")
    assert g.arch == "taesd_decoder" and g.spec.spatial_latent and g.spec.scale == 8
    assert ckpt.stat().st_mtime_ns == before

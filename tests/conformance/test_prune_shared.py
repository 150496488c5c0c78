"""Pruning the real checkpoints by half: every one prunes, runs, exports, and reloads exactly
from the file alone."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from imgcompress import export_onnx, load_generator, save_generator
from imgcompress.compress import prune
from imgcompress.compress.base import StageContext
from imgcompress.data import make_inputs
from imgcompress.models.spec import Generator
from imgcompress.recipe import DataConfig, Prune

pytestmark = pytest.mark.shared

# Least MACs factor (validate.cost.macs at the calibration shape) at ratio 0.5.
MIN_FACTOR = {
    "imdn_x4.pth": 3.5,
    "realesr-animevideov3.pth": 3.5,
    "dcgan_faces.tar": 3.5,
    "cyclegan_vintage_G_A2B.pth": 3.5,
    # one prunable width (hidden 400): both layers are linear in it, so half the width is half the MACs
    "mnist_vae.pth": 1.99,
    # the ×2 ConvTranspose writes the image: it keeps its output channels and loses only inputs
    "fsrcnn_x2.pth": 2.6,
}
# the layer whose channels are the image's, kept
OUTPUT_LAYER = {
    "imdn_x4.pth": "upsampler.0",
    "realesr-animevideov3.pth": "body.34",
    "dcgan_faces.tar": "main.12",
    "cyclegan_vintage_G_A2B.pth": "model.26",
    "mnist_vae.pth": "fc4",
    "fsrcnn_x2.pth": "last_part",
}


@pytest.mark.parametrize("name", sorted(MIN_FACTOR))
def test_prune_half_runs_exports_and_reloads(shared_dir: Path, tmp_path: Path, name: str) -> None:
    g = load_generator(shared_dir / "checkpoints" / name)
    inputs = make_inputs(g.spec, DataConfig(calibration_samples=2, crop=64, eval_samples=1))
    teacher = Generator(copy.deepcopy(g.module).eval(), g.spec, g.arch, dict(g.kwargs), dict(g.widths), g.source)
    ctx = StageContext(teacher=teacher, inputs=inputs, workdir=tmp_path, threads=2)

    res = prune.run(g, ctx, Prune(ratio=0.5))

    info = res.info
    assert info["fallback"] is None
    assert info["macs_before"] / info["macs_after"] >= MIN_FACTOR[name]
    assert [p["layer"] for p in info["protected"]] == [OUTPUT_LAYER[name]]
    pruned = res.generator
    assert pruned.widths and pruned.arch == g.arch
    x = inputs.calibration[0]
    with torch.no_grad():
        y = pruned.module(x)
        assert y.shape == teacher.module(x).shape and torch.isfinite(y).all()
    export_onnx(pruned, tmp_path / "pruned.onnx", size=x.shape[-1] if g.spec.input_kind == "image" else None)

    back = load_generator(save_generator(pruned, tmp_path / "pruned.safetensors"))
    assert back.widths == pruned.widths and back.spec == pruned.spec
    with torch.no_grad():
        assert torch.equal(back.module(x), y)


def test_the_vae_decoder_reaches_2_5x_with_a_macs_target(shared_dir: Path, tmp_path: Path) -> None:
    """At ratio 0.5 the VAE decoder cannot pass 2× (one prunable width, layers linear in it);
    a MACs target prunes further and gets there."""
    g = load_generator(shared_dir / "checkpoints" / "mnist_vae.pth")
    inputs = make_inputs(g.spec, DataConfig(calibration_samples=2, eval_samples=1))
    teacher = Generator(copy.deepcopy(g.module).eval(), g.spec, g.arch, dict(g.kwargs), dict(g.widths), g.source)
    res = prune.run(g, StageContext(teacher=teacher, inputs=inputs, workdir=tmp_path, threads=2),
                    Prune(target_macs=0.4))
    assert res.info["macs_before"] / res.info["macs_after"] >= 2.5
    assert res.info["macs_after"] <= 0.4 * res.info["macs_before"]

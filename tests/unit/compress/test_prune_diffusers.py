"""Pruning diffusers decoders: the width attributes diffusers asserts on follow the layers, the
attention's channels are protected with the reason, and the pruned model reloads exactly."""

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

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize(("name", "min_factor"), [("autoencoder_kl", 3.0), ("autoencoder_tiny", 3.5)])
def test_half_the_channels_of_a_diffusers_decoder(diffusers_folders: dict[str, Path], tmp_path: Path, name: str,
                                                  min_factor: float) -> None:
    g = load_generator(diffusers_folders[name])
    inputs = make_inputs(g.spec, DataConfig(calibration_samples=2, crop=64, eval_samples=1))
    teacher = Generator(copy.deepcopy(g.module).eval(), g.spec, g.arch, dict(g.kwargs), dict(g.widths), g.source)
    res = prune.run(g, StageContext(teacher=teacher, inputs=inputs, workdir=tmp_path, threads=2), Prune(ratio=0.5))

    info = res.info
    assert info["fallback"] is None  # no step broke the forward
    assert info["macs_before"] / info["macs_after"] >= min_factor
    protected = {p["layer"]: p["reason"] for p in info["protected"]}
    out_layer = "decoder.conv_out" if name == "autoencoder_kl" else "decoder.layers.11"
    assert "image's channels" in protected.pop(out_layer)
    if name == "autoencoder_kl":
        # the mid-block attention (and the residual stream through it) keeps its channels, saying why
        assert {"decoder.mid_block.attentions.0.to_q", "decoder.mid_block.attentions.0.to_v"} <= set(protected)
        assert all("TransposeBackward" in r for r in protected.values())
        for m in res.generator.module.modules():
            if isinstance(m, diffusers.models.upsampling.Upsample2D):
                assert m.channels == m.conv.in_channels and m.out_channels == m.conv.out_channels
        assert any(m.channels < 64 for m in res.generator.module.modules()
                   if isinstance(m, diffusers.models.upsampling.Upsample2D))
    else:
        assert not protected

    x = inputs.calibration[0]
    with torch.no_grad():
        y = res.generator.module(x)
    assert y.shape == teacher.module(x).shape and torch.isfinite(y).all()
    export_onnx(res.generator, tmp_path / "pruned.onnx")
    back = load_generator(save_generator(res.generator, tmp_path / "pruned.safetensors"))
    assert back.widths == res.generator.widths and back.kwargs == g.kwargs  # the config keeps the original widths
    with torch.no_grad():
        assert torch.equal(back.module(x), y)

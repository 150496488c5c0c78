from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgcompress import models
from imgcompress.errors import CheckpointError
from imgcompress.export import runtime
from imgcompress.export.onnx import export_onnx
from imgcompress.models import taesd
from imgcompress.models.spec import Generator

NAME = "taesd_decoder"
# the layout of taef2_decoder.pth / taef2_encoder.pth (README of the shared checkpoints)
TAEF2 = {"latent_channels": 32, "channels": 64, "out_channels": 3, "blocks": [3, 3, 3, 1], "pool_stages": [0],
         "pool_channels": 256, "pool_groups": 4}
TAEF2_ENCODER = {"latent_channels": 32, "channels": 64, "in_channels": 3, "blocks": [1, 3, 3, 3],
                 "pool_stages": [3], "pool_channels": 256, "pool_groups": 4}


def _zeros(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A state dict of the given shapes without the memory: fp16 like the published files."""
    return {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}


def test_detects_decoder_and_whole_autoencoder_and_nothing_else(check_detection) -> None:
    check_detection(NAME, own=(NAME, "taesd_whole"))


def test_taef2_layout_is_detected_with_its_hyperparameters() -> None:
    sd = _zeros(taesd.decoder_shapes(TAEF2))
    assert len(sd) == 79 and "1.weight" in sd and "19.bias" in sd and "3.pool.1.weight" in sd  # as in the file
    assert models.detect(sd) is models.get(NAME)
    assert taesd.infer_kwargs(sd) == TAEF2
    enc = _zeros(taesd.encoder_shapes(TAEF2_ENCODER))
    assert len(enc) == 79 and "14.weight" in enc and "11.pool.0.weight" in enc
    assert taesd.detect_encoder(enc) and not taesd.detect(enc) and models.detect(enc) is None
    assert taesd.infer_encoder_kwargs(enc) == TAEF2_ENCODER


def test_taef2_spec_is_an_rgb_x8_decoder_of_spatial_latents() -> None:
    spec = models.get(NAME).spec(TAEF2)
    assert (spec.task, spec.input_kind, spec.spatial_latent, spec.color) == ("generate", "latent", True, "rgb")
    assert spec.latent_shape == (32, 32, 32) and spec.default_size == 32 and spec.scale == 8
    assert spec.output_range == (0.0, 1.0)
    assert spec.example_input(batch=2).shape == (2, 32, 32, 32)
    assert spec.example_input(batch=1, size=12).shape == (1, 32, 12, 12)


def test_sd1_style_decoder_without_group_norm_pool() -> None:
    kw = {**TAEF2, "latent_channels": 4, "pool_stages": [], "pool_channels": 0}
    sd = _zeros(taesd.decoder_shapes(kw))
    assert not any(".pool." in k for k in sd)
    assert taesd.detect(sd) and taesd.infer_kwargs(sd) == kw


@pytest.mark.parametrize("damage", ["missing", "extra", "shape", "skip-conv", "prefix"])
def test_damaged_decoder_dicts_are_not_detected(zoo, damage: str) -> None:
    sd = dict(zoo[NAME])
    if damage == "missing":
        del sd["3.conv.2.bias"]
    elif damage == "extra":
        sd["3.skip.weight"] = torch.zeros(8, 8, 1, 1)
    elif damage == "shape":
        sd["3.conv.2.weight"] = torch.zeros(8, 8, 1, 1)
    elif damage == "skip-conv":
        sd["5.weight"] = torch.zeros(8, 8, 3, 3)  # a conv where the upsample is
    else:
        sd = {f"net.{k}": v for k, v in sd.items()}
    assert taesd.detect(sd) is False


def test_select_keeps_the_decoder_half(zoo) -> None:
    kept = models.get(NAME).select(zoo["taesd_whole"])
    assert kept.keys() == zoo[NAME].keys()
    assert models.get(NAME).select(zoo[NAME]) is zoo[NAME]


def test_any_latent_size_decodes_to_scale_times_it(small_kwargs, small_modules) -> None:
    spec = models.get(NAME).spec(small_kwargs[NAME])
    assert spec.scale == 4 and spec.latent_shape == (4, 32, 32)
    with torch.no_grad():
        for h, w in [(3, 5), (8, 8)]:
            y = small_modules[NAME](torch.randn(2, 4, h, w))
            assert y.shape == (2, 3, 4 * h, 4 * w)


def test_the_latent_is_soft_clamped_to_about_three() -> None:
    x = torch.tensor([-100.0, -1.0, 0.0, 1.0, 100.0])
    y = taesd.Clamp()(x)
    assert torch.allclose(y, torch.tanh(x / 3) * 3) and float(y.abs().max()) <= 3.0


def test_encoder_round_trip_shapes_and_loading(tmp_path: Path, zoo, small_taesd_encoder) -> None:
    encoder = taesd.TAESDEncoder(**small_taesd_encoder)
    assert encoder.factor == 4 and encoder.latent_channels == 4
    assert taesd.infer_encoder_kwargs(zoo["taesd_whole"]) == small_taesd_encoder
    assert encoder(torch.rand(1, 3, 24, 16)).shape == (1, 4, 6, 4)
    for name, sd in [("enc.pth", zoo["taesd_encoder"]), ("whole.pth", zoo["taesd_whole"])]:
        torch.save(sd, tmp_path / name)
        loaded = taesd.load_encoder(str(tmp_path / name))
        assert all(not p.requires_grad for p in loaded.parameters())
        assert torch.equal(loaded[0].weight, zoo["taesd_encoder"]["0.weight"])
    torch.save(zoo[NAME], tmp_path / "dec.pth")
    with pytest.raises(CheckpointError, match=r"dec\.pth: not a TAESD-family encoder .*data\.encoder"):
        taesd.load_encoder(str(tmp_path / "dec.pth"))


def test_exports_with_dynamic_spatial_latent_axes(tmp_path: Path, small_kwargs, small_modules) -> None:
    spec = models.get(NAME).spec(small_kwargs[NAME])
    g = Generator(small_modules[NAME], spec, NAME, small_kwargs[NAME])
    check = export_onnx(g, tmp_path / "dec.onnx", size=6)
    assert check.shapes == ((2, 4, 6, 6), (2, 4, 14, 14))  # two latent sizes: the spatial axes are dynamic
    x = torch.randn(1, 4, 5, 7)
    got = runtime.run(runtime.session(tmp_path / "dec.onnx", threads=1), x)
    with torch.no_grad():
        assert torch.allclose(got, small_modules[NAME](x), atol=1e-4)

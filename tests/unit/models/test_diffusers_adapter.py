"""diffusers model folders: an autoencoder's decoder loads as a generator that decodes exactly as
diffusers does, survives the safetensors round trip, and what is not supported says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from imgcompress import load_generator, save_generator
from imgcompress.checkpoint import read_checkpoint
from imgcompress.errors import CheckpointError, DataError
from imgcompress.export import runtime
from imgcompress.export.onnx import export_onnx
from imgcompress.inspect import describe
from imgcompress.models import diffusers_adapter
from imgcompress.data import load_latent_encoder
from imgcompress.recipe import DataConfig

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize(("name", "scale"), [("autoencoder_kl", 4), ("autoencoder_tiny", 4)])
@torch.no_grad()
def test_the_decoder_decodes_as_diffusers_does(diffusers_folders: dict[str, Path], tmp_path: Path, name: str,
                                               scale: int) -> None:
    folder = diffusers_folders[name]
    g = load_generator(folder)
    assert g.arch == "diffusers" and g.kwargs["class_name"] in ("AutoencoderKL", "AutoencoderTiny")
    assert (g.spec.task, g.spec.spatial_latent, g.spec.scale, g.spec.output_range) == ("generate", True, scale,
                                                                                       (-1.0, 1.0))
    assert g.spec.latent_shape is not None and g.spec.latent_shape[0] == 4
    vae = getattr(diffusers, g.kwargs["class_name"]).from_pretrained(folder)
    z = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    y = g.module(z)
    assert y.shape == (2, 3, 6 * scale, 5 * scale)
    assert torch.equal(y, vae.decode(z).sample)
    # only the decoding half is kept, and it reloads from the safetensors alone
    assert not any(k.startswith("encoder.") for k in g.module.state_dict())
    back = load_generator(save_generator(g, tmp_path / "d.safetensors"))
    assert back.arch == "diffusers" and back.spec == g.spec and back.kwargs == g.kwargs
    assert torch.equal(back.module(z), y)


@torch.no_grad()
def test_its_own_encoder_makes_the_latents_the_decoder_takes(diffusers_folders: dict[str, Path]) -> None:
    folder = diffusers_folders["autoencoder_kl"]
    g = load_generator(folder)
    path, enc = load_latent_encoder(g.spec, DataConfig(encoder=str(folder)))
    assert path == folder and (enc.latent_channels, enc.factor) == (4, 4)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    vae = diffusers.AutoencoderKL.from_pretrained(folder)
    assert torch.allclose(enc(x), vae.encode(x * 2 - 1).latent_dist.mean, atol=1e-6)
    # an encoder of other latents is refused with the reason
    with pytest.raises(DataError, match=r"downscales ×4, but the decoder upscales ×8"):
        load_latent_encoder(g.spec.__class__(**{**g.spec.to_dict(), "scale": 8}), DataConfig(encoder=str(folder)))


def test_inspect_says_where_the_arch_came_from(diffusers_folders: dict[str, Path]) -> None:
    info = describe(diffusers_folders["autoencoder_kl"], size=8)
    assert info["arch"] == "diffusers" and info["resolved_by"] == "diffusers config.json"
    assert info["container"] == "diffusers folder (diffusion_pytorch_model.safetensors)"
    assert info["macs_input"] == [1, 4, 8, 8] and info["macs"] > 0
    assert info["output"] == "rgb image in [-1, 1], ×4"


def test_folders_it_cannot_take_fail_with_what_to_do(diffusers_folders: dict[str, Path], tmp_path: Path) -> None:
    cls_cond = tmp_path / "class_conditional"
    shutil.copytree(diffusers_folders["unet"], cls_cond)
    config = json.loads((cls_cond / "config.json").read_text())
    (cls_cond / "config.json").write_text(json.dumps({**config, "num_class_embeds": 10}))
    with pytest.raises(CheckpointError, match="class-conditional .* use an unconditional or text-conditional UNet"):
        load_generator(cls_cond)
    with pytest.raises(CheckpointError, match="a UNet2DModel folder, not an autoencoder"):
        diffusers_adapter.load_encoder(diffusers_folders["unet"])
    with pytest.raises(CheckpointError, match="is a folder without config.json"):
        load_generator(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(diffusers_folders["autoencoder_kl"] / "config.json", partial / "config.json")
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors .* the model folder is incomplete"):
        read_checkpoint(partial)
    shutil.copy(diffusers_folders["autoencoder_kl"] / "diffusion_pytorch_model.safetensors", partial)
    (partial / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(CheckpointError, match="diffusers class 'VQModel' is not supported"):
        load_generator(partial)
    (partial / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable JSON config"):
        load_generator(partial)


def test_sync_widths_follows_resized_layers(diffusers_folders: dict[str, Path]) -> None:
    g = load_generator(diffusers_folders["autoencoder_kl"])
    up = g.module.decoder.up_blocks[0].upsamplers[0]
    up.conv = torch.nn.Conv2d(40, 40, 3, padding=1)
    diffusers_adapter.sync_widths(g.module)
    assert (up.channels, up.out_channels) == (40, 40)


@pytest.mark.parametrize(("name", "inputs"), [("unet", ["input", "timestep"]),
                                              ("unet_cond", ["input", "timestep", "encoder_hidden_states"])])
@torch.no_grad()
def test_a_unet_is_one_sampling_step_with_its_extra_inputs(diffusers_folders: dict[str, Path], tmp_path: Path,
                                                           name: str, inputs: list[str]) -> None:
    folder = diffusers_folders[name]
    g = load_generator(folder)
    spec = g.spec
    assert g.arch == "diffusers" and spec.task == "diffusion" and spec.spatial_latent
    assert ["input", *(e.name for e in spec.extra_inputs)] == inputs
    assert spec.latent_shape == (4, 16, 16) and spec.size_multiple == 2 and spec.output_range == (-4.0, 4.0)
    # the module is the folder's UNet, as diffusers runs it
    cls = getattr(diffusers, json.loads((folder / "config.json").read_text())["_class_name"])
    ref = cls.from_pretrained(folder).eval()
    x = spec.example_input(batch=2, seed=3)
    want = ref(*x, return_dict=False)[0]
    assert torch.equal(g(x), want)
    # ONNX: one graph input per model input, batch and sides dynamic, checked against torch
    check = export_onnx(g, tmp_path / "u.onnx")
    assert check.max_abs_error < 1e-4 and check.shapes == ((2, 4, 16, 16), (2, 4, 24, 24))
    sess = runtime.session(tmp_path / "u.onnx", threads=1)
    assert [i.name for i in sess.get_inputs()] == inputs
    y = spec.example_input(batch=3, size=8, seed=4)
    assert (runtime.run(sess, y) - g(y)).abs().max() < 1e-4
    # the safetensors round trip rebuilds the UNet step from the metadata
    save_generator(g, tmp_path / "u.safetensors")
    back = load_generator(tmp_path / "u.safetensors")
    assert back.spec == spec and torch.equal(back(x), want)


def test_inspect_describes_a_unet_step(diffusers_folders: dict[str, Path]) -> None:
    info = describe(diffusers_folders["unet_cond"], size=8)
    assert info["task"] == "diffusion" and info["macs_input"] == [1, 4, 8, 8] and info["macs"] > 0
    assert "timestep: a float per sample in [0, 1000)" in info["input"]
    assert "encoder_hidden_states: (77, 32) per sample" in info["input"]
    assert info["output"] == "noise prediction (4, h, w), compared over [-4, 4]"

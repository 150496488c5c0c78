"""A diffusion UNet's inputs: noisy latents at timesteps spread evenly over the schedule's
buckets, made with diffusers' own schedule (the recipe's, a scheduler file, or a pipeline's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from imgcompress import load_generator
from imgcompress.data import make_inputs
from imgcompress.diffusion import _Noiser, make_scheduler, scheduler_config
from imgcompress.errors import DataError
from imgcompress.recipe import DataConfig, Diffusion

pytest.importorskip("diffusers")


def _cfg(**kw: object) -> DataConfig:
    diffusion = kw.pop("diffusion", {})
    return DataConfig(**{"calibration_samples": 16, "eval_samples": 4, **kw}, diffusion=Diffusion(**diffusion))


def test_timesteps_spread_evenly_over_the_buckets(diffusers_folders: dict[str, Path]) -> None:
    spec = load_generator(diffusers_folders["unet"]).spec
    inputs = make_inputs(spec, _cfg(eval_samples=6, diffusion={"buckets": 4}))
    assert inputs.task == "diffusion" and inputs.training is None
    cal_t = [int(x[1].item()) for x in inputs.calibration]
    assert all(x[0].shape == (1, 4, 16, 16) and x[1].shape == (1,) for x in inputs.calibration)
    assert sorted(t // 250 for t in cal_t) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    groups = [s.group for s in inputs.evaluation]
    assert groups == ["t 0-249", "t 250-499", "t 500-749", "t 750-999", "t 0-249", "t 250-499"]
    for s in inputs.evaluation:
        t = int(s.input[1].item())
        lo, hi = (int(v) for v in s.group[2:].split("-"))
        assert lo <= t <= hi and s.name.endswith(f"@t{t}") and s.target is None
    # evaluation draws its own latents, noise and timesteps
    assert not any(torch.equal(c[0], s.input[0]) for c in inputs.calibration for s in inputs.evaluation)
    assert "synthetic clean latents" in inputs.description["calibration"]
    assert "4 equal buckets of the 1000-step schedule" in inputs.description["calibration"]


def test_a_noisy_input_mixes_latent_and_noise_as_the_schedule_says() -> None:
    sched = make_scheduler(scheduler_config(Diffusion())[0])
    from imgcompress.models.spec import ExtraInput, GeneratorSpec

    spec = GeneratorSpec(task="diffusion", input_kind="latent", latent_shape=(4, 32, 32), spatial_latent=True,
                         extra_inputs=(ExtraInput("timestep", "timestep"),))
    noiser = _Noiser(spec, 4, sched.alphas_cumprod, seed=0)
    x0 = torch.ones(1, 4, 32, 32)
    for i in range(8):
        (x, t), b = noiser(x0, i)
        a = float(sched.alphas_cumprod[int(t.item())])
        assert b == ["t 0-249", "t 250-499", "t 500-749", "t 750-999"][i % 4]
        assert abs(float(x.mean()) - a ** 0.5) < 0.1  # sqrt(abar) of the clean latent ...
        assert abs(float(x.std()) - (1 - a) ** 0.5) < 0.1  # ... plus sqrt(1 - abar) of unit noise


def test_a_pipelines_scheduler_folder_is_used(diffusers_folders: dict[str, Path], tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    shutil.copytree(diffusers_folders["unet"], pipe / "unet")
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "num_train_timesteps": 500, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"}))
    spec = load_generator(pipe / "unet").spec
    inputs = make_inputs(spec, _cfg(), checkpoint=pipe / "unet")
    assert str(pipe / "scheduler" / "scheduler_config.json") in inputs.description["calibration"]
    assert {s.group for s in inputs.evaluation} == {"t 0-124", "t 125-249", "t 250-374", "t 375-499"}
    conf = inputs.sampling.scheduler_config
    assert conf["prediction_type"] == "v_prediction" and conf["num_train_timesteps"] == 500
    # the recipe's scheduler file wins over the sibling
    other = tmp_path / "sched.json"
    other.write_text(json.dumps({"num_train_timesteps": 200}))
    inputs = make_inputs(spec, _cfg(diffusion={"scheduler": str(other)}), checkpoint=pipe / "unet")
    assert inputs.sampling.scheduler_config["num_train_timesteps"] == 200


def test_bad_diffusion_data_fails_with_what_to_do(diffusers_folders: dict[str, Path], tmp_path: Path) -> None:
    unet = load_generator(diffusers_folders["unet"]).spec
    with pytest.raises(DataError, match="data.diffusion.scheduler: .*: no such file"):
        make_inputs(unet, _cfg(diffusion={"scheduler": str(tmp_path / "nope.json")}))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="not a scheduler config"):
        make_inputs(unet, _cfg(diffusion={"scheduler": str(bad)}))
    with pytest.raises(DataError, match="data.task is 'generate' but the model is a diffusion UNet"):
        make_inputs(unet, _cfg(task="generate"))
    decoder = load_generator(diffusers_folders["autoencoder_kl"]).spec
    with pytest.raises(DataError, match="data.task is 'diffusion' but the model is not a diffusion UNet"):
        make_inputs(decoder, _cfg(task="diffusion"))


def test_an_autoencoder_folder_makes_real_latents_and_decodes_samples(diffusers_folders: dict[str, Path]) -> None:
    spec = load_generator(diffusers_folders["unet"]).spec
    vae = diffusers_folders["autoencoder_kl"]
    inputs = make_inputs(spec, _cfg(encoder=str(vae), crop=64, eval_crop=64, calibration_samples=4))
    assert "encoder autoencoder_kl (× scaling_factor 0.18215)" in inputs.description["calibration"]
    assert all(x[0].shape == (1, 4, 16, 16) for x in inputs.calibration)
    s = inputs.sampling
    assert s.decoder is not None and s.scaling_factor == pytest.approx(0.18215) and s.latent_shape == (4, 16, 16)
    with torch.no_grad():
        assert s.decoder(torch.zeros(1, 4, 16, 16)).shape == (1, 3, 64, 64)


def test_a_pixel_space_unet_denoises_image_crops(tmp_path: Path) -> None:
    import diffusers

    from imgcompress.data import bundled_images_dir

    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                          down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                          norm_num_groups=4).save_pretrained(tmp_path / "ddpm")
    spec = load_generator(tmp_path / "ddpm").spec
    inputs = make_inputs(spec, _cfg(calibration_samples=8, diffusion={"buckets": 2}))
    assert "images in [-1, 1] (a pixel-space UNet), random 16px crops of" in inputs.description["calibration"]
    assert str(bundled_images_dir()) in inputs.description["calibration"]
    assert all(x[0].shape == (1, 3, 16, 16) for x in inputs.calibration)
    assert all(".png@t" in s.name or ".jpg@t" in s.name for s in inputs.evaluation)  # noisy evaluation images
    assert inputs.sampling.pixel_space and inputs.sampling.decoder is None

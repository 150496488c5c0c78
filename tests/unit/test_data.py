"""Calibration and evaluation inputs: per task, in the model's convention, disjoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2ycbcr

from imgcompress.data import make_inputs, resolve_task, rgb_to_y, to_gray
from imgcompress.errors import DataError
from imgcompress.models.spec import GeneratorSpec
from imgcompress.recipe import DataConfig


def _textured(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth gradient plus noise: structure for bicubic, detail for the noise checks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200 + 20
    return np.clip(base + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)


def _write(folder: Path, n: int, size: tuple[int, int] = (70, 50), *, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(_textured(*size, seed=i)).save(p)
        paths.append(p)
    return paths


def _write_flat(folder: Path, n: int, size: int = 40) -> dict[int, str]:
    """Images of one colour each, so any crop of one tells which file it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    by_value = {}
    for i in range(n):
        value = 20 + 30 * i
        Image.new("RGB", (size, size), (value, value, value)).save(folder / f"flat{i}.png")
        by_value[value] = f"flat{i}.png"
    return by_value


def _source(x: torch.Tensor, by_value: dict[int, str]) -> str:
    values = torch.unique(torch.round(x * 255).to(torch.int64))
    assert values.numel() == 1, "a crop of a flat image must be flat"
    return by_value[int(values)]


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).double().numpy()


# --- colour conversion ----------------------------------------------------------------------


def test_y_matches_skimage() -> None:
    rgb = np.random.default_rng(0).random((17, 23, 3))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    ours = rgb_to_y(x)[0, 0].double().numpy()
    np.testing.assert_allclose(ours, rgb2ycbcr(rgb)[..., 0] / 255, atol=1e-5)
    assert rgb_to_y(torch.zeros(1, 3, 1, 1)).item() == pytest.approx(16 / 255)
    assert rgb_to_y(torch.ones(1, 3, 1, 1)).item() == pytest.approx(235 / 255, abs=1e-5)


def test_gray_is_full_range_luma() -> None:
    x = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert to_gray(x).item() == pytest.approx(0.299)
    assert to_gray(torch.ones(1, 3, 2, 2)).flatten().tolist() == pytest.approx([1.0] * 4)


# --- super-resolution pairs -----------------------------------------------------------------------


def test_sr_pairs_are_pil_bicubic_of_the_ground_truth(tmp_path: Path) -> None:
    files = _write(tmp_path / "imgs", 4, size=(70, 50))
    spec = GeneratorSpec(task="sr", scale=3)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_samples=2, calibration_samples=3, crop=32))
    assert inputs.task == "sr" and len(inputs.evaluation) == 2
    for s in inputs.evaluation:
        hr = Image.open(tmp_path / "imgs" / s.name).convert("RGB").crop((0, 0, 69, 48))  # sides down to multiples of 3
        lr = hr.resize((23, 16), Image.BICUBIC)
        assert s.target is not None and s.target.shape == (1, 3, 48, 69)
        assert s.input.shape == (1, 3, 16, 23)
        np.testing.assert_allclose(_np(s.target), np.asarray(hr) / 255.0, atol=1e-6)
        np.testing.assert_allclose(_np(s.input), np.asarray(lr) / 255.0, atol=1e-6)
    assert {s.name for s in inputs.evaluation} <= {f.name for f in files}
    # calibration: LR crops of one shape (crop 32 -> 30, a multiple of 3 -> LR 10)
    assert len(inputs.calibration) == 3
    assert all(x.shape == (1, 3, 10, 10) for x in inputs.calibration)


def test_sr_target_in_output_range_and_color(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 2, size=(40, 36))
    spec = GeneratorSpec(task="sr", scale=2, color="y", input_range=(0.0, 255.0), output_range=(-1.0, 1.0))
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_samples=1, calibration_samples=1))
    (s,) = inputs.evaluation
    hr = np.asarray(Image.open(tmp_path / "imgs" / s.name).convert("RGB")) / 255.0
    lr = np.asarray(Image.open(tmp_path / "imgs" / s.name).convert("RGB").resize((20, 18), Image.BICUBIC)) / 255.0
    y_hr = rgb2ycbcr(hr)[..., 0] / 255.0
    y_lr = rgb2ycbcr(lr)[..., 0] / 255.0
    assert s.target is not None and s.target.shape == (1, 1, 36, 40) and s.input.shape == (1, 1, 18, 20)
    np.testing.assert_allclose(s.target[0, 0].double().numpy(), y_hr * 2 - 1, atol=1e-5)
    np.testing.assert_allclose(s.input[0, 0].double().numpy(), y_lr * 255, atol=1e-3)
    assert inputs.calibration[0].shape[1] == 1 and float(inputs.calibration[0].max()) > 1.5  # input range 0..255


def test_sr_sides_follow_scale_times_size_multiple(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 2, size=(61, 45))
    spec = GeneratorSpec(task="sr", scale=2, size_multiple=4)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_samples=1, calibration_samples=2, crop=30))
    (s,) = inputs.evaluation
    assert s.target is not None and s.target.shape[-2:] == (40, 56)  # multiples of 8
    assert s.input.shape[-2:] == (20, 28)  # multiples of size_multiple
    assert all(x.shape[-2:] == (12, 12) for x in inputs.calibration)  # crop 30 -> 24 -> LR 12


# --- denoise, translate, generate -----------------------------------------------------------------


def test_denoise_noise_has_the_configured_sigma(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 6, size=(64, 64))
    spec = GeneratorSpec(task="denoise", default_size=64)
    cfg = DataConfig(images=str(tmp_path / "imgs"), noise_sigma=0.07, eval_samples=3, calibration_samples=2, seed=11)
    inputs = make_inputs(spec, cfg)
    noise = torch.cat([(s.input - s.target).flatten() for s in inputs.evaluation if s.target is not None]).double()
    assert noise.numel() == 3 * 3 * 64 * 64
    assert float(noise.std()) == pytest.approx(0.07, rel=0.03)
    assert abs(float(noise.mean())) < 4 * 0.07 / noise.numel() ** 0.5
    # the clean image is the ground truth, unchanged
    s = inputs.evaluation[0]
    clean = np.asarray(Image.open(tmp_path / "imgs" / s.name).convert("RGB")) / 255.0
    np.testing.assert_allclose(_np(s.target), clean, atol=1e-6)
    # independent per image
    a, b = (inputs.evaluation[i].input - inputs.evaluation[i].target for i in (0, 1))
    assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 0.05


def test_denoise_is_seeded(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 2, size=(32, 32))
    spec = GeneratorSpec(task="denoise", default_size=32)
    cfg = DataConfig(images=str(tmp_path / "imgs"), eval_samples=1, calibration_samples=2, crop=16)
    one, two = make_inputs(spec, cfg), make_inputs(spec, cfg)
    other = make_inputs(spec, cfg.model_copy(update={"seed": 1}))
    assert torch.equal(one.evaluation[0].input, two.evaluation[0].input)
    assert all(torch.equal(a, b) for a, b in zip(one.calibration, two.calibration))
    assert not torch.equal(one.evaluation[0].input, other.evaluation[0].input)


def test_denoise_can_be_chosen_for_an_image_model(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 2, size=(32, 32))
    spec = GeneratorSpec(task="translate", default_size=32)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), task="denoise", eval_samples=1,
                                          calibration_samples=1))
    assert inputs.task == "denoise" and inputs.evaluation[0].target is not None


def test_translate_has_no_target(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 3, size=(50, 40))
    spec = GeneratorSpec(task="translate", input_range=(-1.0, 1.0), default_size=32)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_samples=1, calibration_samples=2))
    (s,) = inputs.evaluation
    assert s.target is None
    assert s.input.shape == (1, 3, 32, 32)  # centre crop at the model's default size
    im = np.asarray(Image.open(tmp_path / "imgs" / s.name).convert("RGB"))[4:36, 9:41] / 255.0
    np.testing.assert_allclose(_np(s.input), im * 2 - 1, atol=1e-5)


def test_latents_are_seeded_and_disjoint() -> None:
    spec = GeneratorSpec(task="generate", input_kind="latent", latent_shape=(16, 1, 1))
    cfg = DataConfig(calibration_samples=5, eval_samples=3, seed=4)
    a, b = make_inputs(spec, cfg), make_inputs(spec, cfg)
    assert a.task == "generate"
    assert len(a.calibration) == 5 and len(a.evaluation) == 3
    assert all(x.shape == (1, 16, 1, 1) for x in a.calibration + [s.input for s in a.evaluation])
    assert all(s.target is None for s in a.evaluation)
    assert all(torch.equal(x, y) for x, y in zip(a.calibration, b.calibration))
    assert all(torch.equal(x.input, y.input) for x, y in zip(a.evaluation, b.evaluation))
    everything = a.calibration + [s.input for s in a.evaluation]
    assert len({tuple(x.flatten().tolist()) for x in everything}) == len(everything)
    c = make_inputs(spec, cfg.model_copy(update={"seed": 5}))
    assert not torch.equal(a.calibration[0], c.calibration[0]) and not torch.equal(a.evaluation[0].input, c.evaluation[0].input)
    z = torch.cat(everything + c.calibration).flatten()
    assert abs(float(z.mean())) < 0.3 and float(z.std()) == pytest.approx(1.0, rel=0.2)


# --- which files go where ---------------------------------------------------------------------------


def test_calibration_and_evaluation_share_no_file(tmp_path: Path) -> None:
    by_value = _write_flat(tmp_path / "imgs", 6)
    spec = GeneratorSpec(task="translate", default_size=32)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_samples=2, calibration_samples=12, crop=16))
    eval_files = {s.name for s in inputs.evaluation}
    calib_files = {_source(x, by_value) for x in inputs.calibration}
    assert len(eval_files) == 2
    assert not eval_files & calib_files
    assert calib_files == set(by_value.values()) - eval_files  # the rest is used for calibration
    for s in inputs.evaluation:
        assert _source(s.input, by_value) == s.name


@pytest.mark.parametrize(("n_files", "eval_samples", "n_eval"), [(2, 8, 1), (5, 8, 2), (6, 1, 1), (9, 3, 3)])
def test_evaluation_takes_at_most_half(tmp_path: Path, n_files: int, eval_samples: int, n_eval: int) -> None:
    by_value = _write_flat(tmp_path / "imgs", n_files)
    spec = GeneratorSpec(task="translate", default_size=16)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_samples=eval_samples,
                                          calibration_samples=2 * n_files, crop=16))
    eval_files = {s.name for s in inputs.evaluation}
    assert len(eval_files) == n_eval
    assert {_source(x, by_value) for x in inputs.calibration} == set(by_value.values()) - eval_files


def test_eval_images_folder_is_used_for_evaluation_only(tmp_path: Path) -> None:
    by_value = _write_flat(tmp_path / "calib", 3)
    _write(tmp_path / "eval", 4, size=(40, 40), start=50)
    spec = GeneratorSpec(task="translate", default_size=32)
    cfg = DataConfig(images=str(tmp_path / "calib"), eval_images=str(tmp_path / "eval"), eval_samples=2,
                     calibration_samples=6, crop=16)
    inputs = make_inputs(spec, cfg)
    assert [s.name for s in inputs.evaluation] == ["img50.png", "img51.png"]
    assert {_source(x, by_value) for x in inputs.calibration} == set(by_value.values())  # every image calibrates
    assert str(tmp_path / "eval") in inputs.description["evaluation"]


def test_eval_images_same_as_images_still_splits(tmp_path: Path) -> None:
    by_value = _write_flat(tmp_path / "imgs", 4)
    spec = GeneratorSpec(task="translate", default_size=16)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_images=str(tmp_path / "imgs" / "."),
                                          eval_samples=2, calibration_samples=8, crop=16))
    eval_files = {s.name for s in inputs.evaluation}
    assert not eval_files & {_source(x, by_value) for x in inputs.calibration}


def test_relative_folders_resolve_against_base_dir(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 2, size=(32, 32))
    spec = GeneratorSpec(task="translate", default_size=16)
    inputs = make_inputs(spec, DataConfig(images="imgs", eval_samples=1, calibration_samples=1), base_dir=tmp_path)
    assert inputs.evaluation[0].name in {"img00.png", "img01.png"}


def test_bundled_images_by_default() -> None:
    spec = GeneratorSpec(task="sr", scale=2)
    inputs = make_inputs(spec, DataConfig(eval_samples=2, calibration_samples=2, max_eval_side=64))
    assert len(inputs.evaluation) == 2 and all(s.target is not None for s in inputs.evaluation)
    assert all(s.target.shape[-2:] == (64, 64) for s in inputs.evaluation if s.target is not None)


# --- errors --------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope: no such image folder"):
        make_inputs(GeneratorSpec(task="translate"), DataConfig(images=str(tmp_path / "nope")))


def test_missing_eval_folder(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 2, size=(32, 32))
    with pytest.raises(DataError, match=r"nope: no such image folder"):
        make_inputs(GeneratorSpec(task="translate"), DataConfig(images=str(tmp_path / "imgs"),
                                                                 eval_images=str(tmp_path / "nope")))


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("hi")
    (tmp_path / "imgs" / "sub.png").mkdir()  # a folder named like an image is not one
    with pytest.raises(DataError, match=r"imgs: holds no images"):
        make_inputs(GeneratorSpec(task="translate"), DataConfig(images=str(tmp_path / "imgs")))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_named(tmp_path: Path, damage: str) -> None:
    _write(tmp_path / "imgs", 3, size=(64, 64))
    bad = tmp_path / "imgs" / "img01.png"
    bad.write_bytes(b"not a png at all" if damage == "garbage" else bad.read_bytes()[:200])
    with pytest.raises(DataError, match=r"img01\.png: unreadable image"):
        make_inputs(GeneratorSpec(task="translate", default_size=32),
                    DataConfig(images=str(tmp_path / "imgs"), eval_samples=1, calibration_samples=2))


def test_only_one_image(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 1, size=(32, 32))
    with pytest.raises(DataError, match=r"needs at least 2 images.*eval_images"):
        make_inputs(GeneratorSpec(task="translate"), DataConfig(images=str(tmp_path / "imgs")))


def test_evaluation_image_smaller_than_the_multiple(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 3, size=(40, 40))
    _write(tmp_path / "imgs", 1, size=(12, 12), start=3)  # img03: the one evaluation takes
    with pytest.raises(DataError, match=r"img03\.png: image too small \(12x12\).*multiples of 16"):
        make_inputs(GeneratorSpec(task="translate", size_multiple=16),
                    DataConfig(images=str(tmp_path / "imgs"), eval_samples=1, calibration_samples=1))


def test_calibration_images_smaller_than_the_multiple(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 2, size=(12, 12))
    with pytest.raises(DataError, match=r"smaller than 16 px"):
        make_inputs(GeneratorSpec(task="translate", size_multiple=16),
                    DataConfig(images=str(tmp_path / "imgs"), eval_samples=1, calibration_samples=1))


@pytest.mark.parametrize(("spec", "task", "match"), [
    (GeneratorSpec(task="generate", input_kind="latent", latent_shape=(4,)), "sr", "takes latents"),
    (GeneratorSpec(task="translate"), "generate", "takes images"),
    (GeneratorSpec(task="translate"), "sr", "does not upscale"),
])
def test_task_that_does_not_fit_the_model(spec: GeneratorSpec, task: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        resolve_task(spec, DataConfig(task=task))


def test_denoise_on_an_upscaling_model_is_refused() -> None:
    with pytest.raises(DataError, match=r"upscales ×2; use task: sr"):
        resolve_task(GeneratorSpec(task="sr", scale=2), DataConfig(task="denoise"))


# --- training batches (distillation) ---------------------------------------------------------


def test_training_batches_come_from_calibration_images_only_and_depend_on_the_step(tmp_path: Path) -> None:
    by_value = _write_flat(tmp_path / "imgs", 6)
    spec = GeneratorSpec(task="translate", default_size=16)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_samples=2, calibration_samples=4,
                                          crop=16))
    src = inputs.training
    assert src is not None
    evaluation = {s.name for s in inputs.evaluation}
    seen = set()
    for step in range(10):
        batch = src.batch(step, 4)
        assert batch.shape == (4, 3, 16, 16)
        seen |= {_source(batch[i:i + 1], by_value) for i in range(4)}
        assert torch.equal(batch, src.batch(step, 4))  # a function of the step: a resumed run sees the same
    assert not seen & evaluation and len(seen) >= 3
    assert not torch.equal(src.batch(0, 4), src.batch(1, 4))


def test_training_batches_for_sr_are_bicubic_low_resolution_crops(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", 4, size=(80, 80))
    spec = GeneratorSpec(task="sr", scale=2, default_size=16)
    inputs = make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), eval_samples=1, calibration_samples=2,
                                          crop=32))
    assert inputs.training is not None
    assert inputs.training.batch(0, 3).shape == (3, 3, 16, 16)


def test_training_latents_are_fresh_and_disjoint_from_calibration_and_evaluation() -> None:
    spec = GeneratorSpec(task="generate", input_kind="latent", latent_shape=(8, 1, 1))
    inputs = make_inputs(spec, DataConfig(calibration_samples=4, eval_samples=2))
    assert inputs.training is not None
    z = inputs.training.batch(0, 4)
    assert z.shape == (4, 8, 1, 1)
    others = torch.cat(inputs.calibration + [s.input for s in inputs.evaluation])
    assert all(not torch.allclose(z[i], o) for i in range(4) for o in others)
    assert torch.equal(z, inputs.training.batch(0, 4)) and not torch.equal(z, inputs.training.batch(1, 4))


# --- latents of a VAE decoder: an encoder's of real images, or synthetic ---------------------------

SMALL_ENCODER = {"latent_channels": 4, "channels": 8, "in_channels": 3, "blocks": [1, 2, 1], "pool_stages": [2],
                 "pool_channels": 16, "pool_groups": 4}  # ÷4, 4 latent channels
DECODER_SPEC = GeneratorSpec(task="generate", input_kind="latent", latent_shape=(4, 8, 8), spatial_latent=True,
                             scale=4, default_size=8)


def _encoder_file(tmp_path: Path, **overrides: object) -> tuple[Path, torch.nn.Module]:
    from imgcompress.models.taesd import TAESDEncoder

    torch.manual_seed(0)
    enc = TAESDEncoder(**{**SMALL_ENCODER, **overrides}).eval()
    p = tmp_path / "encoder.pth"
    torch.save(enc.state_dict(), p)
    return p, enc


def test_encoder_latents_come_from_calibration_and_evaluation_images(tmp_path: Path) -> None:
    by_value = _write_flat(tmp_path / "imgs", 6, size=48)
    path, enc = _encoder_file(tmp_path)
    cfg = DataConfig(images=str(tmp_path / "imgs"), encoder=str(path), eval_samples=2, calibration_samples=6,
                     crop=18, eval_crop=40)
    inputs = make_inputs(DECODER_SPEC, cfg)
    assert inputs.task == "generate"
    # crops rounded down to the encoder's ÷4; a flat image's crop tells which file it came from
    assert all(x.shape == (1, 4, 4, 4) for x in inputs.calibration)
    with torch.no_grad():
        code = {name: enc(torch.full((1, 3, 16, 16), v / 255.0)) for v, name in by_value.items()}
    calib = {next(n for n, z in code.items() if torch.allclose(x, z, atol=1e-5)) for x in inputs.calibration}
    evaluation = {s.name for s in inputs.evaluation}
    assert len(evaluation) == 2 and not calib & evaluation and len(calib) == 4
    for s in inputs.evaluation:  # the whole 40 px centre crop, and the image is the ground truth
        assert s.input.shape == (1, 4, 10, 10) and s.target is not None and s.target.shape == (1, 3, 40, 40)
        value = round(float(s.target.mean()) * 255)
        assert by_value[value] == s.name
        with torch.no_grad():
            assert torch.allclose(s.input, enc(s.target), atol=1e-5)
    d = inputs.description
    assert "from encoder encoder.pth of random 16px crops of 4 images" in d["calibration"]
    assert "ground truth" in d["evaluation"]
    again = make_inputs(DECODER_SPEC, cfg)
    assert all(torch.equal(a, b) for a, b in zip(inputs.calibration, again.calibration))


def test_encoder_training_batches_are_step_seeded_latents_of_calibration_crops(tmp_path: Path) -> None:
    by_value = _write_flat(tmp_path / "imgs", 6, size=48)
    path, enc = _encoder_file(tmp_path)
    inputs = make_inputs(DECODER_SPEC, DataConfig(images=str(tmp_path / "imgs"), encoder=str(path), eval_samples=2,
                                                  calibration_samples=2, crop=16))
    src = inputs.training
    assert src is not None
    with torch.no_grad():
        code = {name: enc(torch.full((1, 3, 16, 16), v / 255.0)) for v, name in by_value.items()}
    seen = set()
    for step in range(6):
        z = src.batch(step, 3)
        assert z.shape == (3, 4, 4, 4)
        assert torch.equal(z, src.batch(step, 3))
        seen |= {next(n for n, c in code.items() if torch.allclose(z[i:i + 1], c, atol=1e-5)) for i in range(3)}
    assert seen and not seen & {s.name for s in inputs.evaluation}


def test_without_encoder_spatial_latents_are_synthetic_with_sigma(tmp_path: Path) -> None:
    cfg = DataConfig(calibration_samples=8, eval_samples=2, crop=24, latent_sigma=0.5)
    inputs = make_inputs(DECODER_SPEC, cfg)
    assert all(x.shape == (1, 4, 6, 6) for x in inputs.calibration)  # crop / scale
    assert all(s.input.shape == (1, 4, 8, 8) and s.target is None for s in inputs.evaluation)  # default side
    assert float(torch.cat(inputs.calibration).std()) == pytest.approx(0.5, rel=0.2)
    assert "synthetic latents" in inputs.description["calibration"]
    assert inputs.training is not None and inputs.training.batch(0, 2).shape == (2, 4, 6, 6)
    wide = make_inputs(DECODER_SPEC, cfg.model_copy(update={"eval_crop": 48}))
    assert wide.evaluation[0].input.shape == (1, 4, 12, 12)


def test_latent_sigma_scales_flat_latents_and_one_is_unchanged() -> None:
    spec = GeneratorSpec(task="generate", input_kind="latent", latent_shape=(16, 1, 1))
    one = make_inputs(spec, DataConfig(calibration_samples=3, eval_samples=2))
    two = make_inputs(spec, DataConfig(calibration_samples=3, eval_samples=2, latent_sigma=2.0))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(one.calibration[0], torch.randn((1, 16, 1, 1), generator=g))  # as before latent_sigma
    assert torch.allclose(two.calibration[1], 2 * one.calibration[1])
    assert torch.allclose(two.training.batch(3, 2), 2 * one.training.batch(3, 2))


@pytest.mark.parametrize(("case", "match"), [
    ("missing", r"data\.encoder: .*gone\.pth: no such file; set data\.encoder to the encoder checkpoint"),
    ("channels", r"data\.encoder: encoder\.pth makes 8-channel latents, but the decoder takes 4; use the encoder of"),
    ("factor", r"data\.encoder: encoder\.pth downscales ×8, but the decoder upscales ×4"),
    ("not-an-encoder", r"data\.encoder: encoder\.pth: not a TAESD-family encoder"),
    ("flat-latent", r"data\.encoder is set, but the model takes latents \(16, 1, 1\), not image-like ones"),
])
def test_encoder_errors_are_data_errors(tmp_path: Path, case: str, match: str) -> None:
    _write(tmp_path / "imgs", 4, size=(48, 48))
    spec = DECODER_SPEC
    if case == "missing":
        path = tmp_path / "gone.pth"
    elif case == "channels":
        path, _ = _encoder_file(tmp_path, latent_channels=8)
    elif case == "factor":
        path, _ = _encoder_file(tmp_path, blocks=[1, 1, 1, 1])
    elif case == "not-an-encoder":
        path = tmp_path / "encoder.pth"
        torch.save({"fc3.weight": torch.zeros(4, 4)}, path)
    else:
        path, _ = _encoder_file(tmp_path)
        spec = GeneratorSpec(task="generate", input_kind="latent", latent_shape=(16, 1, 1))
    with pytest.raises(DataError, match=match):
        make_inputs(spec, DataConfig(images=str(tmp_path / "imgs"), encoder=str(path)))


def test_upscaling_latent_decoder_is_a_generate_model() -> None:
    assert resolve_task(DECODER_SPEC, DataConfig()) == "generate"

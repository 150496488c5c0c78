"""Inputs for calibration and evaluation, made from images (or latents) as the task says.

- ``sr``: a high-resolution image is the ground truth; the input is its PIL-bicubic
  downscale by the model's scale.
- ``denoise``: the clean image is the ground truth; the input adds Gaussian noise.
- ``translate``: the image as it is; no ground truth.
- ``generate``: latents. With ``data.encoder`` (a latent decoder's encoder, e.g. TAEF2's):
  the encoder's latents of image crops, and the image is the ground truth (the round trip);
  without: synthetic latents from N(0, ``latent_sigma``) with a seed, no ground truth.
- ``diffusion``: a UNet's (noisy latent, timestep[, text embedding]), made by
  `imgcompress.diffusion`.

Calibration and evaluation never share an image (or a latent seed).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import CheckpointError, DataError
from .models.inputs import Batch
from .models.spec import GeneratorSpec
from .recipe import DataConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Sample:
    """One evaluation item: a batch-1 model input (a tuple for a multi-input model) and, where the
    task has one, its ground truth in the model's output convention (range and color). ``group``:
    the part of the input space it stands for, reported apart (a UNet's timestep bucket)."""

    name: str
    input: Batch
    target: torch.Tensor | None = None
    group: str | None = None


class TrainingSource:
    """Training batches for distillation, drawn from the calibration side only (evaluation
    images and latent seeds stay unseen). Batch ``step`` depends on (seed, step) alone, so a
    resumed run sees the batches an uninterrupted one would have seen.

    Images: random crops (the calibration crop size) with random horizontal flips, made into
    inputs as the task says (SR: bicubic LR; denoise: a fresh noisy copy). Latents with an
    ``encoder``: the encoder's latents of such crops. Latents without: fresh N(0, latent_sigma)
    draws from a stream disjoint from calibration's and evaluation's (``crop`` is then the side
    of a spatial latent, 0 for others)."""

    LATENT_STREAM = 2_000_029

    def __init__(self, spec: GeneratorSpec, task: str, cfg: DataConfig, images: list[Image.Image], crop: int,
                 encoder: torch.nn.Module | None = None):
        self.spec, self.task, self.cfg, self.images, self.crop = spec, task, cfg, images, crop
        self.encoder = encoder

    def batch(self, step: int, size: int) -> torch.Tensor:
        # mixed through SeedSequence: torch's generator gives near-identical streams for adjacent seeds
        seed = int(np.random.SeedSequence([self.cfg.seed, self.LATENT_STREAM, step]).generate_state(1)[0])
        g = torch.Generator().manual_seed(seed)
        if self.task == "generate" and self.encoder is None:
            shape = self.spec.latent_shape_at(self.crop or None)
            return torch.randn((size, *shape), generator=g) * self.cfg.latent_sigma
        maker = _Maker(self.spec, self.task, self.cfg)
        maker.rng = g
        xs = []
        for _ in range(size):
            im = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
            w, h = im.size
            left = int(torch.randint(w - self.crop + 1, (1,), generator=g))
            top = int(torch.randint(h - self.crop + 1, (1,), generator=g))
            crop = im.crop((left, top, left + self.crop, top + self.crop))
            if bool(torch.rand((), generator=g) < 0.5):
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            xs.append(to_tensor(crop) if self.encoder is not None else maker.pair(crop)[0])
        if self.encoder is not None:
            return encode(self.encoder, xs)
        return torch.cat(xs)


@dataclass
class Inputs:
    task: str
    calibration: list[Batch]
    evaluation: list[Sample]
    description: dict[str, str] = field(default_factory=dict)
    training: TrainingSource | None = None
    sampling: Any = None  # a diffusion UNet's end-to-end check (`imgcompress.diffusion.Sampling`)


def bundled_images_dir() -> Path:
    """The small set of sample images shipped inside the package."""
    return Path(str(resources.files("imgcompress") / "assets" / "images"))


def list_images(folder: str | Path) -> list[Path]:
    p = Path(folder)
    if not p.is_dir():
        raise DataError(f"{p}: no such image folder; set data.images (or --images) to a folder of PNG/JPEG files")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"{p}: holds no images ({', '.join(IMAGE_SUFFIXES)}); point data.images at a folder of images")
    return files


def load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}); remove it or replace it with a valid PNG/JPEG") from None


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (1, 3, H, W) in [0, 1]."""
    a = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of RGB in [0, 1] (studio range 16..235, scaled to [0, 1]), (N,1,H,W)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """Full-range luma (0.299, 0.587, 0.114) of RGB in [0, 1], (N,1,H,W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def convert_color(x: torch.Tensor, color: str) -> torch.Tensor:
    if color == "rgb":
        return x
    return rgb_to_y(x) if color == "y" else to_gray(x)


def to_range(x: torch.Tensor, rng: tuple[float, float]) -> torch.Tensor:
    lo, hi = rng
    return x * (hi - lo) + lo


def bicubic_downscale(im: Image.Image, scale: int) -> Image.Image:
    w, h = im.size
    return im.resize((w // scale, h // scale), Image.BICUBIC)


def crop_to_multiple(im: Image.Image, multiple: int) -> Image.Image:
    w, h = im.size
    return im.crop((0, 0, w - w % multiple, h - h % multiple))


def center_crop(im: Image.Image, side: int) -> Image.Image:
    w, h = im.size
    cw, ch = min(side, w), min(side, h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return im.crop((left, top, left + cw, top + ch))


def resolve_task(spec: GeneratorSpec, cfg: DataConfig) -> str:
    task = spec.task if cfg.task == "auto" else cfg.task
    if (task == "diffusion") != (spec.task == "diffusion"):
        what = "a diffusion UNet" if spec.task == "diffusion" else "not a diffusion UNet"
        raise DataError(f"data.task is {task!r} but the model is {what}; use task: {spec.task} (or auto)")
    if spec.input_kind == "latent" and task not in ("generate", "diffusion"):
        raise DataError(f"data.task is {task!r} but the model takes latents; use task: generate (or auto)")
    if spec.input_kind == "image" and task == "generate":
        raise DataError("data.task is 'generate' but the model takes images; use sr, denoise or translate (or auto)")
    if task == "sr" and spec.scale < 2:
        raise DataError("data.task is 'sr' but the model does not upscale (scale 1); use denoise or translate")
    if task != "sr" and spec.scale > 1 and spec.input_kind == "image":
        raise DataError(f"data.task is {task!r} but the model upscales ×{spec.scale}; use task: sr (or auto)")
    return task


class _Maker:
    """Turns an RGB image into (input, target) for one task and spec."""

    def __init__(self, spec: GeneratorSpec, task: str, cfg: DataConfig):
        self.spec, self.task, self.cfg = spec, task, cfg
        self.rng = torch.Generator().manual_seed(cfg.seed)

    @property
    def multiple(self) -> int:
        # output-side pixels an HR image must be a multiple of
        return (self.spec.scale if self.task == "sr" else 1) * self.spec.size_multiple

    def pair(self, hr: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None]:
        spec = self.spec
        hr = crop_to_multiple(hr, self.multiple)
        if self.task == "sr":
            lr = bicubic_downscale(hr, spec.scale)
            x = convert_color(to_tensor(lr), spec.color)
            target = convert_color(to_tensor(hr), spec.color)
        else:
            clean = convert_color(to_tensor(hr), spec.color)
            if self.task == "denoise":
                noise = torch.randn(clean.shape, generator=self.rng) * self.cfg.noise_sigma
                x, target = clean + noise, clean
            else:
                x, target = clean, None
        x = to_range(x, spec.input_range)
        if target is not None:
            target = to_range(target, spec.output_range)
        return x.contiguous(), target


def _split(files: list[Path], n_eval: int, source: str) -> tuple[list[Path], list[Path]]:
    if len(files) < 2:
        raise DataError(
            f"{source}: needs at least 2 images to keep calibration and evaluation apart; "
            "add images or set data.eval_images to a separate folder"
        )
    n_eval = max(1, min(n_eval, len(files) // 2))
    # every other image, from the end, for evaluation: spreads the two sets over the folder
    eval_files = files[::-1][::2][:n_eval]
    calib_files = [f for f in files if f not in eval_files]
    return calib_files, eval_files


def encode(encoder: torch.nn.Module, images: list[torch.Tensor], *, chunk: int = 8) -> torch.Tensor:
    """The encoder's latents of (1, 3, H, W) images in [0, 1] of one size, batched by ``chunk``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), chunk):
            out.append(encoder(torch.cat(images[i:i + chunk])))
    return torch.cat(out).contiguous()


def _where(p: str | None, base_dir: Path | None) -> Path:
    if p is None:
        return bundled_images_dir()
    q = Path(p).expanduser()
    return q if q.is_absolute() or base_dir is None else (base_dir / q)


def _image_files(cfg: DataConfig, base_dir: Path | None) -> tuple[Path, list[Path], Path, list[Path]]:
    """(calibration folder, its files, evaluation folder, its files), never sharing a file."""
    images_dir = _where(cfg.images, base_dir)
    files = list_images(images_dir)
    if cfg.eval_images is not None and _where(cfg.eval_images, base_dir).resolve() != images_dir.resolve():
        eval_dir = _where(cfg.eval_images, base_dir)
        return images_dir, files, eval_dir, list_images(eval_dir)[: cfg.eval_samples]
    calib_files, eval_files = _split(files, cfg.eval_samples, str(images_dir))
    return images_dir, calib_files, images_dir, eval_files


def _calibration_crops(files: list[Path], images_dir: Path, cfg: DataConfig, m: int
                       ) -> tuple[list[Image.Image], list[Image.Image], int]:
    """(random crops, the images they come from, the crop side): ``calibration_samples`` crops of
    side ``crop`` rounded down to a multiple of ``m`` (smaller when every image is), with flips."""
    cal_crop = max(m, cfg.crop - cfg.crop % m)
    pyrng = random.Random(cfg.seed)
    calib_imgs = [load_rgb(f) for f in files]
    small = [f for f, im in zip(files, calib_imgs) if min(im.size) < cal_crop]
    if len(small) == len(calib_imgs):
        cal_crop = max(m, min(min(im.size) for im in calib_imgs) // m * m)
        log.info("calibration crop reduced to %d px to fit the images", cal_crop)
    calib_imgs = [im for im in calib_imgs if min(im.size) >= cal_crop]
    if not calib_imgs:
        raise DataError(
            f"{images_dir}: every calibration image is smaller than {cal_crop} px, the least this model "
            f"takes (sides a multiple of {m}); use larger images"
        )
    crops = []
    for i in range(cfg.calibration_samples):
        im = calib_imgs[i % len(calib_imgs)]
        w, h = im.size
        left, top = pyrng.randint(0, w - cal_crop), pyrng.randint(0, h - cal_crop)
        crop = im.crop((left, top, left + cal_crop, top + cal_crop))
        if pyrng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops, calib_imgs, cal_crop


def _eval_images(files: list[Path], side: int, m: int) -> list[tuple[Path, Image.Image]]:
    out = []
    for f in files:
        im = center_crop(load_rgb(f), side)
        if min(im.size) < m:
            raise DataError(f"{f}: image too small ({im.size[0]}x{im.size[1]}) for a model that needs multiples of {m} px")
        out.append((f, im))
    return out


def load_latent_encoder(spec: GeneratorSpec, cfg: DataConfig, *, base_dir: Path | None = None,
                        check_scale: bool = True) -> tuple[Path, torch.nn.Module]:
    """The encoder named by ``data.encoder``, checked against the model's latents (and, with
    ``check_scale``, against a decoder's upscale factor). Raises `DataError`."""
    from .models import diffusers_adapter, taesd

    assert cfg.encoder is not None
    path = _where(cfg.encoder, base_dir)
    folder = diffusers_adapter.is_model_folder(path)
    if not path.is_file() and not folder:
        what = "is a folder without a diffusers config.json" if path.is_dir() else "no such file"
        raise DataError(f"data.encoder: {path}: {what}; set data.encoder to the encoder checkpoint of this decoder "
                        "(e.g. taef2_encoder.pth) or its diffusers autoencoder folder")
    if not spec.spatial_latent:
        shape = "no latent" if spec.latent_shape is None else f"latents {spec.latent_shape}"
        raise DataError(f"data.encoder is set, but the model takes {shape}, not image-like ones (a VAE decoder's); "
                        "remove data.encoder")
    try:
        encoder = diffusers_adapter.load_encoder(path) if folder else taesd.load_encoder(str(path))
    except CheckpointError as e:
        raise DataError(f"data.encoder: {e}") from None
    assert spec.latent_shape is not None
    if encoder.latent_channels != spec.latent_shape[0]:
        raise DataError(
            f"data.encoder: {path.name} makes {encoder.latent_channels}-channel latents, but the decoder takes "
            f"{spec.latent_shape[0]}; use the encoder of the decoder's own autoencoder"
        )
    if check_scale and encoder.factor != spec.scale:
        raise DataError(f"data.encoder: {path.name} downscales ×{encoder.factor}, but the decoder upscales "
                        f"×{spec.scale}; use the encoder of the decoder's own autoencoder")
    return path, encoder


def _encoded_latents(spec: GeneratorSpec, cfg: DataConfig, base_dir: Path | None) -> Inputs:
    enc_path, encoder = load_latent_encoder(spec, cfg, base_dir=base_dir)
    m = spec.scale
    images_dir, calib_files, eval_dir, eval_files = _image_files(cfg, base_dir)
    crops, calib_imgs, cal_crop = _calibration_crops(calib_files, images_dir, cfg, m)
    cal = list(encode(encoder, [to_tensor(c) for c in crops]).split(1))
    eval_side = min(cfg.eval_crop or spec.default_size * spec.scale, cfg.max_eval_side)
    ev = []
    for f, im in _eval_images(eval_files, eval_side, m):
        x = to_tensor(crop_to_multiple(im, m))
        ev.append(Sample(f.name, encode(encoder, [x]), to_range(convert_color(x, spec.color), spec.output_range)))
    return Inputs("generate", cal, ev, {
        "calibration": f"{len(cal)} latents from encoder {enc_path.name} of random {cal_crop}px crops of "
                       f"{len(calib_imgs)} images in {images_dir}",
        "evaluation": f"{len(ev)} latents from encoder {enc_path.name} of images (center-cropped to at most "
                      f"{eval_side}px) in {eval_dir}; ground truth: those images",
        "task": "generate",
    }, TrainingSource(spec, "generate", cfg, calib_imgs, cal_crop, encoder))


def _synthetic_latents(spec: GeneratorSpec, cfg: DataConfig) -> Inputs:
    sigma = cfg.latent_sigma
    cal_side = max(1, cfg.crop // spec.scale) if spec.spatial_latent else 0
    eval_side = max(1, cfg.eval_crop // spec.scale) if spec.spatial_latent and cfg.eval_crop else 0
    g_cal = torch.Generator().manual_seed(cfg.seed)
    g_eval = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    cal_shape, eval_shape = spec.latent_shape_at(cal_side or None), spec.latent_shape_at(eval_side or None)
    cal = [torch.randn((1, *cal_shape), generator=g_cal) * sigma for _ in range(cfg.calibration_samples)]
    ev = [Sample(f"z{i}", torch.randn((1, *eval_shape), generator=g_eval) * sigma) for i in range(cfg.eval_samples)]
    dist = f"N(0, {sigma:g})"
    return Inputs("generate", cal, ev, {
        "calibration": f"{len(cal)} synthetic latents {cal_shape} ~ {dist}, seed {cfg.seed}"
                       + (" (no data.encoder: not the latents of real images)" if spec.spatial_latent else ""),
        "evaluation": f"{len(ev)} synthetic latents {eval_shape} ~ {dist}, seed {cfg.seed + 1_000_003}",
    }, TrainingSource(spec, "generate", cfg, [], cal_side))


def make_inputs(spec: GeneratorSpec, cfg: DataConfig, *, base_dir: Path | None = None,
                checkpoint: Path | None = None) -> Inputs:
    """Calibration inputs (batch-1 tensors of one shape, or tuples for a multi-input model) and
    evaluation samples, disjoint. ``checkpoint``: where the model came from (a UNet folder's
    pipeline may hold its noise schedule)."""
    task = resolve_task(spec, cfg)
    if task == "diffusion":
        from .diffusion import make_diffusion_inputs

        return make_diffusion_inputs(spec, cfg, base_dir=base_dir, checkpoint=checkpoint)
    if task == "generate":
        assert spec.latent_shape is not None
        if cfg.encoder is not None:
            return _encoded_latents(spec, cfg, base_dir)
        return _synthetic_latents(spec, cfg)

    images_dir, calib_files, eval_dir, eval_files = _image_files(cfg, base_dir)
    maker = _Maker(spec, task, cfg)
    m = maker.multiple
    crops, calib_imgs, cal_crop = _calibration_crops(calib_files, images_dir, cfg, m)
    cal = [maker.pair(crop)[0] for crop in crops]

    eval_side = cfg.eval_crop or (cfg.max_eval_side if task == "sr" else spec.default_size)
    eval_side = min(eval_side, cfg.max_eval_side)
    ev: list[Sample] = []
    for f, im in _eval_images(eval_files, eval_side, m):
        x, target = maker.pair(im)
        ev.append(Sample(f.name, x, target))
    return Inputs(task, cal, ev, {
        "calibration": f"{len(cal)} random {cal_crop}px crops of {len(calib_imgs)} images in {images_dir}",
        "evaluation": f"{len(ev)} images (center-cropped to at most {eval_side}px) in {eval_dir}",
        "task": task,
    }, TrainingSource(spec, task, cfg, calib_imgs, cal_crop))

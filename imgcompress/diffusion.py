"""Inputs of a diffusion UNet: noisy latents at timesteps spread over the noise schedule.

A UNet step takes (noisy latent, timestep[, text embedding]). Calibration and evaluation
inputs are made the way training made them: a clean latent ``x0`` (the encoder's latent of an
image crop, times the autoencoder's ``scaling_factor``; for a pixel-space UNet, 3 channels,
without ``data.encoder``: image crops in [-1, 1] at the UNet's sample size; otherwise N(0,
``latent_sigma``)), a seeded noise ``eps`` and a timestep ``t``, and the input is
``sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·eps``. The timesteps are spread evenly over
``data.diffusion.buckets`` equal ranges of the schedule, so each range's activations weigh
alike in the int8 ranges, and each evaluation sample carries its bucket for per-bucket drift.

The schedule is diffusers' own `DDIMScheduler`, also used by the end-to-end check
(`imgcompress.validate.sampling`). Text embeddings, for a text-conditional UNet, are N(0, 1)
(no text encoder runs here); the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import (Inputs, Sample, _calibration_crops, _eval_images, _image_files, crop_to_multiple, encode,
                   load_latent_encoder, to_tensor)
from .errors import DataError
from .models.inputs import Batch, pack
from .models.spec import GeneratorSpec
from .recipe import DataConfig, Diffusion

SCHEDULER_CONFIG = "scheduler_config.json"
EVAL_STREAM = 1_000_003  # evaluation draws from a stream disjoint from calibration's


@dataclass
class Sampling:
    """What the end-to-end check needs: the schedule, the steps, the seeds, the latent shape,
    the text embeddings (one per sample) and, when there is one, the VAE decoder with the
    latent scale (latents / scaling_factor are what the decoder takes)."""

    scheduler_config: dict[str, Any]
    steps: int
    seeds: list[int]
    latent_shape: tuple[int, ...]
    embeddings: list[torch.Tensor]
    decoder: torch.nn.Module | None = None
    scaling_factor: float = 1.0
    decoder_name: str = ""
    pixel_space: bool = False  # the UNet denoises images in [-1, 1] (no decoder)


def _scheduler_file(cfg: Diffusion, checkpoint: Path | None, base_dir: Path | None) -> Path | None:
    if cfg.scheduler is not None:
        p = Path(cfg.scheduler).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        p = p / SCHEDULER_CONFIG if p.is_dir() else p
        if not p.is_file():
            raise DataError(f"data.diffusion.scheduler: {p}: no such file; name a diffusers {SCHEDULER_CONFIG} "
                            "(or the scheduler folder of a pipeline)")
        return p
    if checkpoint is not None and checkpoint.is_dir():
        sibling = checkpoint.resolve().parent / "scheduler" / SCHEDULER_CONFIG
        if sibling.is_file():
            return sibling
    return None


def scheduler_config(cfg: Diffusion, checkpoint: Path | None = None, base_dir: Path | None = None
                     ) -> tuple[dict[str, Any], str]:
    """The DDIMScheduler config for ``cfg`` (from a scheduler file, else the recipe's fields), and
    where it came from."""
    path = _scheduler_file(cfg, checkpoint, base_dir)
    if path is None:
        conf = {"num_train_timesteps": cfg.train_timesteps, "beta_schedule": cfg.beta_schedule,
                "beta_start": cfg.beta_start, "beta_end": cfg.beta_end, "prediction_type": cfg.prediction_type}
        source = "the recipe's data.diffusion"
    else:
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable scheduler config ({e}); point data.diffusion.scheduler at a "
                            f"diffusers {SCHEDULER_CONFIG}") from None
        if not isinstance(raw, dict):
            raise DataError(f"{path}: not a scheduler config (a JSON object); point data.diffusion.scheduler at a "
                            f"diffusers {SCHEDULER_CONFIG}")
        keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "trained_betas",
                "timestep_spacing", "steps_offset", "rescale_betas_zero_snr")
        conf = {k: raw[k] for k in keys if raw.get(k) is not None}
        source = str(path)
    conf.update({"clip_sample": False, "set_alpha_to_one": False})
    return conf, source


def make_scheduler(conf: dict[str, Any]) -> Any:
    from diffusers import DDIMScheduler

    try:
        return DDIMScheduler(**conf)
    except (TypeError, ValueError, NotImplementedError) as e:
        raise DataError(f"the noise schedule {conf} is not one diffusers' DDIMScheduler takes ({e}); fix "
                        "data.diffusion") from None


def bucket_range(b: int, train_timesteps: int, buckets: int) -> range:
    """The timesteps of bucket ``b`` of ``buckets`` equal ranges of the schedule (never empty)."""
    lo = -(-b * train_timesteps // buckets)
    return range(lo, max(lo + 1, -(-(b + 1) * train_timesteps // buckets)))


class _Noiser:
    """Noisy inputs at timesteps spread over the buckets, from one seeded stream."""

    def __init__(self, spec: GeneratorSpec, buckets: int, alphas_cumprod: torch.Tensor, seed: int):
        self.spec, self.buckets = spec, buckets
        self.abar = alphas_cumprod.double()
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, x0: torch.Tensor, i: int) -> tuple[Batch, str]:
        """Input ``i``: ``x0`` noised at a random timestep of bucket i mod buckets; and the bucket's label."""
        ts = bucket_range(i % self.buckets, len(self.abar), self.buckets)
        t = int(torch.randint(ts.start, ts.stop, (1,), generator=self.g))
        eps = torch.randn(x0.shape, generator=self.g)
        a = float(self.abar[t])
        noisy = (a ** 0.5) * x0 + ((1 - a) ** 0.5) * eps
        parts = [noisy.float(), torch.tensor([float(t)])]
        parts += [torch.randn((1, *e.shape), generator=self.g) for e in self.spec.extra_inputs if e.kind == "embedding"]
        return pack(parts), f"t {ts.start}-{ts.stop - 1}"


def _latent_side(spec: GeneratorSpec, side: int) -> int:
    m = spec.size_multiple
    return max(m, side - side % m)


def make_diffusion_inputs(spec: GeneratorSpec, cfg: DataConfig, *, base_dir: Path | None = None,
                          checkpoint: Path | None = None) -> Inputs:
    """Calibration inputs and evaluation samples (with their bucket) of a diffusion UNet, and
    the end-to-end sampling set-up."""
    assert spec.latent_shape is not None
    dcfg = cfg.diffusion
    conf, sched_source = scheduler_config(dcfg, checkpoint, base_dir)
    sched = make_scheduler(conf)
    T = int(sched.config.num_train_timesteps)
    noiser = _Noiser(spec, dcfg.buckets, sched.alphas_cumprod, cfg.seed)
    eval_noiser = _Noiser(spec, dcfg.buckets, sched.alphas_cumprod, cfg.seed + EVAL_STREAM)
    n_eval = max(cfg.eval_samples, dcfg.buckets)
    channels = spec.latent_shape[0]
    decoder, scaling, decoder_name = None, 1.0, ""

    if cfg.encoder is not None:
        enc_path, encoder = load_latent_encoder(spec, cfg, base_dir=base_dir, check_scale=False)
        scaling = float(getattr(encoder, "scaling_factor", 1.0))
        factor = int(encoder.factor)
        m = factor * spec.size_multiple
        images_dir, calib_files, eval_dir, eval_files = _image_files(cfg, base_dir)
        crops, calib_imgs, cal_crop = _calibration_crops(calib_files, images_dir, cfg, m)
        x0s = list((encode(encoder, [to_tensor(c) for c in crops]) * scaling).split(1))
        eval_side = min(cfg.eval_crop or spec.default_size * factor, cfg.max_eval_side)
        ev_imgs = _eval_images(eval_files, eval_side, m)
        ev_x0 = [(f.name, encode(encoder, [to_tensor(crop_to_multiple(im, m))]) * scaling) for f, im in ev_imgs]
        where = f"encoder {enc_path.name} (× scaling_factor {scaling:g}) of"
        cal_what = f"random {cal_crop}px crops of {len(calib_imgs)} images in {images_dir}"
        ev_what = f"images (center-cropped to at most {eval_side}px) in {eval_dir}"
        decoder, decoder_name = _decoder(enc_path)
    elif channels == 3:  # a pixel-space UNet (DDPM): the clean inputs are images in [-1, 1]
        side = _latent_side(spec, spec.default_size)
        images_dir, calib_files, eval_dir, eval_files = _image_files(cfg, base_dir)
        crops, calib_imgs, _ = _calibration_crops(calib_files, images_dir, cfg.model_copy(update={"crop": side}), side)
        x0s = [to_tensor(c) * 2 - 1 for c in crops]
        ev_x0 = [(f.name, to_tensor(crop_to_multiple(im, side)) * 2 - 1) for f, im in _eval_images(eval_files, side, side)]
        where = "images in [-1, 1] (a pixel-space UNet),"
        cal_what = f"random {side}px crops of {len(calib_imgs)} images in {images_dir}"
        ev_what = f"images (center-cropped to {side}px) in {eval_dir}"
    else:
        cal_side = _latent_side(spec, spec.default_size)
        g_cal = torch.Generator().manual_seed(cfg.seed)
        g_ev = torch.Generator().manual_seed(cfg.seed + EVAL_STREAM)
        shape = (1, channels, cal_side, cal_side)
        x0s = [torch.randn(shape, generator=g_cal) * cfg.latent_sigma for _ in range(cfg.calibration_samples)]
        ev_x0 = [(f"z{i}", torch.randn(shape, generator=g_ev) * cfg.latent_sigma) for i in range(n_eval)]
        where = f"synthetic clean latents ~ N(0, {cfg.latent_sigma:g}) {tuple(shape[1:])} (no data.encoder: not the " \
                "latents of real images),"
        cal_what = f"seed {cfg.seed}"
        ev_what = f"seed {cfg.seed + EVAL_STREAM}"

    cal = [noiser(x0, i)[0] for i, x0 in enumerate(x0s)]
    ev = []
    for i in range(n_eval):
        name, x0 = ev_x0[i % len(ev_x0)]
        x, bucket = eval_noiser(x0, i)
        ev.append(Sample(f"{name}@t{int(x[1][0])}", x, None, group=bucket))

    text = ""
    if any(e.kind == "embedding" for e in spec.extra_inputs):
        text = "; text embeddings: synthetic N(0, 1) (no text encoder runs here)"
    noise = f"noised at timesteps spread over {dcfg.buckets} equal buckets of the {T}-step schedule ({sched_source})"
    g_s = torch.Generator().manual_seed(cfg.seed + 2 * EVAL_STREAM)
    side = int(ev[0].input[0].shape[-1])
    emb = [[torch.randn((1, *e.shape), generator=g_s) for e in spec.extra_inputs if e.kind == "embedding"]
           for _ in range(dcfg.sampling_samples)]
    sampling = Sampling(conf, dcfg.sampling_steps, [cfg.seed + 7 + k for k in range(dcfg.sampling_samples)],
                        (channels, side, side), [e[0] if e else None for e in emb], decoder, scaling, decoder_name,
                        pixel_space=cfg.encoder is None and channels == 3)
    return Inputs("diffusion", cal, ev, {
        "calibration": f"{len(cal)} noisy latents: {where} {cal_what}, {noise}{text}",
        "evaluation": f"{len(ev)} noisy latents: {where} {ev_what}, {noise}; drift per bucket{text}",
        "task": "diffusion",
    }, None, sampling)


def _decoder(path: Path) -> tuple[torch.nn.Module | None, str]:
    """The VAE decoder of a diffusers autoencoder folder (for the end-to-end check), else None."""
    from .models import diffusers_adapter

    if not diffusers_adapter.is_model_folder(path):
        return None, ""
    g = diffusers_adapter.load_folder(path)
    for p in g.module.parameters():
        p.requires_grad_(False)
    return g.module.eval(), path.name


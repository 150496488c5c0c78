"""The real checkpoints: tests that need them take the ``shared_dir`` fixture, which reads
IMGCOMPRESS_SHARED (the ../shared folder; a relative path is taken from where pytest starts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    value = os.environ.get("IMGCOMPRESS_SHARED")
    if not value:
        pytest.skip("IMGCOMPRESS_SHARED is not set: this case needs the real checkpoints in ../shared")
    path = Path(value).resolve()  # absolute: some code under test changes the working directory
    if not (path / "checkpoints").is_dir():
        pytest.fail(f"IMGCOMPRESS_SHARED={value} has no checkpoints/ folder; point it at ../shared")
    return path


@pytest.fixture(scope="session")
def diffusers_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small diffusers model folders (save_pretrained of seeded, untrained models): an AutoencoderKL
    (×4, 4 latent channels, a mid-block attention), an AutoencoderTiny, a UNet2DModel and a
    text-conditional UNet2DConditionModel (cross-attention to 32-wide embeddings)."""
    diffusers = pytest.importorskip("diffusers")
    import torch

    root = tmp_path_factory.mktemp("diffusers")
    torch.manual_seed(0)
    models = {
        "autoencoder_kl": diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
            latent_channels=4, norm_num_groups=8, sample_size=64),
        "autoencoder_tiny": diffusers.AutoencoderTiny(
            encoder_block_out_channels=(32, 32, 32), decoder_block_out_channels=(32, 32, 32),
            num_encoder_blocks=(1, 2, 2), num_decoder_blocks=(2, 2, 1), latent_channels=4),
        "unet": diffusers.UNet2DModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8),
        "unet_cond": diffusers.UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
    return {name: root / name for name in models}

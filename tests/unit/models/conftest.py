"""Small, non-default instances of every built-in arch, to check detection across the zoo."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from imgcompress import models

# Non-default hyperparameters, small enough that every forward takes milliseconds.
SMALL_KWARGS: dict[str, dict[str, Any]] = {
    "fsrcnn": {"d": 24, "s": 8, "m": 2, "scale": 3, "in_channels": 1},
    "imdn": {"in_channels": 3, "out_channels": 3, "num_features": 32, "num_blocks": 3, "scale": 3},
    "dcgan": {"nz": 16, "ngf": 8, "nc": 1, "num_layers": 4},
    "cyclegan_resnet": {"in_channels": 3, "out_channels": 3, "ngf": 8, "n_blocks": 3, "n_downsampling": 3},
    "mnist_vae_decoder": {"latent_dim": 8, "hidden": 32, "side": 14},
    "espcn": {"scale": 3, "channels": 3, "features": 16, "num_body": 2},
    "taesd_decoder": {"latent_channels": 4, "channels": 8, "out_channels": 3, "blocks": [2, 1, 1],
                      "pool_stages": [0], "pool_channels": 16, "pool_groups": 4},
}
# the encoder of the small TAESD (not a generator: only data.encoder loads it)
SMALL_TAESD_ENCODER: dict[str, Any] = {"latent_channels": 4, "channels": 8, "in_channels": 3, "blocks": [1, 2, 1],
                                       "pool_stages": [2], "pool_channels": 16, "pool_groups": 4}


def compact_state_dict(*, num_feat: int = 16, num_conv: int = 2, scale: int = 2) -> dict[str, torch.Tensor]:
    """Random tensors in the Real-ESRGAN Compact layout (body.<i>: conv, PReLU, …, conv)."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    c_in = 3
    for i in range(num_conv + 1):
        sd[f"body.{2 * i}.weight"] = torch.randn(num_feat, c_in, 3, 3, generator=g) * 0.1
        sd[f"body.{2 * i}.bias"] = torch.zeros(num_feat)
        sd[f"body.{2 * i + 1}.weight"] = torch.full((num_feat,), 0.25)
        c_in = num_feat
    last = 2 * (num_conv + 1)
    sd[f"body.{last}.weight"] = torch.randn(3 * scale * scale, num_feat, 3, 3, generator=g) * 0.1
    sd[f"body.{last}.bias"] = torch.zeros(3 * scale * scale)
    return sd


@pytest.fixture(scope="session")
def make_compact() -> Callable[..., dict[str, torch.Tensor]]:
    return compact_state_dict


@pytest.fixture(scope="session")
def small_kwargs() -> dict[str, dict[str, Any]]:
    return SMALL_KWARGS


@pytest.fixture(scope="session")
def small_taesd_encoder() -> dict[str, Any]:
    return SMALL_TAESD_ENCODER


@pytest.fixture(scope="session")
def small_modules() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: models.build(name, kw).eval() for name, kw in SMALL_KWARGS.items()}


@pytest.fixture(scope="session")
def zoo(small_modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts by name: one per built-in arch, plus a VAE with its encoder and a Compact."""
    sds = {name: m.state_dict() for name, m in small_modules.items()}
    vae = sds["mnist_vae_decoder"]
    sds["mnist_vae_full"] = {
        "fc1.weight": torch.zeros(32, 196),
        "fc1.bias": torch.zeros(32),
        "fc21.weight": torch.zeros(8, 32),
        "fc21.bias": torch.zeros(8),
        "fc22.weight": torch.zeros(8, 32),
        "fc22.bias": torch.zeros(8),
        **vae,
    }
    sds["spandrel_compact"] = compact_state_dict()
    from imgcompress.models.taesd import TAESDEncoder

    torch.manual_seed(1)
    encoder = TAESDEncoder(**SMALL_TAESD_ENCODER).state_dict()
    sds["taesd_encoder"] = encoder
    sds["taesd_whole"] = {**{f"encoder.{k}": v for k, v in encoder.items()},
                          **{f"decoder.{k}": v for k, v in sds["taesd_decoder"].items()}}
    return sds


@pytest.fixture(scope="session")
def garbage() -> list[Any]:
    """State-dict-shaped junk that no detector may accept or raise on."""
    return [
        {},
        {"a": 1},
        {"weight": torch.zeros(3)},
        {"first_part.0.weight": "not a tensor", "last_part.weight": None},
        {"fea_conv.weight": torch.zeros(2), "upsampler.0.weight": torch.zeros(2), "c.0.weight": 3},
        {"main.0.weight": torch.zeros(4, 4), "main.3.weight": torch.zeros(1)},
        {"model.1.weight": torch.zeros(8, 3, 7, 7)},
        {"fc3.weight": torch.zeros(10), "fc3.bias": 1, "fc4.weight": None, "fc4.bias": torch.zeros(3)},
        {"head.weight": torch.zeros(16, 3, 5, 5), "tail.weight": torch.zeros(7, 16, 3, 3)},
    ]


@pytest.fixture(scope="session")
def check_detection(zoo: dict[str, dict[str, torch.Tensor]], garbage: list[Any]) -> Callable[..., None]:
    """``check(name, own=(...))``: arch `name` detects exactly the zoo dicts in `own`, and no garbage."""

    def check(name: str, *, own: tuple[str, ...]) -> None:
        arch = models.get(name)
        assert arch is not None
        for key, sd in zoo.items():
            assert arch.detect(sd) is (key in own), key
            if key in own:
                assert models.detect(sd) is arch, key
        for junk in garbage:
            assert arch.detect(junk) is False, junk

    return check

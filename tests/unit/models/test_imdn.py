from __future__ import annotations

import pytest
import torch

from imgcompress import models
from imgcompress.models.imdn import IMDN

NAME = "imdn"


def test_detects_imdn_and_nothing_else(check_detection) -> None:
    check_detection(NAME, own=(NAME,))


def test_keys_follow_the_published_layout() -> None:
    keys = set(IMDN(num_blocks=2).state_dict())
    assert {"fea_conv.weight", "IMDB2.c4.weight", "IMDB1.cca.conv_du.2.bias", "c.0.weight"} <= keys
    assert {"LR_conv.weight", "upsampler.0.weight"} <= keys
    assert IMDN().state_dict()["IMDB1.c2.weight"].shape == (64, 48, 3, 3)


def test_forward_matches_spec(small_kwargs, small_modules) -> None:
    spec = models.get(NAME).spec(small_kwargs[NAME])
    assert (spec.task, spec.color, spec.scale, spec.size_multiple) == ("sr", "rgb", 3, 1)
    assert spec.input_range == spec.output_range == (0.0, 1.0)
    x = spec.example_input(batch=2, size=7)
    with torch.no_grad():
        assert small_modules[NAME](x).shape == (2, 3, 21, 21)


@pytest.mark.parametrize("scale", [2, 4])
def test_output_side_is_input_side_times_scale(scale: int) -> None:
    with torch.no_grad():
        y = IMDN(num_features=16, num_blocks=1, scale=scale)(torch.rand(1, 3, 5, 6))
    assert y.shape == (1, 3, 5 * scale, 6 * scale)

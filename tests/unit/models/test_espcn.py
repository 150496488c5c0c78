from __future__ import annotations

import pytest
import torch

from imgcompress import models
from imgcompress.models.espcn import ESPCN

NAME = "espcn"


def test_detects_espcn_and_nothing_else(check_detection) -> None:
    check_detection(NAME, own=(NAME,))


def test_spandrel_does_not_claim_it(zoo) -> None:
    assert models.spandrel_detect(zoo[NAME]) is None


def test_forward_matches_spec(small_kwargs, small_modules) -> None:
    spec = models.get(NAME).spec(small_kwargs[NAME])
    assert (spec.task, spec.color, spec.scale) == ("sr", "rgb", 3)
    assert spec.input_range == spec.output_range == (0.0, 1.0)
    with torch.no_grad():
        assert small_modules[NAME](spec.example_input(batch=2, size=9)).shape == (2, 3, 27, 27)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_output_side_is_input_side_times_scale(scale: int) -> None:
    with torch.no_grad():
        y = ESPCN(scale=scale, features=8)(torch.rand(1, 3, 5, 7))
    assert y.shape == (1, 3, 5 * scale, 7 * scale)

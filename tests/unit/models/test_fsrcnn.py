from __future__ import annotations

import pytest
import torch

from imgcompress import models
from imgcompress.models.fsrcnn import FSRCNN

NAME = "fsrcnn"


def test_detects_fsrcnn_and_nothing_else(check_detection) -> None:
    check_detection(NAME, own=(NAME,))


def test_notes_say_how_to_set_the_scale() -> None:
    assert any("kwargs: {scale: 3}" in note for note in models.get(NAME).notes)


def test_forward_matches_spec(small_kwargs, small_modules) -> None:
    spec = models.get(NAME).spec(small_kwargs[NAME])
    assert (spec.task, spec.color, spec.scale, spec.channels) == ("sr", "y", 3, 1)
    assert spec.input_range == spec.output_range == (0.0, 1.0)
    x = spec.example_input(batch=2, size=10)
    with torch.no_grad():
        assert small_modules[NAME](x).shape == (2, 1, 30, 30)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_output_side_is_input_side_times_scale(scale: int) -> None:
    with torch.no_grad():
        y = FSRCNN(d=8, s=4, m=1, scale=scale)(torch.rand(1, 1, 7, 9))
    assert y.shape == (1, 1, 7 * scale, 9 * scale)

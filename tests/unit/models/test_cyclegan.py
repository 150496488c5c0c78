from __future__ import annotations

import torch

from imgcompress import models
from imgcompress.models.cyclegan import ResnetGenerator

NAME = "cyclegan_resnet"


def test_detects_cyclegan_and_nothing_else(check_detection) -> None:
    check_detection(NAME, own=(NAME,))


def test_keys_are_the_published_sequential_indices() -> None:
    sd = ResnetGenerator().state_dict()
    assert len(sd) == 94
    assert {"model.1.weight", "model.10.block.6.bias", "model.18.block.1.weight", "model.26.weight"} <= set(sd)
    assert {"model.19.weight", "model.23.bias"} <= set(sd)
    assert not any("running" in k for k in sd)


def test_forward_matches_spec(small_kwargs, small_modules) -> None:
    spec = models.get(NAME).spec(small_kwargs[NAME])
    assert (spec.task, spec.color, spec.size_multiple, spec.default_size) == ("translate", "rgb", 8, 256)
    assert spec.input_range == spec.output_range == (-1.0, 1.0)
    x = spec.example_input(batch=2, size=20)  # rounded down to 16, a multiple of 8
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1
    with torch.no_grad():
        y = small_modules[NAME](x)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1

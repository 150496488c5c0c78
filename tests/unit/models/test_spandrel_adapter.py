from __future__ import annotations

from typing import Any

import pytest
import torch

from imgcompress import models
from imgcompress.errors import CheckpointError


def test_detects_compact_plain_and_wrapped(zoo) -> None:
    sd = zoo["spandrel_compact"]
    for candidate in (sd, {"params": sd}, {f"module.{k}": v for k, v in sd.items()}):
        desc = models.spandrel_detect(candidate)
        assert desc is not None and desc.architecture.id == "Compact"


@pytest.mark.parametrize(
    "junk",
    [None, [], "x", 3, {}, {"a": 1}, {"params": 3}, {"body.0.weight": "x", "body.1.weight": None}],
)
def test_never_raises_on_garbage(junk: Any) -> None:
    assert models.spandrel_detect(junk) is None


def test_rejects_every_built_in_arch(zoo) -> None:
    for key, sd in zoo.items():
        if key != "spandrel_compact":
            assert models.spandrel_detect(sd) is None, key
    assert models.detect(zoo["spandrel_compact"]) is None


def test_generator_spec_and_forward(zoo) -> None:
    gen = models.spandrel_generator(models.spandrel_detect(zoo["spandrel_compact"]), "compact.pth")
    assert (gen.arch, gen.kwargs, gen.source) == ("spandrel", {"architecture": "Compact"}, "compact.pth")
    spec = gen.spec
    assert (spec.task, spec.color, spec.scale, spec.size_multiple) == ("sr", "rgb", 2, 1)
    assert spec.input_range == spec.output_range == (0.0, 1.0)
    with torch.no_grad():
        assert gen.eval()(spec.example_input(size=8)).shape == (1, 3, 16, 16)


def test_scale_one_is_a_translator(make_compact) -> None:
    gen = models.spandrel_generator(models.spandrel_detect(make_compact(scale=1)), "x.pth")
    assert (gen.spec.task, gen.spec.scale) == ("translate", 1)


def test_build_refuses_spandrel_and_unknown_names() -> None:
    with pytest.raises(CheckpointError, match="spandrel models are rebuilt from their weights"):
        models.build("spandrel", {"architecture": "Compact"})
    with pytest.raises(CheckpointError, match=r"unknown architecture 'nope'; built-in ones are: .*fsrcnn"):
        models.build("nope", {})
    with pytest.raises(CheckpointError, match="bad kwargs for architecture 'fsrcnn'"):
        models.build("fsrcnn", {"width": 3})

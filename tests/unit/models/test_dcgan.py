from __future__ import annotations

import torch

from imgcompress import models

NAME = "dcgan"


def test_detects_dcgan_and_nothing_else(check_detection) -> None:
    check_detection(NAME, own=(NAME,))


def test_conv_biases_are_not_dcgan(zoo) -> None:
    sd = dict(zoo[NAME])
    sd["main.0.bias"] = torch.zeros(sd["main.0.weight"].shape[1])
    assert models.get(NAME).detect(sd) is False


def test_state_dict_keeps_batchnorm_running_stats(zoo) -> None:
    assert {"main.1.running_mean", "main.1.running_var", "main.1.num_batches_tracked"} <= set(zoo[NAME])


def test_forward_matches_spec(small_kwargs, small_modules) -> None:
    spec = models.get(NAME).spec(small_kwargs[NAME])
    assert (spec.task, spec.input_kind, spec.latent_shape, spec.color) == ("generate", "latent", (16, 1, 1), "gray")
    assert spec.output_range == (-1.0, 1.0) and spec.default_size == 32
    with torch.no_grad():
        y = small_modules[NAME](spec.example_input(batch=3))
    assert y.shape == (3, 1, 32, 32)
    assert y.min() >= -1 and y.max() <= 1


def test_default_spec_is_the_tutorial_generator() -> None:
    spec = models.get(NAME).spec({"nz": 100, "ngf": 64, "nc": 3, "num_layers": 5})
    assert (spec.latent_shape, spec.color, spec.default_size) == ((100, 1, 1), "rgb", 64)

from __future__ import annotations

import torch

from imgcompress import models

NAME = "mnist_vae_decoder"


def test_detects_full_and_decoder_only_dicts_and_nothing_else(check_detection) -> None:
    check_detection(NAME, own=(NAME, "mnist_vae_full"))


def test_unknown_extra_keys_are_not_this_vae(zoo) -> None:
    sd = {**zoo[NAME], "fc5.weight": torch.zeros(2, 2)}
    assert models.get(NAME).detect(sd) is False


def test_select_keeps_only_the_decoder(zoo) -> None:
    kept = models.get(NAME).select(zoo["mnist_vae_full"])
    assert sorted(kept) == ["fc3.bias", "fc3.weight", "fc4.bias", "fc4.weight"]


def test_forward_matches_spec(small_kwargs, small_modules) -> None:
    spec = models.get(NAME).spec(small_kwargs[NAME])
    assert (spec.task, spec.input_kind, spec.latent_shape, spec.color) == ("generate", "latent", (8,), "gray")
    assert spec.output_range == (0.0, 1.0)
    with torch.no_grad():
        y = small_modules[NAME](spec.example_input(batch=3))
    assert y.shape == (3, 1, 14, 14)
    assert y.min() >= 0 and y.max() <= 1

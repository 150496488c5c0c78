"""Multi-input batches: a UNet's (latent, timestep) travels as a tuple through cat, take and feeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgcompress.models.inputs import call, cat, feeds, main, pack, parts, shapes, take
from imgcompress.models.spec import ExtraInput, GeneratorSpec


def test_a_single_tensor_stays_a_tensor() -> None:
    x = torch.zeros(1, 3, 4, 4)
    assert parts(x) == (x,) and main(x) is x and pack([x]) is x
    assert cat([x, x]).shape == (2, 3, 4, 4)


def test_tuples_concatenate_and_slice_part_by_part() -> None:
    a = (torch.zeros(1, 4, 2, 2), torch.tensor([5.0]))
    b = (torch.ones(1, 4, 2, 2), torch.tensor([7.0]))
    both = cat([a, b])
    assert isinstance(both, tuple) and shapes(both) == ((2, 4, 2, 2), (2,))
    assert torch.equal(both[1], torch.tensor([5.0, 7.0]))
    second = take(both, slice(1, 2))
    assert torch.equal(second[0], b[0]) and torch.equal(second[1], b[1])
    picked = take(both, [1, 0])
    assert torch.equal(picked[1], torch.tensor([7.0, 5.0]))
    assert call(lambda x, t: x.sum() + t.sum(), both).item() == 16 + 12


def test_feeds_name_each_part_and_refuse_a_wrong_count() -> None:
    x = (torch.zeros(2, 4, 2, 2, dtype=torch.float64), torch.tensor([1, 2]))
    f = feeds(["input", "timestep"], x)
    assert list(f) == ["input", "timestep"] and all(v.dtype == np.float32 for v in f.values())
    with pytest.raises(ValueError, match=r"takes 1 input\(s\) \(input\), got 2"):
        feeds(["input"], x)


def test_a_spec_with_extra_inputs_makes_them_and_round_trips() -> None:
    spec = GeneratorSpec(task="diffusion", input_kind="latent", latent_shape=(4, 8, 8), spatial_latent=True,
                         extra_inputs=(ExtraInput("timestep", "timestep", (), 1000.0),
                                       ExtraInput("encoder_hidden_states", "embedding", (77, 32))))
    x = spec.example_input(batch=3, size=16, seed=1)
    assert shapes(x) == ((3, 4, 16, 16), (3,), (3, 77, 32))
    t = x[1]
    assert bool(((t >= 0) & (t < 1000) & (t == t.round())).all())
    assert GeneratorSpec.from_dict(spec.to_dict()) == spec  # report/metadata JSON round trip
    again = spec.example_input(batch=3, size=16, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(x, again))

"""Every built-in arch: the kwargs inferred from a state dict rebuild a module that gives the
same outputs as the one the state dict came from."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from imgcompress import models

# (arch, zoo entry, input side) — the VAEs' entries are the whole autoencoders' state dicts
CASES = [
    ("cyclegan_resnet", "cyclegan_resnet", 16),
    ("dcgan", "dcgan", None),
    ("espcn", "espcn", 9),
    ("fsrcnn", "fsrcnn", 12),
    ("imdn", "imdn", 8),
    ("mnist_vae_decoder", "mnist_vae_full", None),
    ("taesd_decoder", "taesd_whole", 5),
]
# what the weights cannot tell: inference gives the default, the recipe overrides it
NOT_IN_WEIGHTS: dict[str, dict[str, Any]] = {"fsrcnn": {"scale": 2}}


@pytest.mark.parametrize(("name", "entry", "size"), CASES, ids=[c[0] for c in CASES])
def test_infer_kwargs_rebuilds_the_module(name: str, entry: str, size: int | None, small_kwargs: Any,
                                          small_modules: Any, zoo: Any) -> None:
    arch = models.get(name)
    assert arch is not None
    kw = arch.infer_kwargs(zoo[entry])
    assert kw == {**small_kwargs[name], **NOT_IN_WEIGHTS.get(name, {})}
    rebuilt = models.build(name, small_kwargs[name]).eval()
    rebuilt.load_state_dict(arch.select(zoo[entry]), strict=True)
    x = arch.spec(small_kwargs[name]).example_input(batch=2, size=size)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small_modules[name](x))


def test_every_builtin_arch_is_covered() -> None:
    assert {c[0] for c in CASES} == set(models.names())

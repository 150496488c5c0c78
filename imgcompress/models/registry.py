"""The registry of built-in architectures: name -> how to build, detect and describe it.

Detection is a pure function of the state dict; `infer_kwargs` derives every
hyperparameter from tensor shapes. No I/O and no model construction in either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .spec import GeneratorSpec

StateDict = dict[str, torch.Tensor]


def _identity(sd: StateDict) -> StateDict:
    return sd


@dataclass(frozen=True)
class Arch:
    """A built-in architecture.

    - ``build(**kwargs)`` returns the module.
    - ``spec(kwargs)`` returns its `GeneratorSpec`.
    - ``detect(sd)`` is true when the (unwrapped, unprefixed) state dict is this arch.
    - ``infer_kwargs(sd)`` returns the kwargs that rebuild it from tensor shapes.
    - ``select(sd)`` keeps the tensors the generator uses (e.g. the VAE decoder's half).
    - ``notes``: what detection cannot know (e.g. FSRCNN's scale), shown by `inspect`.
    """

    name: str
    build: Callable[..., nn.Module]
    spec: Callable[[dict[str, Any]], GeneratorSpec]
    detect: Callable[[StateDict], bool]
    infer_kwargs: Callable[[StateDict], dict[str, Any]]
    select: Callable[[StateDict], StateDict] = _identity
    description: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    _REGISTRY[arch.name] = arch
    return arch


def get(name: str) -> Arch | None:
    return _REGISTRY.get(name)


def names() -> list[str]:
    return sorted(_REGISTRY)


def detect(sd: StateDict) -> Arch | None:
    """The first built-in arch whose `detect` accepts the state dict, else None."""
    for arch in _REGISTRY.values():
        try:
            if arch.detect(sd):
                return arch
        except (KeyError, IndexError, AttributeError, ValueError):
            continue
    return None

"""Built-in generator architectures, and spandrel for the rest.

Importing this package registers every built-in arch; `build` makes a module from
an arch name and its kwargs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import CheckpointError
from . import cyclegan, dcgan, espcn, fsrcnn, imdn, taesd, vae  # noqa: F401  (register the built-ins)
from .registry import Arch, StateDict, detect, get, names, register
from .spandrel_adapter import spandrel_detect, spandrel_generator
from .spec import Generator, GeneratorSpec

__all__ = [
    "Arch",
    "Generator",
    "GeneratorSpec",
    "StateDict",
    "build",
    "detect",
    "get",
    "names",
    "register",
    "spandrel_detect",
    "spandrel_generator",
]


def build(arch_name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised module of the built-in arch ``arch_name``."""
    arch = get(arch_name)
    if arch is None:
        if arch_name == "spandrel":
            raise CheckpointError(
                "spandrel models are rebuilt from their weights, not from kwargs: load the checkpoint instead"
            )
        raise CheckpointError(f"unknown architecture {arch_name!r}; built-in ones are: {', '.join(names())}")
    try:
        return arch.build(**dict(kwargs or {}))
    except TypeError as e:
        raise CheckpointError(f"bad kwargs for architecture {arch_name!r}: {e}") from e

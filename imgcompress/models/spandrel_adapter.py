"""Architectures we do not implement, loaded through spandrel (e.g. Real-ESRGAN Compact).

`spandrel_detect` never raises: it returns spandrel's descriptor or None.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import CheckpointError
from .spec import Generator, GeneratorSpec

log = logging.getLogger(__name__)


def spandrel_detect(sd: Any) -> Any | None:
    """Spandrel's `ModelDescriptor` for the state dict (wrapped or not), or None if unsupported."""
    try:
        import spandrel
    except ImportError:  # pragma: no cover - spandrel is a dependency
        return None
    if not isinstance(sd, dict) or not sd:
        return None
    try:
        return spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        return None
    except Exception as e:  # noqa: BLE001 - a detector must not raise on garbage
        log.debug("spandrel failed on this state dict: %s: %s", type(e).__name__, e)
        return None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def spandrel_generator(descriptor: Any, source: str) -> Generator:
    """A `Generator` around a spandrel image-to-image descriptor."""
    import spandrel

    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise CheckpointError(
            f"{source}: spandrel loads this as {descriptor.architecture.name!r}, which is not a plain "
            "image-to-image model; imgcompress handles only those"
        )
    size = descriptor.size_requirements
    spec = GeneratorSpec(
        task="sr" if descriptor.scale > 1 else "translate",
        color="rgb" if descriptor.input_channels == 3 else "gray",
        scale=int(descriptor.scale),
        size_multiple=max(1, int(size.multiple_of)),
        default_size=_round_up(max(64, int(size.minimum)), max(1, int(size.multiple_of))),
    )
    return Generator(
        module=descriptor.model,
        spec=spec,
        arch="spandrel",
        kwargs={"architecture": descriptor.architecture.id},
        source=source,
    )

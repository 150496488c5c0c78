"""Turn a checkpoint file into a `Generator`, and a `Generator` back into a file.

Architecture resolution, first match wins:
1. imgcompress metadata in the safetensors header (arch, kwargs, spec);
2. the recipe's ``model:`` (a built-in name, or ``package.module:Class``);
3. detection from the state-dict keys: the built-in zoo, then spandrel.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from .. import checkpoint as ckpt
from ..errors import CheckpointError
from ..recipe import ModelConfig
from . import registry
from .spec import Generator, GeneratorSpec

log = logging.getLogger(__name__)

SPANDREL = "spandrel"


def _load_weights(module: nn.Module, sd: ckpt.StateDict, source: str, arch: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} of another shape (e.g. {k}: file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})")
        raise CheckpointError(
            f"{source}: the weights do not fit arch {arch!r}: {'; '.join(parts)}; "
            "check model.arch and model.kwargs in the recipe"
        )
    module.load_state_dict(sd, strict=True)


def _import_class(target: str, source: str) -> type:
    mod_name, _, cls_name = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise CheckpointError(
            f"{source}: model.arch {target!r}: cannot import module {mod_name!r} ({e}); "
            "install it or put it on PYTHONPATH"
        ) from None
    cls = getattr(mod, cls_name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise CheckpointError(f"{source}: model.arch {target!r}: {cls_name!r} is not an nn.Module class in {mod_name}")
    return cls


def _from_builtin(arch: registry.Arch, sd: ckpt.StateDict, kwargs: dict[str, Any], source: str) -> Generator:
    sd = arch.select(sd)
    try:
        module = arch.build(**kwargs)
    except TypeError as e:
        raise CheckpointError(f"{source}: arch {arch.name!r} does not take these kwargs ({e}); see `imgcompress inspect --archs`") from None
    _load_weights(module, sd, source, arch.name)
    return Generator(module.eval(), arch.spec(kwargs), arch.name, dict(kwargs), source=source)


def _from_spandrel(sd: ckpt.StateDict, source: str) -> Generator | None:
    from .spandrel_adapter import spandrel_detect, spandrel_generator

    desc = spandrel_detect(sd)
    return None if desc is None else spandrel_generator(desc, source=source)


def _from_metadata(raw: ckpt.RawCheckpoint) -> Generator:
    meta = raw.metadata or {}
    source = str(raw.path)
    name = meta.get("arch")
    try:
        spec = GeneratorSpec.from_dict(meta["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: the imgcompress metadata has no valid spec ({e}); the file was damaged") from None
    if name == SPANDREL:
        g = _from_spandrel(raw.state_dict, source)
        if g is None:
            raise CheckpointError(f"{source}: metadata says spandrel, but spandrel does not recognise the weights")
    elif isinstance(name, str) and ":" in name:
        cls = _import_class(name, source)
        module = cls(**meta.get("kwargs", {}))
        _load_weights(module, raw.state_dict, source, name)
        g = Generator(module.eval(), spec, name, dict(meta.get("kwargs", {})), source=source)
    else:
        arch = registry.get(str(name))
        if arch is None:
            raise CheckpointError(f"{source}: metadata names arch {name!r}, which this imgcompress does not know; upgrade imgcompress")
        g = _from_builtin(arch, raw.state_dict, dict(meta.get("kwargs", {})), source)
    g.spec = spec
    g.widths = dict(meta.get("widths", {}))
    return g


def _from_config(raw: ckpt.RawCheckpoint, model: ModelConfig) -> Generator:
    source = str(raw.path)
    if ":" in model.arch:
        cls = _import_class(model.arch, source)
        try:
            module = cls(**model.kwargs)
        except TypeError as e:
            raise CheckpointError(f"{source}: {model.arch}({model.kwargs}) failed: {e}; fix model.kwargs") from None
        _load_weights(module, raw.state_dict, source, model.arch)
        spec_cfg = model.spec.model_dump() if model.spec else {}
        if spec_cfg.get("input_kind") == "latent" and not spec_cfg.get("latent_shape"):
            raise CheckpointError(f"{source}: model.spec.input_kind is latent; set model.spec.latent_shape too")
        return Generator(module.eval(), GeneratorSpec(**spec_cfg), model.arch, dict(model.kwargs), source=source)
    if model.arch == SPANDREL:
        g = _from_spandrel(raw.state_dict, source)
        if g is None:
            raise CheckpointError(f"{source}: spandrel does not recognise these {len(raw.state_dict)} tensors")
        return g
    arch = registry.get(model.arch)
    if arch is None:
        raise CheckpointError(
            f"{source}: model.arch {model.arch!r} is not a built-in architecture "
            f"({', '.join(registry.names())}, spandrel); or name a class as 'package.module:Class'"
        )
    try:
        inferred = arch.infer_kwargs(arch.select(raw.state_dict))
    except (KeyError, IndexError, ValueError, AttributeError):
        inferred = {}
    g = _from_builtin(arch, raw.state_dict, {**inferred, **model.kwargs}, source)
    if model.spec is not None:
        g.spec = GeneratorSpec(**model.spec.model_dump())
    return g


def load_generator(path: str | os.PathLike[str], *, model: ModelConfig | dict[str, Any] | None = None) -> Generator:
    """Load a checkpoint as a `Generator` (eval mode, CPU).

    ``model`` names the architecture when the file does not (see the module doc for the
    order). Raises `CheckpointError` with what to do when nothing matches.
    """
    if isinstance(model, dict):
        model = ModelConfig.model_validate(model)
    raw = ckpt.read_checkpoint(path)
    source = str(raw.path)
    if raw.metadata is not None:
        g = _from_metadata(raw)
    elif model is not None:
        g = _from_config(raw, model)
    else:
        arch = registry.detect(raw.state_dict)
        if arch is not None:
            g = _from_builtin(arch, raw.state_dict, arch.infer_kwargs(arch.select(raw.state_dict)), source)
            for note in arch.notes:
                log.info("%s: %s", arch.name, note)
        else:
            g = _from_spandrel(raw.state_dict, source)
            if g is None:
                raise CheckpointError(
                    f"{Path(source).name}: no known architecture matches these {len(raw.state_dict)} tensors "
                    f"(first key {next(iter(raw.state_dict))!r}); name one in the recipe, e.g. "
                    "model: {arch: 'mypkg.nets:MyNet', kwargs: {scale: 4}}"
                )
    g.source = source
    return g.eval()


def save_generator(generator: Generator, path: str | os.PathLike[str], *, recipe_sha256: str | None = None) -> Path:
    """Write the generator's weights as safetensors with the metadata that rebuilds it."""
    meta: dict[str, Any] = {
        "arch": generator.arch,
        "kwargs": generator.kwargs,
        "spec": generator.spec.to_dict(),
        "widths": generator.widths,
        "source": Path(generator.source).name if generator.source else "",
    }
    if recipe_sha256:
        meta["recipe_sha256"] = recipe_sha256
    return ckpt.write_checkpoint(path, generator.module.state_dict(), meta)

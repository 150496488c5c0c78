"""Turn a checkpoint file into a `Generator`, and a `Generator` back into a file.

Architecture resolution, first match wins:
1. imgcompress metadata in the safetensors header (arch, kwargs, spec);
2. the recipe's ``model:`` (a built-in name, or ``package.module:Class``);
3. detection from the state-dict keys: the built-in zoo, then spandrel.

A diffusers model folder (config.json + weights) is built by diffusers from its config.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint as ckpt
from ..errors import CheckpointError
from ..recipe import ModelConfig
from . import diffusers_adapter, registry
from .diffusers_adapter import DIFFUSERS
from .spec import Generator, GeneratorSpec

log = logging.getLogger(__name__)

SPANDREL = "spandrel"
# For spandrel models (rebuilt from their weights, not from kwargs), a pruned model's kwargs also
# hold the unpruned shape of every tensor pruning changed: spandrel builds the model from them.
UNPRUNED_SHAPES = "unpruned_shapes"


def _new_param(old: torch.Tensor | None, shape: tuple[int, ...]) -> nn.Parameter | None:
    if old is None:
        return None
    return nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad)


def _new_buffer(old: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    return None if old is None else torch.empty(shape, dtype=old.dtype, device=old.device)


def _own_shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    tensors = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
    return {k: tuple(t.shape) for k, t in tensors.items() if t is not None}


def _resize_layer(m: nn.Module, saved: dict[str, tuple[int, ...]]) -> bool:
    """Resize one layer to the saved shapes of its own tensors (local name -> shape).

    Returns whether it changed the layer (False too for kinds it does not know)."""
    own = _own_shapes(m)
    if all(saved.get(k, s) == s for k, s in own.items()):
        return False
    if isinstance(m, nn.modules.conv._ConvNd) and "weight" in saved:
        w = saved["weight"]
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        if m.transposed:  # (in, out / groups, *k)
            in_c = w[0]
            groups = in_c if depthwise else m.groups
            out_c = w[1] * groups
        else:  # (out, in / groups, *k)
            out_c = w[0]
            groups = out_c if depthwise else m.groups
            in_c = w[1] * groups
        m.in_channels, m.out_channels, m.groups = in_c, out_c, groups
        m.weight = _new_param(m.weight, w)
        m.bias = _new_param(m.bias, (out_c,))
    elif isinstance(m, nn.Linear) and "weight" in saved:
        m.out_features, m.in_features = saved["weight"]
        m.weight = _new_param(m.weight, saved["weight"])
        m.bias = _new_param(m.bias, (m.out_features,))
    elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) and (
        "weight" in saved or "running_mean" in saved
    ):
        (c,) = saved.get("weight", saved.get("running_mean"))
        m.num_features = c
        m.weight, m.bias = _new_param(m.weight, (c,)), _new_param(m.bias, (c,))
        m.running_mean, m.running_var = _new_buffer(m.running_mean, (c,)), _new_buffer(m.running_var, (c,))
    elif isinstance(m, nn.GroupNorm) and "weight" in saved and saved["weight"][0] % m.num_groups == 0:
        (c,) = saved["weight"]
        m.num_channels = c
        m.weight, m.bias = _new_param(m.weight, (c,)), _new_param(m.bias, (c,))
    elif isinstance(m, nn.PReLU) and "weight" in saved:
        (c,) = saved["weight"]
        m.num_parameters = c
        m.weight = _new_param(m.weight, (c,))
    elif isinstance(m, nn.LayerNorm) and "weight" in saved:
        m.normalized_shape = tuple(saved["weight"])
        m.weight, m.bias = _new_param(m.weight, saved["weight"]), _new_param(m.bias, saved["weight"])
    else:
        return False
    return True


def restore_widths(module: nn.Module, state_dict: ckpt.StateDict) -> list[str]:
    """Resize the layers of a freshly built ``module`` to the (pruned) shapes in ``state_dict``.

    Handles Conv/ConvTranspose (any dims, depthwise too), Linear, BatchNorm, InstanceNorm,
    GroupNorm, PReLU and LayerNorm: their tensors are replaced by empty ones of the saved shapes
    and their width attributes (``in_channels``, ``out_features``, ``num_features``,
    ``num_channels`` ...) updated, so that ``load_state_dict`` fills them. Layers of other kinds
    are left alone (loading then reports the mismatch). Returns the names of the layers resized.
    """
    by_layer: dict[str, dict[str, tuple[int, ...]]] = {}
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor):
            layer, _, local = k.rpartition(".")
            by_layer.setdefault(layer, {})[local] = tuple(v.shape)
    resized = [name for name, m in module.named_modules() if name in by_layer and _resize_layer(m, by_layer[name])]
    sync_width_attributes(module)
    return resized


def sync_width_attributes(module: nn.Module) -> None:
    """After layers changed width (pruning, `restore_widths`): update the plain width attributes
    that some library blocks read in forward (diffusers' ``Upsample2D.channels`` ...)."""
    diffusers_adapter.sync_widths(module)


def load_weights(module: nn.Module, sd: ckpt.StateDict, source: str, arch: str) -> None:
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


def _from_builtin(arch: registry.Arch, sd: ckpt.StateDict, kwargs: dict[str, Any], source: str,
                  *, pruned: bool = False) -> Generator:
    sd = arch.select(sd)
    try:
        module = arch.build(**kwargs)
    except TypeError as e:
        raise CheckpointError(f"{source}: arch {arch.name!r} does not take these kwargs ({e}); see `imgcompress inspect --archs`") from None
    if pruned:
        restore_widths(module, sd)
    load_weights(module, sd, source, arch.name)
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
    pruned = bool(meta.get("widths"))
    kwargs = dict(meta.get("kwargs", {}))
    if name == SPANDREL:
        sd = raw.state_dict
        if pruned:
            # spandrel derives the architecture from tensor shapes: show it the unpruned ones
            unpruned = kwargs.get(UNPRUNED_SHAPES, {})
            sd = {k: torch.zeros(unpruned[k], dtype=v.dtype) if k in unpruned else v for k, v in sd.items()}
        g = _from_spandrel(sd, source)
        if g is None:
            raise CheckpointError(f"{source}: metadata says spandrel, but spandrel does not recognise the weights")
        if pruned:
            restore_widths(g.module, raw.state_dict)
            load_weights(g.module, raw.state_dict, source, name)
            g.kwargs = kwargs
    elif name == DIFFUSERS or (isinstance(name, str) and ":" in name):
        module = diffusers_adapter.build(kwargs) if name == DIFFUSERS else _import_class(name, source)(**kwargs)
        if pruned:
            restore_widths(module, raw.state_dict)
        load_weights(module, raw.state_dict, source, name)
        g = Generator(module.eval(), spec, name, kwargs, source=source)
    else:
        arch = registry.get(str(name))
        if arch is None:
            raise CheckpointError(f"{source}: metadata names arch {name!r}, which this imgcompress does not know; upgrade imgcompress")
        g = _from_builtin(arch, raw.state_dict, kwargs, source, pruned=pruned)
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
        load_weights(module, raw.state_dict, source, model.arch)
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
    if diffusers_adapter.is_model_folder(path):
        return diffusers_adapter.load_folder(path).eval()
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

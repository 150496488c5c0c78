"""A model input that may be several tensors.

Most generators take one tensor. A diffusion UNet takes (noisy latent, timestep[, text
embedding]): a `Batch` is then a tuple, the main input first, in the order of the module's
``forward`` and of the ONNX graph's inputs. Every tensor has the batch on its first axis.
These helpers let calibration, evaluation, export and measurement treat both alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch

Batch = Union[torch.Tensor, tuple[torch.Tensor, ...]]


def parts(x: Batch) -> tuple[torch.Tensor, ...]:
    """The tensors of ``x``, main input first."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def main(x: Batch) -> torch.Tensor:
    """The main input (image or latent) of ``x``."""
    return parts(x)[0]


def pack(ts: Sequence[torch.Tensor]) -> Batch:
    """One tensor as itself, several as a tuple."""
    return ts[0] if len(ts) == 1 else tuple(ts)


def cat(xs: Sequence[Batch]) -> Batch:
    """Concatenate batches along the batch axis, part by part."""
    cols = zip(*(parts(x) for x in xs))
    return pack([torch.cat(list(c)) for c in cols])


def take(x: Batch, index: slice | list[int]) -> Batch:
    """The samples ``index`` (a slice or a list of positions) of a batch."""
    return pack([t[index] for t in parts(x)])


def shapes(x: Batch) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(d) for d in t.shape) for t in parts(x))


def call(module: Callable[..., Any], x: Batch) -> Any:
    """``module`` on the tensors of ``x``."""
    return module(*parts(x))


def feeds(names: Sequence[str], x: Batch) -> dict[str, np.ndarray]:
    """onnxruntime feeds: ``names`` (the graph's inputs, in order) to float32 arrays."""
    ts = parts(x)
    if len(ts) != len(names):
        raise ValueError(f"the graph takes {len(names)} input(s) ({', '.join(names)}), got {len(ts)}")
    return {n: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32) for n, t in zip(names, ts)}

"""Model cost: parameters and multiply-accumulates at a stated input."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..models.inputs import Batch, call

log = logging.getLogger(__name__)


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _numel(shape: Any) -> int:
    return math.prod(int(d) for d in shape)


class _Counter(TorchFunctionMode):
    """Counts the MACs of the tensor ops that do the arithmetic in a generator, whether a
    module or a functional call issues them: convolutions, transposed convolutions, linear
    layers, matrix products and attention. (Elementwise ops, norms and pooling are not counted.)"""

    CONV = {"conv1d", "conv2d", "conv3d"}
    CONV_T = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
    MATMUL = {"matmul", "mm", "bmm", "__matmul__", "__rmatmul__"}
    ADD_MM = {"addmm", "baddbmm", "addbmm"}

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        try:
            self.macs += self._macs(name, args, kwargs, out)
        except (IndexError, TypeError, AttributeError):  # an unexpected call form: not counted
            pass
        return out

    def _macs(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
        if name in self.CONV:  # each output element: Cin/groups * kernel MACs
            w = args[1] if len(args) > 1 else kwargs["weight"]
            return out.numel() * _numel(w.shape[1:])
        if name in self.CONV_T:  # each input element scatters into Cout/groups * kernel outputs
            x = args[0] if args else kwargs["input"]
            w = args[1] if len(args) > 1 else kwargs["weight"]
            return x.numel() * _numel(w.shape[1:])
        if name == "linear":
            w = args[1] if len(args) > 1 else kwargs["weight"]
            return out.numel() * int(w.shape[-1])
        if name in self.MATMUL:
            a = args[0]
            return out.numel() * int(a.shape[-1]) if a.dim() > 0 else 0
        if name in self.ADD_MM:
            a = args[1] if len(args) > 1 else kwargs["batch1" if "batch1" in kwargs else "mat1"]
            return out.numel() * int(a.shape[-1])
        if name == "scaled_dot_product_attention":
            q, k, v = args[:3] if len(args) >= 3 else (kwargs["query"], kwargs["key"], kwargs["value"])
            batch = _numel(q.shape[:-2])
            length, source = int(q.shape[-2]), int(k.shape[-2])
            return batch * length * source * (int(q.shape[-1]) + int(v.shape[-1]))
        return 0


def macs(module: nn.Module, x: Batch) -> int:
    """MACs of one forward on ``x`` (the whole batch): Conv, ConvTranspose, Linear, matrix
    products and attention, counted as they run (a transposed convolution counts
    ``input elements × Cout/groups × kernel``, as ONNX shape arithmetic does)."""
    counter = _Counter()
    with torch.no_grad(), counter:
        call(module, x)
    return counter.macs

"""Model cost: parameters and multiply-accumulates at a stated input."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs(module: nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward on ``x`` (torch-pruning's counter), per the whole batch."""
    import torch_pruning as tp

    with torch.no_grad():
        ops, _ = tp.utils.count_ops_and_params(module, example_inputs=x)
    return int(ops)

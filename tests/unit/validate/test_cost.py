"""MACs: counted as the model runs, and equal to what the exported graph's shapes give."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgcompress import export_onnx, models
from imgcompress.compress.quantize import node_macs
from imgcompress.models.spec import Generator
from imgcompress.validate import cost

SMALL = {
    "espcn": {"scale": 2, "channels": 3, "features": 8, "num_body": 2},
    "fsrcnn": {"d": 16, "s": 8, "m": 2, "scale": 2, "in_channels": 1},  # ends in a ConvTranspose
    "dcgan": {"nz": 16, "ngf": 8, "nc": 3, "num_layers": 4},  # ConvTranspose only
    "imdn": {"in_channels": 3, "out_channels": 3, "num_features": 16, "num_blocks": 1, "scale": 2},
    "cyclegan_resnet": {"ngf": 8, "n_blocks": 2},  # reflection padding: Pad sizes built from constants
    "mnist_vae_decoder": {},  # Linear only
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_torch_count_equals_the_onnx_graph_count(name: str, tmp_path: Path) -> None:
    arch = models.get(name)
    assert arch is not None
    torch.manual_seed(0)
    module = arch.build(**SMALL[name]).eval()
    spec = arch.spec(SMALL[name])
    x = spec.example_input(batch=1, size=32, seed=0)  # size is ignored for latent inputs
    path = tmp_path / f"{name}.onnx"
    export_onnx(Generator(module, spec, name, SMALL[name], {}, None), path)
    graph = onnx.load(str(path))
    per_node = node_macs(graph, tuple(x.shape))
    compute = [n.name for n in graph.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    assert sorted(per_node) == sorted(compute)  # every compute node's shapes were inferred
    assert cost.macs(module, x) == sum(per_node.values()) > 0


def test_transposed_convolution_counts_input_elements_times_its_fan_out() -> None:
    layer = nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1)
    x = torch.rand(2, 8, 5, 5)
    assert cost.macs(layer, x) == 2 * 8 * 5 * 5 * 4 * 4 * 4
    grouped = nn.Conv2d(8, 6, kernel_size=3, padding=1, groups=2)
    assert cost.macs(grouped, x) == 2 * 6 * 5 * 5 * (8 // 2) * 3 * 3


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, 16), 2 heads of 8
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 8).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return y @ torch.ones(8, 5)


def test_functional_calls_count_too_linear_attention_and_matmul() -> None:
    x = torch.rand(1, 10, 16)
    linear = 10 * 48 * 16
    attention = 2 * 10 * 10 * (8 + 8)  # QK^T and AV, per head
    matmul = 2 * 10 * 5 * 8
    assert cost.macs(_Attention(), x) == linear + attention + matmul


def test_params() -> None:
    assert cost.params(nn.Conv2d(3, 4, 3)) == 4 * 3 * 9 + 4

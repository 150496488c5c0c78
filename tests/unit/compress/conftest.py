"""Small real generators, their exported graphs and inputs, and ways to run and score graphs.

Random-init models serve the mechanics (which nodes get int8, where files land); quality
assertions use the trained example `examples/espcn_x2.safetensors`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from imgcompress import Generator, export_onnx, load_generator, models
from imgcompress.compress.base import StageContext
from imgcompress.data import Inputs, make_inputs
from imgcompress.export import runtime
from imgcompress.recipe import DataConfig
from imgcompress.validate import metrics

ROOT = Path(__file__).resolve().parents[3]
TRAINED = ROOT / "examples" / "espcn_x2.safetensors"
THREADS = 2

# Small, fast instances: espcn has 4 Convs (first, 2 body, last); fsrcnn ends in a ConvTranspose;
# dcgan is ConvTranspose only; imdn has channel attention (1x1 convs on pooled 1x1 maps).
SMALL: dict[str, dict[str, Any]] = {
    "espcn": {"scale": 2, "channels": 3, "features": 8, "num_body": 2},
    "fsrcnn": {"d": 16, "s": 8, "m": 2, "scale": 2, "in_channels": 1},
    "dcgan": {"nz": 16, "ngf": 8, "nc": 3, "num_layers": 4},
    "imdn": {"in_channels": 3, "out_channels": 3, "num_features": 16, "num_blocks": 1, "scale": 2},
}
# 8 calibration crops (32x32 low-res inputs for x2 SR), 2 small held-out evaluation images.
DATA = DataConfig(calibration_samples=8, crop=64, eval_samples=2, max_eval_side=128)


@dataclass
class Model:
    """A generator, its exported fp32 graph and its inputs."""

    generator: Generator
    onnx_path: Path
    inputs: Inputs

    @property
    def graph(self) -> onnx.ModelProto:
        return onnx.load(str(self.onnx_path))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.calibration[0].shape)

    def ctx(self, onnx_path: Path | None = None, *, workdir: Path | None = None) -> StageContext:
        return StageContext(teacher=self.generator, inputs=self.inputs, workdir=workdir or self.onnx_path.parent,
                            threads=THREADS, onnx_path=onnx_path or self.onnx_path)


def _exported(generator: Generator, folder: Path) -> Model:
    path = folder / f"{generator.arch}.onnx"
    export_onnx(generator, path, size=24)
    return Model(generator, path, make_inputs(generator.spec, DATA))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The trained x2 ESPCN example (scale 2, 32 features, 2 body convs)."""
    g = load_generator(TRAINED)
    return _exported(g, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Model]:
    """``small(name)``: a random-init built-in arch (kwargs in SMALL), exported, with inputs; cached."""
    cache: dict[str, Model] = {}

    def get(name: str) -> Model:
        if name not in cache:
            kw = SMALL[name]
            torch.manual_seed(0)
            g = Generator(models.build(name, kw).eval(), models.get(name).spec(kw), name, dict(kw))
            cache[name] = _exported(g, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def _run_graph(graph: onnx.ModelProto | Path, x: torch.Tensor) -> torch.Tensor:
    """The graph's output on ``x`` in onnxruntime (CPU, fixed threads)."""
    src = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else graph
    return runtime.run(runtime.session(src, threads=THREADS), x)


def _score(graph: onnx.ModelProto | Path, model: Model, *, samples: int = 16,
          with_ssim: bool = False) -> tuple[float, float | None]:
    """Mean PSNR (and SSIM) of the graph's outputs vs the torch original's, per sample, on the
    first ``samples`` calibration inputs run in batches of 8: how the budget search scores."""
    xs = model.inputs.calibration[:samples]
    rng = model.generator.spec.output_range
    ps, ss = [], []
    for i in range(0, len(xs), 8):
        b = torch.cat(xs[i:i + 8])
        with torch.no_grad():
            ref = metrics.normalise(model.generator.module(b), rng)
        y = metrics.normalise(_run_graph(graph, b), rng)
        for j in range(b.shape[0]):
            ps.append(metrics.psnr(y[j:j + 1], ref[j:j + 1]))
            if with_ssim:
                ss.append(metrics.ssim(y[j:j + 1], ref[j:j + 1]))
    return sum(ps) / len(ps), (sum(ss) / len(ss) if with_ssim else None)


def _int8_inputs(graph: onnx.ModelProto, node_name: str) -> tuple[bool, bool]:
    """Whether the node's activation (input 0) and weight (input 1) come from a DequantizeLinear."""
    dq = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    (node,) = [n for n in graph.graph.node if n.name == node_name]
    return node.input[0] in dq, node.input[1] in dq


@pytest.fixture(scope="session")
def run_graph() -> Callable[..., torch.Tensor]:
    """``run_graph(graph_or_path, x)``: the graph's output in onnxruntime."""
    return _run_graph


@pytest.fixture(scope="session")
def score() -> Callable[..., tuple[float, float | None]]:
    """``score(graph_or_path, model, samples=16, with_ssim=False)``: scored as the budget search does."""
    return _score


@pytest.fixture(scope="session")
def int8_inputs() -> Callable[[onnx.ModelProto, str], tuple[bool, bool]]:
    """``int8_inputs(graph, node)``: (activation from a DQ, weight from a DQ)."""
    return _int8_inputs

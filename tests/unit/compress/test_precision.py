"""The precision stage: fp16/bf16 graphs with fp32 islands, float32 I/O, close to the fp32 output."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from imgcompress import models
from imgcompress.compress import precision, quantize
from imgcompress.compress.base import StageContext, StageResult
from imgcompress.data import make_inputs
from imgcompress.errors import RecipeError
from imgcompress.export import runtime
from imgcompress.export.onnx import export_onnx
from imgcompress.models.spec import Generator, GeneratorSpec
from imgcompress.recipe import DataConfig, Precision, Quantize
from imgcompress.validate import metrics

SMALL: dict[str, dict[str, Any]] = {
    "espcn": {"scale": 2, "channels": 3, "features": 16, "num_body": 2},
    "cyclegan_resnet": {"in_channels": 3, "out_channels": 3, "ngf": 8, "n_blocks": 2, "n_downsampling": 2},
    "dcgan": {"nz": 16, "ngf": 8, "nc": 3, "num_layers": 4},
}
DATA = DataConfig(calibration_samples=4, eval_samples=2, crop=48, eval_crop=48)


def _builtin(name: str) -> Generator:
    torch.manual_seed(0)
    kw = SMALL[name]
    return Generator(models.build(name, kw).eval(), models.get(name).spec(kw), name, kw)


class WithCasts(nn.Module):
    """Exports with Cast nodes in the float path: to double and back, and a bool mask cast to float."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = (y.double() * 0.5).float()
        mask = (y > 0.05).to(y.dtype)
        y = torch.relu(self.c2(y * mask + y))
        return self.c3(y)


class Exported:
    def __init__(self, g: Generator, path: Path):
        self.g, self.path = g, path
        self.inputs = make_inputs(g.spec, DATA)

    def ctx(self, tmp: Path, onnx_path: Path | None = None) -> StageContext:
        return StageContext(teacher=self.g, inputs=self.inputs, workdir=tmp, threads=1,
                            onnx_path=onnx_path or self.path)

    def run(self, tmp: Path, cfg: Precision, *, onnx_path: Path | None = None) -> StageResult:
        return precision.run(self.g, self.ctx(tmp, onnx_path), cfg, out=tmp / "out" / "p.onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    d = tmp_path_factory.mktemp("graphs")
    out = {}
    for name in SMALL:
        g = _builtin(name)
        export_onnx(g, d / f"{name}.onnx", size=32)
        out[name] = Exported(g, d / f"{name}.onnx")
    torch.manual_seed(0)
    g = Generator(WithCasts().eval(), GeneratorSpec(task="translate"), "with_casts")
    export_onnx(g, d / "with_casts.onnx", size=32)
    out["with_casts"] = Exported(g, d / "with_casts.onnx")
    return out


def _psnr_vs(e: Exported, a: Path, b: Path) -> float:
    """Mean PSNR of graph ``a``'s outputs vs graph ``b``'s on the evaluation inputs."""
    sa, sb = runtime.session(a, threads=1), runtime.session(b, threads=1)
    rng = e.g.spec.output_range
    return float(np.mean([
        metrics.psnr(metrics.normalise(runtime.run(sa, s.input), rng), metrics.normalise(runtime.run(sb, s.input), rng))
        for s in e.inputs.evaluation
    ]))


def _init_types(path: Path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}


def _io_types(path: Path) -> list[int]:
    g = onnx.load(str(path)).graph
    return [v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)]


def _kept(res: StageResult) -> dict[str, str]:
    return {k["node"]: k["reason"] for k in res.info["kept_fp32"]}


@pytest.mark.parametrize("name", ["espcn", "cyclegan_resnet", "dcgan"])
def test_fp16_keeps_float32_io_and_stays_close_to_fp32(exported: dict[str, Exported], tmp_path: Path, name: str) -> None:
    e = exported[name]
    res = e.run(tmp_path, Precision(dtype="fp16"))
    out = tmp_path / "out" / "p.onnx"
    assert res.onnx_path == out and res.generator is e.g
    assert res.precision == "fp16+fp32"  # auto keeps the last layer
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert _io_types(out) == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert TensorProto.FLOAT16 in _init_types(out).values()
    assert out.stat().st_size < 0.8 * e.path.stat().st_size
    info = res.info
    assert info["dtype"] == "fp16" and info["runnable_here"] is True
    assert info["counts"]["converted"] > 0 and info["counts"]["kept_fp32"] == len(info["kept_fp32"]) > 0
    assert info["providers_available"] == ort.get_available_providers()
    if "CUDAExecutionProvider" not in info["providers_available"]:
        assert "latency here is not what a GPU would show" in info["speed_note"]
    # the bar, on image crops (latents for the DCGAN), on this CPU and in the strict emulation
    assert _psnr_vs(e, out, e.path) >= 60.0
    assert _psnr_vs(e, out.with_name(info["emulated_onnx"]), e.path) >= 60.0
    assert info["check"]["psnr_db_emulated"] >= 60.0
    assert sorted(os.listdir(out.parent)) == ["p.emulated.onnx", "p.onnx"]


def test_auto_keeps_instance_norm_and_the_last_layer_fp32(exported: dict[str, Exported], tmp_path: Path) -> None:
    e = exported["cyclegan_resnet"]
    res = e.run(tmp_path, Precision())
    src = onnx.load(str(e.path)).graph
    kept = _kept(res)
    norms = [n.name for n in src.node if n.op_type == "InstanceNormalization"]
    assert norms and all(kept[n].startswith("normalization") for n in norms)
    convs = [n for n in src.node if n.op_type in ("Conv", "ConvTranspose")]
    assert kept[convs[-1].name] == "last layer (writes the output)"
    assert kept[next(n.name for n in src.node if n.op_type == "Tanh")] == "after the last layer"
    types = _init_types(tmp_path / "out" / "p.onnx")
    assert types[convs[-1].input[1]] == TensorProto.FLOAT  # the last conv's weight stays fp32
    assert types[f"{convs[1].input[1]}__fp16"] == TensorProto.FLOAT16 and convs[1].input[1] not in types
    # InstanceNormalization reads float32: a Cast back sits before each
    g = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "out" / "p.onnx"))).graph
    vtypes = {v.name: v.type.tensor_type.elem_type for v in g.value_info} | types
    for n in g.node:
        if n.op_type == "InstanceNormalization":
            assert [vtypes[t] for t in n.input] == [TensorProto.FLOAT] * 3
    # the int64 Casts of the exported reflection pads are untouched
    casts = Counter(next(a.i for a in n.attribute if a.name == "to") for n in g.node if n.op_type == "Cast")
    assert casts[TensorProto.INT64] == sum(n.op_type == "Cast" for n in src.node)


def test_a_graph_with_cast_nodes_converts_and_runs(exported: dict[str, Exported], tmp_path: Path) -> None:
    """onnxconverter_common's converter breaks such graphs; here the Casts stay right."""
    e = exported["with_casts"]
    src = onnx.load(str(e.path)).graph
    to = Counter(next(a.i for a in n.attribute if a.name == "to") for n in src.node if n.op_type == "Cast")
    assert to[TensorProto.DOUBLE] >= 1 and to[TensorProto.FLOAT] >= 2  # to double, back, and the mask
    res = e.run(tmp_path, Precision(dtype="fp16"))
    out = tmp_path / "out" / "p.onnx"
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert res.info["counts"]["converted"] >= 4
    g = onnx.load(str(out)).graph
    # the Casts to float32 that only fp16 nodes read now cast to fp16; the double math is untouched
    to_after = Counter(next(a.i for a in n.attribute if a.name == "to") for n in g.node if n.op_type == "Cast")
    assert to_after[TensorProto.DOUBLE] == to[TensorProto.DOUBLE]
    assert to_after[TensorProto.FLOAT16] >= 2
    assert _io_types(out) == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert _psnr_vs(e, out, e.path) >= 60.0
    assert res.info["check"]["psnr_db_emulated"] >= 60.0


def test_keep_fp32_patterns_match_names_or_op_types(exported: dict[str, Exported], tmp_path: Path) -> None:
    e = exported["espcn"]
    src = onnx.load(str(e.path)).graph
    first = next(n for n in src.node if n.op_type == "Conv")
    res = e.run(tmp_path, Precision(keep_fp32=[first.name, "Relu"]))
    kept = _kept(res)
    assert kept[first.name] == f"keep_fp32 pattern {first.name!r}"
    relus = [n.name for n in src.node if n.op_type == "Relu"]
    assert relus and all(kept[r] == "keep_fp32 pattern 'Relu'" for r in relus)
    last = [n.name for n in src.node if n.op_type == "Conv"][-1]
    assert last not in kept  # a list replaces auto ...
    res = e.run(tmp_path, Precision(keep_fp32=["auto", "Relu"]))
    assert _kept(res)[last] == "last layer (writes the output)"  # ... unless it names it


def test_a_pattern_matching_nothing_is_a_recipe_error_and_writes_nothing(exported: dict[str, Exported], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"precision\.keep_fp32: '/nope/\*' match no node name or op type"):
        exported["espcn"].run(tmp_path, Precision(keep_fp32=["Conv", "/nope/*"]))
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_a_failed_write_leaves_nothing_beside_out(exported: dict[str, Exported], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = precision._save

    def flaky(model: onnx.ModelProto, tmp: Path) -> None:
        calls.append(tmp)
        if len(calls) == 2:
            raise OSError("disk full")
        real(model, tmp)

    monkeypatch.setattr(precision, "_save", flaky)
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="disk full"):
        exported["espcn"].run(tmp_path, Precision())
    assert os.listdir(tmp_path / "out") == []


def test_bf16_graph_is_valid_onnx_with_its_quality_from_the_emulation(exported: dict[str, Exported], tmp_path: Path) -> None:
    """onnxruntime's CPU provider has no bf16 kernels for compute ops: the graph is written for a GPU
    and marked not runnable here, and its drift is measured on the emulation."""
    e = exported["espcn"]
    res = e.run(tmp_path, Precision(dtype="bf16"))
    out = tmp_path / "out" / "p.onnx"
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert res.precision == "bf16+fp32"
    assert res.info["opset"] == 22 and res.info["opset_upgraded_from"] == 17  # bf16 Conv needs opset 22
    assert TensorProto.BFLOAT16 in _init_types(out).values()
    assert _io_types(out) == [TensorProto.FLOAT, TensorProto.FLOAT]
    info = res.info
    if info["runnable_here"]:  # an onnxruntime with bf16 kernels for these ops
        assert info["check"]["psnr_db_onnxruntime_cpu"] >= 40.0
    else:
        assert info["check"]["psnr_db_onnxruntime_cpu"] is None
        assert "CPUExecutionProvider cannot run the bf16 graph" in info["not_runnable_reason"]
        assert "implementation" in info["not_runnable_reason"]
    assert _psnr_vs(e, out.with_name(info["emulated_onnx"]), e.path) >= 40.0
    fp16 = e.run(tmp_path, Precision(dtype="fp16")).info["check"]["psnr_db_emulated"]
    assert info["check"]["psnr_db_emulated"] < fp16 - 10.0  # 8 significant bits against 11


def test_an_int8_qdq_graph_keeps_its_int8_nodes(exported: dict[str, Exported], tmp_path: Path) -> None:
    e = exported["espcn"]
    q = quantize.run(e.g, e.ctx(tmp_path), Quantize(keep_ends_fp32=True), out=tmp_path / "q.onnx")
    res = e.run(tmp_path, Precision(), onnx_path=q.onnx_path)
    assert res.precision == "int8+fp16+fp32"
    out = tmp_path / "out" / "p.onnx"
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    before, after = onnx.load(str(q.onnx_path)).graph, onnx.load(str(out)).graph
    qdq = ("QuantizeLinear", "DequantizeLinear")
    assert Counter(n.op_type for n in after.node if n.op_type in qdq) == Counter(n.op_type for n in before.node if n.op_type in qdq)
    types = _init_types(out)
    for n in after.node:
        if n.op_type in qdq:
            assert types[n.input[1]] == TensorProto.FLOAT  # scales stay fp32
    assert any(r.startswith("int8") for r in _kept(res).values())
    assert res.info["counts"]["converted"] >= 1  # the first conv, which quantize left fp32
    drift_int8 = _psnr_vs(e, q.onnx_path, e.path)
    assert _psnr_vs(e, out, e.path) >= drift_int8 - 0.5


def test_fp16_overflow_keeps_the_nodes_that_would_overflow(tmp_path: Path) -> None:
    """Activations beyond fp16's range (65504) would turn into inf: those nodes stay fp32."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 3, 3, padding=1))
    with torch.no_grad():
        net[0].weight.mul_(2e5)
        net[2].weight.mul_(1e-5)
    g = Generator(net.eval(), GeneratorSpec(task="translate"), "big")
    export_onnx(g, tmp_path / "big.onnx", size=32)
    e = Exported(g, tmp_path / "big.onnx")
    res = e.run(tmp_path, Precision())
    kept = _kept(res)
    src = onnx.load(str(e.path)).graph
    first = next(n.name for n in src.node if n.op_type == "Conv")
    assert kept[first].startswith("values reach")
    assert _psnr_vs(e, tmp_path / "out" / "p.onnx", e.path) >= 60.0


def test_the_emulation_rounds_like_the_low_precision_types() -> None:
    x = (np.random.default_rng(0).standard_normal(50_000) * 100).astype(np.float32)
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    normal = np.abs(x) > 1e-4  # fp16 subnormals round on an absolute grid the emulation does not model
    for dtype in ("fp16", "bf16"):
        plan = precision.Plan(dtype, {0: precision.Slots((0,), (0,))})
        emu = precision.rewrite(m, plan, emulate=True)
        y = ort.InferenceSession(emu.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        want = precision.round_to(np.maximum(x, 0), dtype)
        np.testing.assert_array_equal(y[normal], want[normal])
        assert not np.array_equal(want, np.maximum(x, 0))


def test_speed_note() -> None:
    assert precision.speed_note("fp16", ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    for dtype in ("fp16", "bf16"):
        assert "latency here is not what a GPU would show" in precision.speed_note(dtype, ["CPUExecutionProvider"])

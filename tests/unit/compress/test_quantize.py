"""The `quantize` stage: which nodes get int8, how graphs are labelled, where files land, and
that every calibration method keeps the trained example close to fp32."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from imgcompress.compress import quantize as q
from imgcompress.compress.quantize import auto_fp32_nodes, node_macs, quantized_op_counts
from imgcompress.data import Inputs
from imgcompress.errors import RecipeError
from imgcompress.recipe import Budget, Quantize
from imgcompress.validate import metrics

ALL_INT8 = {"keep_ends_fp32": False, "min_mac_share": 0.0}  # no generator-aware fp32 defaults


def _convs(graph: onnx.ModelProto, op: str = "Conv") -> list[str]:
    return [n.name for n in graph.graph.node if n.op_type == op]


def _eval_psnr_vs_fp32(model: Any, path: Path, run_graph: Callable[..., torch.Tensor]) -> list[float]:
    """PSNR of the graph at ``path`` vs the fp32 graph, per held-out evaluation image."""
    out = []
    for s in model.inputs.evaluation:
        ref = metrics.normalise(run_graph(model.onnx_path, s.input), model.generator.spec.output_range)
        got = metrics.normalise(run_graph(path, s.input), model.generator.spec.output_range)
        out.append(metrics.psnr(got, ref))
    return out


def _activation_scales(graph: onnx.ModelProto) -> dict[str, float]:
    """The scale of every activation the graph quantizes (QuantizeLinear input -> scale)."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in graph.graph.node if n.op_type == "QuantizeLinear"}


def _weight_scales(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The scales of the Conv weights' DequantizeLinear nodes (biases follow the activation scale)."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    weights = {n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    return {n.input[0]: inits[n.input[1]] for n in graph.graph.node
            if n.op_type == "DequantizeLinear" and n.output[0] in weights}


# --- labelling: quantized_op_counts and _precision -----------------------------------------


@pytest.mark.parametrize(("arch", "options", "precision"), [
    ("espcn", {}, "int8+fp32"),  # first and last Conv kept fp32
    ("espcn", ALL_INT8, "int8"),
    ("fsrcnn", ALL_INT8, "int8+fp32"),  # its ConvTranspose is not in the auto op types
    ("fsrcnn", {**ALL_INT8, "op_types": ["Conv", "ConvTranspose"]}, "int8"),
    ("dcgan", {}, "fp32"),  # ConvTranspose only: nothing to quantize
])
def test_precision_label_matches_the_quantized_graph(arch: str, options: dict[str, Any], precision: str,
                                                     small: Callable[[str], Any], tmp_path: Path,
                                                     int8_inputs: Callable[..., tuple[bool, bool]]) -> None:
    m = small(arch)
    res = q.run(m.generator, m.ctx(), Quantize(**options), out=tmp_path / "q.onnx")
    graph = onnx.load(str(res.onnx_path))
    counts = quantized_op_counts(graph)
    assert res.precision == precision == q._precision(counts)
    assert res.info["ops"] == counts
    for op in ("Conv", "ConvTranspose"):
        names = _convs(graph, op)
        if names:
            assert counts[op]["nodes"] == len(names)
            assert counts[op]["int8"] == sum(int8_inputs(graph, n)[1] for n in names), op
    assert "QuantizeLinear" not in counts and "DequantizeLinear" not in counts


def test_an_fp32_graph_counts_no_int8_node(small: Callable[[str], Any]) -> None:
    graph = small("espcn").graph
    counts = quantized_op_counts(graph)
    assert counts["Conv"] == {"nodes": 4, "int8": 0}
    assert all(c["int8"] == 0 for c in counts.values())
    assert q._precision(counts) == "fp32"


@pytest.mark.parametrize(("counts", "label"), [
    ({}, "fp32"),
    ({"Conv": {"nodes": 3, "int8": 0}, "Relu": {"nodes": 3, "int8": 0}}, "fp32"),
    ({"Conv": {"nodes": 3, "int8": 3}, "Relu": {"nodes": 3, "int8": 0}}, "int8"),  # fp32 non-compute ops are fine
    ({"Conv": {"nodes": 3, "int8": 2}, "Relu": {"nodes": 3, "int8": 2}}, "int8+fp32"),
    ({"Conv": {"nodes": 2, "int8": 2}, "ConvTranspose": {"nodes": 1, "int8": 0}}, "int8+fp32"),
])
def test_precision_labels(counts: dict[str, dict[str, int]], label: str) -> None:
    assert q._precision(counts) == label


# --- MACs and the generator-aware fp32 defaults -------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3, 10, 12), (2, 3, 7, 5)])
def test_node_macs_of_convs_are_h_w_cout_cin_k_k(shape: tuple[int, ...], small: Callable[[str], Any]) -> None:
    m = small("espcn")
    kw = m.generator.kwargs
    n, c, h, w = shape
    f, r = kw["features"], kw["scale"]
    hand = {
        "/head/Conv": h * w * f * c * 5 * 5,
        "/body/body.0/Conv": h * w * f * f * 3 * 3,
        "/body/body.2/Conv": h * w * f * f * 3 * 3,
        "/tail/Conv": h * w * (c * r * r) * f * 3 * 3,
    }
    assert node_macs(m.graph, shape) == {k: n * v for k, v in hand.items()}


def test_node_macs_of_conv_transposes_are_cin_h_w_cout_k_k(small: Callable[[str], Any]) -> None:
    m = small("dcgan")
    kw = m.generator.kwargs
    widths = [kw["ngf"] * 2 ** (kw["num_layers"] - 2 - i) for i in range(kw["num_layers"] - 1)]
    c_in, c_out = [kw["nz"], *widths], [*widths, kw["nc"]]
    sides = [1] + [4 * 2 ** i for i in range(kw["num_layers"] - 1)]
    names = _convs(m.graph, "ConvTranspose")
    hand = {name: ci * s * s * co * 4 * 4 for name, ci, co, s in zip(names, c_in, c_out, sides)}
    assert node_macs(m.graph, (1, kw["nz"], 1, 1)) == hand


def test_auto_fp32_nodes_keep_the_ends_and_the_tiny_layers(small: Callable[[str], Any], tmp_path: Path,
                                                            int8_inputs: Callable[..., tuple[bool, bool]]) -> None:
    m = small("imdn")
    graph, shape = m.graph, m.input_shape
    convs = _convs(graph)
    macs = node_macs(graph, shape)
    assert set(macs) == set(convs)
    total = sum(macs.values())
    tiny = {n for n, v in macs.items() if v / total < 0.002}
    assert tiny and all("/cca/" in n for n in tiny)  # channel attention on pooled 1x1 maps

    keep = auto_fp32_nodes(graph, shape, ends=True, min_share=0.002)
    assert set(keep) == {convs[0], convs[-1]} | tiny
    assert keep[convs[0]] == "first layer" and keep[convs[-1]] == "last layer"
    assert all(keep[n].endswith("% of MACs") for n in tiny)

    assert set(auto_fp32_nodes(graph, shape, ends=False, min_share=0.002)) == tiny
    assert set(auto_fp32_nodes(graph, shape, ends=True, min_share=0.0)) == {convs[0], convs[-1]}
    assert auto_fp32_nodes(graph, shape, ends=False, min_share=0.0) == {}

    # and the stage keeps exactly those in fp32
    res = q.run(m.generator, m.ctx(), Quantize(), out=tmp_path / "q.onnx")
    out = onnx.load(str(res.onnx_path))
    assert res.info["kept_fp32_by_default"] == keep
    for n in convs:
        assert int8_inputs(out, n)[1] is (n not in keep), n


def test_auto_fp32_nodes_min_share_is_a_share_of_all_macs(small: Callable[[str], Any]) -> None:
    m = small("espcn")
    macs = node_macs(m.graph, m.input_shape)
    total = sum(macs.values())
    levels = sorted({v / total for v in macs.values()})
    cut = (levels[0] + levels[1]) / 2
    lowest = {n for n, v in macs.items() if v / total == levels[0]}
    assert 0 < len(lowest) < len(macs)
    assert set(auto_fp32_nodes(m.graph, m.input_shape, ends=False, min_share=cut)) == lowest
    assert set(auto_fp32_nodes(m.graph, m.input_shape, ends=False, min_share=levels[0])) == set()  # strictly below


# --- run() without a budget -----------------------------------------------------------------


def test_run_quantizes_every_eligible_conv_but_the_kept_ones(trained: Any, tmp_path: Path,
                                                              int8_inputs: Callable[..., tuple[bool, bool]]) -> None:
    out = tmp_path / "deep" / "er" / "q.onnx"
    res = q.run(trained.generator, trained.ctx(), Quantize(), out=out)
    assert res.onnx_path == out and out.is_file()
    assert res.generator is trained.generator
    convs = _convs(trained.graph)
    kept = {convs[0]: "first layer", convs[-1]: "last layer"}
    assert res.info["kept_fp32_by_default"] == kept
    assert sorted(res.info["excluded_nodes"]) == sorted(kept)
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    for n in convs:
        assert int8_inputs(graph, n) == ((False, False) if n in kept else (True, True)), n
    assert res.precision == "int8+fp32"
    assert res.info["calibration"] == "percentile" and res.info["calibration_samples"] == len(trained.inputs.calibration)


def test_exclude_globs_keep_matching_nodes_fp32(small: Callable[[str], Any], tmp_path: Path,
                                                 int8_inputs: Callable[..., tuple[bool, bool]]) -> None:
    m = small("espcn")
    res = q.run(m.generator, m.ctx(), Quantize(exclude=["/body/*"], **ALL_INT8), out=tmp_path / "q.onnx")
    graph = onnx.load(str(res.onnx_path))
    body = ["/body/body.0/Conv", "/body/body.2/Conv"]
    assert set(body) <= set(res.info["excluded_nodes"])
    for n in _convs(graph):
        assert int8_inputs(graph, n)[1] is (n not in body), n
    assert res.precision == "int8+fp32"


def test_an_exclude_glob_that_matches_nothing_is_an_error_naming_it(small: Callable[[str], Any],
                                                                     tmp_path: Path) -> None:
    m = small("espcn")
    out = tmp_path / "q.onnx"
    with pytest.raises(RecipeError, match=r"quantize\.exclude: '/nothing/\*' match no node") as info:
        q.run(m.generator, m.ctx(), Quantize(exclude=["/body/*", "/nothing/*"]), out=out)
    assert "'/body/*'" not in str(info.value)  # only the pattern that matched nothing is named
    assert "/head/Conv" in str(info.value)  # and it shows what node names look like
    assert not out.exists()


def test_op_types_are_honoured(small: Callable[[str], Any], tmp_path: Path,
                               int8_inputs: Callable[..., tuple[bool, bool]]) -> None:
    m = small("fsrcnn")
    (ct,) = _convs(m.graph, "ConvTranspose")
    convs = _convs(m.graph)

    auto = q.run(m.generator, m.ctx(), Quantize(**ALL_INT8), out=tmp_path / "auto.onnx")
    g = onnx.load(str(auto.onnx_path))
    assert auto.info["op_types"] == ["Conv", "Gemm", "MatMul"]
    assert not int8_inputs(g, ct)[1] and all(int8_inputs(g, n)[1] for n in convs)

    only_ct = q.run(m.generator, m.ctx(), Quantize(op_types=["ConvTranspose"], **ALL_INT8), out=tmp_path / "ct.onnx")
    g = onnx.load(str(only_ct.onnx_path))
    assert int8_inputs(g, ct)[1] and not any(int8_inputs(g, n)[1] for n in convs)

    e = small("espcn")
    none = q.run(e.generator, e.ctx(), Quantize(op_types=["MatMul"]), out=tmp_path / "none.onnx")
    assert "skipped" in none.info and none.precision == "fp32"
    assert (tmp_path / "none.onnx").read_bytes() == e.onnx_path.read_bytes()


# --- files: nothing left behind, relative paths ------------------------------------------


@pytest.mark.parametrize("budget", [None, Budget(min_psnr_db=200.0)], ids=["plain", "budget"])
def test_no_temp_files_in_the_cwd_or_beside_out(budget: Budget | None, small: Callable[[str], Any],
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = small("espcn")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    filters = list(logging.getLogger().filters)
    out = tmp_path / "out" / "q.onnx"
    res = q.run(m.generator, m.ctx(), Quantize(budget=budget), out=out)
    assert res.onnx_path == out
    assert os.listdir(cwd) == []
    assert os.listdir(out.parent) == ["q.onnx"]
    assert Path.cwd() == cwd
    assert logging.getLogger().filters == filters


def test_a_failed_quantization_leaves_nothing_and_restores_the_cwd(small: Callable[[str], Any], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    m = small("espcn")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    filters = list(logging.getLogger().filters)
    wrong = Inputs("sr", [torch.rand(1, 5, 16, 16) for _ in range(2)], [])  # 5 channels for a 3-channel model
    ctx = m.ctx()
    ctx.inputs = wrong
    out = tmp_path / "out" / "q.onnx"
    with pytest.raises(Exception, match=r"invalid dimensions"):  # onnxruntime's own error type
        q.run(m.generator, ctx, Quantize(), out=out)
    assert Path.cwd() == cwd and os.listdir(cwd) == []
    assert not out.exists() and (not out.parent.exists() or os.listdir(out.parent) == [])
    assert logging.getLogger().filters == filters


@pytest.mark.parametrize("budget", [None, Budget(min_psnr_db=200.0)], ids=["plain", "budget"])
def test_relative_paths(budget: Budget | None, small: Callable[[str], Any], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch, run_graph: Callable[..., torch.Tensor],
                        int8_inputs: Callable[..., tuple[bool, bool]]) -> None:
    m = small("espcn")
    monkeypatch.chdir(tmp_path)
    Path("in").mkdir()
    shutil.copyfile(m.onnx_path, "in/src.onnx")
    res = q.run(m.generator, m.ctx(Path("in/src.onnx")), Quantize(budget=budget), out=Path("out/q.onnx"))
    written = tmp_path / "out" / "q.onnx"
    assert written.is_file() and (tmp_path / res.onnx_path).resolve() == written
    assert sorted(os.listdir(tmp_path)) == ["in", "out"] and os.listdir(tmp_path / "out") == ["q.onnx"]
    x = m.inputs.calibration[0]
    assert run_graph(written, x).shape == (1, 3, 2 * x.shape[2], 2 * x.shape[3])
    if budget is None:
        assert int8_inputs(onnx.load(str(written)), "/body/body.0/Conv") == (True, True)


def test_a_graph_with_nothing_eligible_is_copied_as_fp32(small: Callable[[str], Any], tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    m = small("dcgan")  # ConvTranspose only
    out = tmp_path / "sub" / "q.onnx"
    with caplog.at_level(logging.WARNING, logger="imgcompress.compress.quantize"):
        res = q.run(m.generator, m.ctx(), Quantize(), out=out)
    assert out.read_bytes() == m.onnx_path.read_bytes()
    assert res.onnx_path == out and res.precision == "fp32"
    assert "ConvTranspose" in res.info["skipped"] and "stays fp32" in res.info["skipped"]
    assert res.info["skipped"] in caplog.text
    assert all(c["int8"] == 0 for c in res.info["ops"].values())


def test_nncf_backend_writes_a_runnable_qdq_graph(trained: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  run_graph: Callable[..., torch.Tensor],
                                                  int8_inputs: Callable[..., tuple[bool, bool]]) -> None:
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    try:
        importlib.import_module("nncf")
    except Exception as e:  # nncf fails to import in assorted ways (missing wheels, torch mismatch)
        pytest.skip(f"nncf does not import ({type(e).__name__}: {e}); the nncf backend is not tested")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out" / "q.onnx"
    res = q.run(trained.generator, trained.ctx(), Quantize(backend="nncf"), out=out)
    assert res.info["backend"] == "nncf" and res.info["calibration"] == "nncf-default"
    graph = onnx.load(str(out))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    convs = _convs(graph)
    assert [int8_inputs(graph, n)[1] for n in convs] == [False, True, True, False]  # ends kept fp32
    assert res.precision == "int8+fp32"
    assert min(_eval_psnr_vs_fp32(trained, out, run_graph)) > 25.0
    assert os.listdir(cwd) == [] and os.listdir(out.parent) == ["q.onnx"]


# --- calibration --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_calibration_method_stays_close_to_fp32(method: str, trained: Any, tmp_path: Path,
                                                      run_graph: Callable[..., torch.Tensor]) -> None:
    out = tmp_path / "q.onnx"
    res = q.run(trained.generator, trained.ctx(), Quantize(calibration=method, **ALL_INT8), out=out)
    assert res.precision == "int8" and res.info["calibration"] == method
    psnrs = _eval_psnr_vs_fp32(trained, out, run_graph)
    assert len(psnrs) == 2 and min(psnrs) > 25.0, psnrs


def _scales(trained: Any, tmp_path: Path, method: str) -> onnx.ModelProto:
    out = tmp_path / f"{method}.onnx"
    q.run(trained.generator, trained.ctx(), Quantize(calibration=method, **ALL_INT8), out=out)
    return onnx.load(str(out))


def test_minmax_and_percentile_give_different_activation_scales(trained: Any, tmp_path: Path) -> None:
    mm, pc = _scales(trained, tmp_path, "minmax"), _scales(trained, tmp_path, "percentile")
    a, b = _activation_scales(mm), _activation_scales(pc)
    assert set(a) == set(b) and len(a) >= 4
    assert any(abs(a[t] - b[t]) > 1e-3 * a[t] for t in a), (a, b)
    wa, wb = _weight_scales(mm), _weight_scales(pc)  # weights do not depend on calibration
    assert len(wa) == 4 and set(wa) == set(wb) and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_entropy_calibration_clips_ranges_unlike_minmax(trained: Any, tmp_path: Path) -> None:
    a = _activation_scales(_scales(trained, tmp_path, "minmax"))
    b = _activation_scales(_scales(trained, tmp_path, "entropy"))
    assert set(a) == set(b)
    assert any(b[t] < a[t] * (1 - 1e-3) for t in a), "entropy kept every minmax range"

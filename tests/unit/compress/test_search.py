"""Quality-aware int8: `compose` builds the graph onnxruntime's quantizer would, and the budget
search falls back the fewest, most damaging layers until the budget is met."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from pydantic import ValidationError

from imgcompress.compress import quantize as q
from imgcompress.compress.quantize import AUTO_OP_TYPES, Quantizer, node_macs
from imgcompress.compress.search import compose
from imgcompress.errors import RecipeError
from imgcompress.recipe import Budget, Quantize, parse_recipe

# every Conv a candidate (no fp32 defaults), minmax: the graph the search starts from
BASE: dict[str, Any] = {"calibration": "minmax", "keep_ends_fp32": False, "min_mac_share": 0.0}


def _quantizer(model: Any, op_types: list[str] | None = None, **options: Any) -> Quantizer:
    ops = op_types or list(AUTO_OP_TYPES)
    return Quantizer(model.onnx_path, model.inputs.calibration, Quantize(**{**BASE, **options}), ops)


def _quantized_nodes(qdq: onnx.ModelProto, op_types: tuple[str, ...] | list[str] = AUTO_OP_TYPES) -> list[str]:
    dq = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in qdq.graph.node if n.op_type in op_types and any(i in dq for i in n.input)]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def graphs(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The trained example's fp32 graph and its all-int8 QDQ graph (every Conv quantized)."""
    d = tmp_path_factory.mktemp("search")
    qz = _quantizer(trained)
    qdq = onnx.load(str(qz.quantize(d / "all.onnx")))
    return {"fp32": trained.graph, "qdq": qdq, "quantizer": qz, "dir": d}


def _inputs(model: Any) -> list[torch.Tensor]:
    return [torch.cat(model.inputs.calibration), model.inputs.evaluation[0].input]  # two shapes


# --- compose ----------------------------------------------------------------------------


def test_compose_with_every_quantized_node_is_the_qdq_graph(trained: Any, graphs: dict[str, Any],
                                                            run_graph: Callable[..., torch.Tensor]) -> None:
    fp32, qdq = graphs["fp32"], graphs["qdq"]
    nodes = _quantized_nodes(qdq)
    assert len(nodes) == 4
    composed = compose(fp32, qdq, set(nodes))
    onnx.checker.check_model(composed)
    for x in _inputs(trained):
        assert _max_diff(run_graph(composed, x), run_graph(qdq, x)) == 0.0


def test_compose_with_no_node_is_the_fp32_graph(trained: Any, graphs: dict[str, Any],
                                                run_graph: Callable[..., torch.Tensor]) -> None:
    fp32, qdq = graphs["fp32"], graphs["qdq"]
    composed = compose(fp32, qdq, set())
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in composed.graph.node)
    for x in _inputs(trained):
        assert _max_diff(run_graph(composed, x), run_graph(fp32, x)) == 0.0


def test_compose_with_one_node_is_onnxruntimes_quantization_of_that_node_alone(
        trained: Any, graphs: dict[str, Any], run_graph: Callable[..., torch.Tensor]) -> None:
    fp32, qdq, qz, d = graphs["fp32"], graphs["qdq"], graphs["quantizer"], graphs["dir"]
    nodes = _quantized_nodes(qdq)
    x = torch.cat(trained.inputs.calibration)
    y32 = run_graph(fp32, x)
    for node in nodes:
        alone = qz.quantize(d / "alone.onnx", exclude=[n for n in nodes if n != node])
        assert _quantized_nodes(onnx.load(str(alone))) == [node]
        want = run_graph(alone, x)
        assert _max_diff(want, y32) > 0  # int8 on that node changes the output
        assert _max_diff(run_graph(compose(fp32, qdq, {node}), x), want) == 0.0, node


def test_compose_ignores_names_the_graphs_do_not_have(trained: Any, graphs: dict[str, Any],
                                                            run_graph: Callable[..., torch.Tensor]) -> None:
    fp32, qdq = graphs["fp32"], graphs["qdq"]
    x = trained.inputs.calibration[0]
    got = run_graph(compose(fp32, qdq, {"/no/such/node"}), x)
    assert _max_diff(got, run_graph(fp32, x)) == 0.0


def test_compose_never_mutates_its_inputs(graphs: dict[str, Any]) -> None:
    fp32, qdq = graphs["fp32"], graphs["qdq"]
    before = fp32.SerializeToString(), qdq.SerializeToString()
    nodes = _quantized_nodes(qdq)
    for subset in [set(nodes), set(), {nodes[0]}, set(nodes[1:3])]:
        compose(fp32, qdq, subset)
        assert (fp32.SerializeToString(), qdq.SerializeToString()) == before


def test_compose_rounds_a_graph_output_like_the_quantizer(small: Callable[[str], Any], tmp_path: Path,
                                                          run_graph: Callable[..., torch.Tensor]) -> None:
    m = small("fsrcnn")
    ops = ["Conv", "ConvTranspose"]
    qz = _quantizer(m, ops)
    qdq = onnx.load(str(qz.quantize(tmp_path / "all.onnx")))
    nodes = _quantized_nodes(qdq, ops)
    (last,) = [n for n in nodes if "ConvTranspose" in n]
    x = torch.cat(m.inputs.calibration)
    assert _max_diff(run_graph(compose(m.graph, qdq, set(nodes)), x), run_graph(qdq, x)) == 0.0
    alone = qz.quantize(tmp_path / "alone.onnx", exclude=[n for n in nodes if n != last])
    composed = compose(m.graph, qdq, {last})
    assert _max_diff(run_graph(composed, x), run_graph(alone, x)) == 0.0
    # the same wiring as the quantizer's: the node writes '<output>_QuantizeLinear_Input', Q -> DQ writes the output
    onnx.checker.check_model(composed)
    for g in (composed, onnx.load(str(alone))):
        (y,) = [o.name for o in g.graph.output]
        writer = {o: n for n in g.graph.node for o in n.output}
        assert writer[y].op_type == "DequantizeLinear"
        assert writer[writer[y].input[0]].op_type == "QuantizeLinear"
        assert writer[writer[writer[y].input[0]].input[0]].name == last
        assert writer[y + "_QuantizeLinear_Input"].name == last


# --- the budget search, through the stage ----------------------------------------------------


@pytest.fixture(scope="module")
def all_int8(trained: Any, tmp_path_factory: pytest.TempPathFactory,
             score: Callable[..., tuple[float, float | None]]) -> dict[str, Any]:
    """The stage's all-int8 graph (no budget) and its PSNR/SSIM, scored as the search scores."""
    out = tmp_path_factory.mktemp("int8") / "q.onnx"
    res = q.run(trained.generator, trained.ctx(), Quantize(**BASE), out=out)
    psnr, ssim = score(out, trained, with_ssim=True)
    assert psnr < 60.0  # int8 does change the output: there is something to fall back
    return {"path": out, "psnr": psnr, "ssim": ssim, "info": res.info}


def _search(trained: Any, out: Path, budget: Budget) -> tuple[Any, dict[str, Any]]:
    res = q.run(trained.generator, trained.ctx(), Quantize(**BASE, budget=budget), out=out)
    assert out.is_file() and res.onnx_path == out
    return res, res.info["search"]


def test_a_budget_all_int8_meets_falls_nothing_back(trained: Any, all_int8: dict[str, Any], tmp_path: Path,
                                                    score: Callable[..., tuple[float, float | None]],
                                                    run_graph: Callable[..., torch.Tensor]) -> None:
    budget = all_int8["psnr"] - 1.0
    res, s = _search(trained, tmp_path / "q.onnx", Budget(min_psnr_db=budget))
    assert s["met"] is True and s["fallback"] == [] and s["sensitivity"] == []
    assert s["all_int8"]["psnr_db"] == pytest.approx(all_int8["psnr"], abs=1e-6)
    assert s["result"]["psnr_db"] == pytest.approx(all_int8["psnr"], abs=1e-6)
    assert score(res.onnx_path, trained)[0] == pytest.approx(s["result"]["psnr_db"], abs=1e-6)
    assert res.info["excluded_nodes"] == all_int8["info"]["excluded_nodes"] == []
    assert res.precision == "int8"
    x = trained.inputs.calibration[0]
    assert _max_diff(run_graph(res.onnx_path, x), run_graph(all_int8["path"], x)) == 0.0


def test_a_budget_between_int8_and_fp32_falls_back_a_minimal_prefix(
        trained: Any, graphs: dict[str, Any], all_int8: dict[str, Any], tmp_path: Path,
        score: Callable[..., tuple[float, float | None]],
        int8_inputs: Callable[..., tuple[bool, bool]]) -> None:
    budget = all_int8["psnr"] + 3.0
    fp32_psnr = score(trained.onnx_path, trained)[0]
    assert all_int8["psnr"] < budget < fp32_psnr
    res, s = _search(trained, tmp_path / "q.onnx", Budget(min_psnr_db=budget))

    assert s["met"] is True
    assert s["all_int8"]["psnr_db"] == pytest.approx(all_int8["psnr"], abs=1e-6)
    assert s["result"]["psnr_db"] >= budget
    assert score(res.onnx_path, trained)[0] == pytest.approx(s["result"]["psnr_db"], abs=1e-6)

    fp32, qdq = graphs["fp32"], graphs["qdq"]
    candidates = _quantized_nodes(qdq)
    ranking = [r["node"] for r in s["sensitivity"]]
    assert sorted(ranking) == sorted(candidates)
    macs = node_macs(fp32, trained.input_shape)
    for r in s["sensitivity"]:  # each node's damage alone and MAC share are what they say
        assert r["psnr_db_alone"] == pytest.approx(score(compose(fp32, qdq, {r["node"]}), trained)[0], abs=1e-6)
        assert r["mac_share"] == pytest.approx(macs[r["node"]] / sum(macs.values()))
    # ranked by damage (the MSE a node adds alone) per MAC: cheap layers that hurt most come first
    per_mac = [10 ** (-r["psnr_db_alone"] / 10) / r["mac_share"] for r in s["sensitivity"]]
    assert per_mac == sorted(per_mac, reverse=True)

    fallback = [r["node"] for r in s["fallback"]]
    assert 1 <= len(fallback) < len(candidates)
    assert fallback == ranking[:len(fallback)]
    assert all(r["to"] == "fp32" for r in s["fallback"])
    assert set(fallback) <= set(res.info["excluded_nodes"])
    graph = onnx.load(str(res.onnx_path))
    for n in candidates:
        assert int8_inputs(graph, n)[1] is (n not in fallback), n
    assert res.precision == "int8+fp32"

    # minimal: one fallback fewer does not meet the budget
    one_fewer = set(candidates) - set(fallback[:-1])
    assert score(compose(fp32, qdq, one_fewer), trained)[0] < budget


def test_an_impossible_budget_keeps_the_best_mix_and_says_it_is_not_met(
        trained: Any, all_int8: dict[str, Any], tmp_path: Path,
        score: Callable[..., tuple[float, float | None]]) -> None:
    res, s = _search(trained, tmp_path / "q.onnx", Budget(min_psnr_db=200.0))
    assert s["met"] is False
    assert s["fallback"] and len(s["sensitivity"]) == 4
    best = s["result"]["psnr_db"]
    assert best > all_int8["psnr"]
    assert best >= max(r["psnr_db_alone"] for r in s["sensitivity"])
    assert score(res.onnx_path, trained)[0] == pytest.approx(best, abs=1e-6)


def test_an_ssim_budget_is_met_and_reported(trained: Any, all_int8: dict[str, Any], tmp_path: Path,
                                            score: Callable[..., tuple[float, float | None]]) -> None:
    target = all_int8["ssim"] + (1.0 - all_int8["ssim"]) / 2
    res, s = _search(trained, tmp_path / "q.onnx", Budget(min_ssim=target))
    assert s["budget"] == {"min_psnr_db": None, "min_ssim": target, "against": "original"}
    assert s["all_int8"]["ssim"] == pytest.approx(all_int8["ssim"], abs=1e-6) and s["all_int8"]["ssim"] < target
    assert s["met"] is True and s["fallback"]
    assert s["result"]["ssim"] is not None and s["result"]["ssim"] >= target
    psnr, ssim = score(res.onnx_path, trained, with_ssim=True)
    assert ssim == pytest.approx(s["result"]["ssim"], abs=1e-6)
    assert psnr == pytest.approx(s["result"]["psnr_db"], abs=1e-6)
    assert all(r["ssim_alone"] is not None for r in s["sensitivity"])


def test_a_budget_against_the_input_graph_ignores_the_drift_of_earlier_stages(
        trained: Any, all_int8: dict[str, Any], tmp_path: Path) -> None:
    # the teacher differs from the graph being quantized, as after a prune stage
    teacher = copy.deepcopy(trained.generator)
    with torch.no_grad():
        for p in teacher.module.parameters():
            p.mul_(1.05)
    ctx = dataclasses.replace(trained.ctx(), teacher=teacher)
    budget = all_int8["psnr"] - 1.0
    runs = {}
    for against in ("original", "input"):
        cfg = Quantize(**BASE, budget=Budget(min_psnr_db=budget, against=against))
        runs[against] = q.run(trained.generator, ctx, cfg, out=tmp_path / f"{against}.onnx").info["search"]
    assert runs["original"]["all_int8"]["psnr_db"] < budget - 5 and runs["original"]["met"] is False
    assert runs["input"]["all_int8"]["psnr_db"] == pytest.approx(all_int8["psnr"], abs=0.05)
    assert runs["input"]["met"] is True and runs["input"]["fallback"] == []
    assert runs["input"]["against"] == "this stage's input graph's output"


def test_a_psnr_only_budget_does_not_compute_ssim(trained: Any, all_int8: dict[str, Any], tmp_path: Path) -> None:
    _, s = _search(trained, tmp_path / "q.onnx", Budget(min_psnr_db=all_int8["psnr"] - 1.0))
    assert s["all_int8"]["ssim"] is None and s["result"]["ssim"] is None


# --- the Budget schema ----------------------------------------------------------------------


def test_a_budget_needs_a_threshold() -> None:
    with pytest.raises(RecipeError, match=r"^r\.yaml: stages\.0\.quantize\.budget: a budget needs min_psnr_db "
                                          r"and/or min_ssim \(line 3\)"):
        parse_recipe("stages:\n  - quantize:\n      budget: {}\n", source="r.yaml")
    with pytest.raises(ValidationError, match="a budget needs min_psnr_db and/or min_ssim"):
        Budget()
    assert Budget(min_ssim=0.98).min_psnr_db is None
    rec = parse_recipe("stages:\n  - quantize:\n      budget: {min_psnr_db: 40}\n")
    assert rec.stages[0].budget == Budget(min_psnr_db=40.0)

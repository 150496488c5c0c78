"""`search: nncf`: NNCF's accuracy-aware quantization meets a PSNR budget, scored exactly as the
greedy search scores, and reports the same keys (on the trained example)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from pydantic import ValidationError

from imgcompress.compress import quantize as q
from imgcompress.errors import RecipeError
from imgcompress.recipe import Budget, Quantize, parse_recipe

# as the greedy tests: every Conv a candidate (no fp32 defaults)
NNCF: dict[str, Any] = {"backend": "nncf", "search": "nncf", "keep_ends_fp32": False, "min_mac_share": 0.0}


def _int8_nodes(graph: onnx.ModelProto) -> set[str]:
    dq = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in graph.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dq for i in n.input)}


@pytest.fixture(scope="module")
def nncf_all_int8(trained: Any, tmp_path_factory: pytest.TempPathFactory,
                  score: Callable[..., tuple[float, float | None]]) -> float:
    """PSNR of NNCF's all-int8 graph of the example (no budget), scored as the searches score."""
    out = tmp_path_factory.mktemp("nncf") / "q.onnx"
    q.run(trained.generator, trained.ctx(), Quantize(**{**NNCF, "search": "greedy"}), out=out)
    psnr = score(out, trained)[0]
    assert psnr < 45.0  # int8 costs more than the budgets below: there is something to revert
    return psnr


def _search(trained: Any, out: Path, budget: Budget) -> tuple[Any, dict[str, Any]]:
    res = q.run(trained.generator, trained.ctx(), Quantize(**NNCF, budget=budget), out=out)
    assert out.is_file() and res.onnx_path == out
    return res, res.info["search"]


def test_nncf_meets_a_psnr_budget_and_reports_what_it_reverted(
        trained: Any, nncf_all_int8: float, tmp_path: Path,
        score: Callable[..., tuple[float, float | None]]) -> None:
    budget = 45.0
    res, s = _search(trained, tmp_path / "q.onnx", Budget(min_psnr_db=budget))
    assert s["method"] == "nncf"
    assert s["met"] is True and s["result"]["psnr_db"] >= budget
    # the result is scored as the greedy search scores: the saved graph gives the same number
    assert score(res.onnx_path, trained)[0] == pytest.approx(s["result"]["psnr_db"], abs=1e-6)
    assert s["all_int8"]["psnr_db"] == pytest.approx(nncf_all_int8, abs=1e-6)
    assert s["all_int8"]["psnr_db"] < budget
    # how the budget was put to NNCF: the fp32 graph's own score is the cap, the drop reaches the budget
    n = s["nncf"]
    assert n["drop_type"] == "absolute" and n["fp32_metric"] == pytest.approx(100.0)
    assert n["max_drop"] == pytest.approx(n["fp32_metric"] - budget)
    # fallback: the nodes that were int8 in NNCF's all-int8 graph and are fp32 in the result
    graph = onnx.load(str(res.onnx_path))
    fallback = [r["node"] for r in s["fallback"]]
    assert 1 <= len(fallback) < s["int8_nodes_before"]
    assert not set(fallback) & _int8_nodes(graph)
    assert len(_int8_nodes(graph)) == s["int8_nodes_before"] - len(fallback)
    assert all(r["to"] == "fp32" and r["op"] == "Conv" and 0 < r["mac_share"] < 1 for r in s["fallback"])
    assert set(fallback) <= set(res.info["excluded_nodes"])
    assert res.precision == "int8+fp32"
    assert s["evaluations"] > 3 and s["seconds"] > 0


def test_a_budget_nncf_meets_with_all_int8_reverts_nothing(trained: Any, nncf_all_int8: float,
                                                         tmp_path: Path) -> None:
    res, s = _search(trained, tmp_path / "q.onnx", Budget(min_psnr_db=nncf_all_int8 - 1.0))
    assert s["met"] is True and s["fallback"] == []
    assert s["result"]["psnr_db"] == pytest.approx(s["all_int8"]["psnr_db"], abs=1e-6)
    assert res.precision == "int8"


def test_nncf_and_greedy_report_the_same_keys(trained: Any, tmp_path: Path) -> None:
    budget = Budget(min_psnr_db=45.0)
    _, nncf = _search(trained, tmp_path / "nncf.onnx", budget)
    greedy = q.run(trained.generator, trained.ctx(),
                   Quantize(calibration="minmax", keep_ends_fp32=False, min_mac_share=0.0, budget=budget),
                   out=tmp_path / "greedy.onnx").info["search"]
    assert greedy["method"] == "greedy"
    # everything but the greedy's per-layer sensitivity table, plus how the budget was put to NNCF
    assert set(greedy) - {"sensitivity"} == set(nncf) - {"nncf"}
    for key in ("budget", "search_inputs", "against"):
        assert nncf[key] == greedy[key]
    for s in (nncf, greedy):
        assert s["met"] is True and s["result"]["psnr_db"] >= 45.0 and s["result"]["ssim"] is None
        assert {"node", "op", "mac_share", "to"} == set(s["fallback"][0])


def test_a_budget_against_the_input_graph(trained: Any, tmp_path: Path) -> None:
    _, s = _search(trained, tmp_path / "q.onnx", Budget(min_psnr_db=45.0, against="input"))
    assert s["against"] == "this stage's input graph's output"
    assert s["nncf"]["fp32_metric"] == 100.0  # the graph against its own output: the PSNR cap
    assert s["met"] is True and s["result"]["psnr_db"] >= 45.0


def test_nncf_prints_nothing(trained: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _search(trained, tmp_path / "q.onnx", Budget(min_psnr_db=45.0))
    captured = capfd.readouterr()
    assert captured.out == "" and "nncf" not in captured.err.lower()


# --- the schema ------------------------------------------------------------------------------


def test_an_ssim_budget_with_nncf_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"^r\.yaml: stages\.0\.quantize: search: nncf meets a PSNR budget only "
                                          r".*use search: greedy for an SSIM budget \(line 2\)"):
        parse_recipe("stages:\n  - quantize:\n      backend: nncf\n      search: nncf\n"
                     "      budget: {min_psnr_db: 40, min_ssim: 0.99}\n", source="r.yaml")
    with pytest.raises(ValidationError, match="PSNR budget only"):
        Quantize(backend="nncf", search="nncf", budget=Budget(min_ssim=0.99))
    assert Quantize(search="greedy", budget=Budget(min_ssim=0.99)).budget is not None


def test_nncf_search_needs_the_nncf_backend() -> None:
    with pytest.raises(RecipeError, match=r"stages\.0\.quantize: search: nncf quantizes with NNCF .*set backend: nncf"):
        parse_recipe("stages:\n  - quantize:\n      search: nncf\n      budget: {min_psnr_db: 40}\n")
    rec = parse_recipe("stages:\n  - quantize:\n      backend: nncf\n      search: nncf\n"
                       "      budget: {min_psnr_db: 40}\n")
    assert rec.stages[0].search == "nncf" and rec.stages[0].budget == Budget(min_psnr_db=40.0)

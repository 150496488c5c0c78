"""report.html: a pure rendering of the report and the kept sample outputs."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from imgcompress.recipe import GateConfig
from imgcompress.validate.gate import check_gate
from imgcompress.validate.html import GAINS, MAX_SIDE, auto_gain, to_html
from imgcompress.validate.measure import SampleOutputs
from imgcompress.validate.report import SCHEMA, summary_rows


def _artifact(name: str, precision: str, *, psnr: float, speedup: float | None) -> dict[str, Any]:
    latency = None if speedup is None else 8.0 / speedup
    return {
        "name": name, "file": f"stages/{name}.onnx", "precision": precision, "params": 57_000, "macs": 2_300_000_000,
        "size_bytes": 61_440, "latency_ms": latency, "latency_p90_ms": None if latency is None else latency * 1.2,
        "speedup_vs_ort_fp32": speedup, "speedup_vs_torch_fp32": None if speedup is None else speedup * 1.5,
        "psnr_db": psnr, "ssim": 0.99, "gt_psnr_db": 30.0, "gt_ssim": 0.88,
    }


def _report(*, gate: GateConfig | None = None, stages: list[dict[str, Any]] | None = None,
            artifacts: list[dict[str, Any]] | None = None, ckpt: str = "/ckpts/espcn_x3.safetensors") -> dict[str, Any]:
    arts = artifacts or [_artifact("0-prune", "fp32", psnr=31.5, speedup=1.8),
                         _artifact("1-quantize", "int8", psnr=29.25, speedup=3.2)]
    r: dict[str, Any] = {
        "schema": SCHEMA, "imgcompress_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00", "passed": False,
        "recipe": {"path": "recipes/x.yaml", "name": "x", "sha256": "0" * 64, "stages": []},
        "checkpoint": {"path": ckpt, "arch": "espcn", "kwargs": {}, "spec": {"task": "sr"}},
        "data": {"task": "sr", "calibration": "8 crops", "evaluation": "3 images"},
        "environment": {"python": "3.11", "torch": "2", "onnxruntime": "1", "machine": "x86_64"},
        "export": {"opset": 17, "max_abs_error": 1e-7, "tolerance": 1e-3, "checked_shapes": []},
        "speed": {"input_shape": [1, 3, 64, 64], "threads": 2, "warmup": 1, "repeats": 3, "interleaved": True},
        "original": {"params": 57_000, "macs": 2_300_000_000, "size_bytes": 230_000, "torch_latency_ms": 12.0,
                     "torch_latency_p90_ms": 13.0, "ort_latency_ms": 8.0, "ort_latency_p90_ms": 9.0,
                     "gt_psnr_db": 30.5, "gt_ssim": 0.9, "ort_psnr_db": 100.0, "ort_ssim": 1.0,
                     "ort_gt_psnr_db": 30.5, "ort_gt_ssim": 0.9},
        "stages": stages or [],
        "artifacts": arts,
        "final": arts[-1]["name"],
        "files": {},
        "seconds": 3.0,
    }
    verdict = check_gate(r, gate or GateConfig())
    r["gate"], r["passed"] = verdict, verdict["passed"]
    return r


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def _sample(name: str, h: int, w: int, *, diff: float = 0.01, target: bool = True,
            final: str = "1-quantize") -> SampleOutputs:
    g = torch.Generator().manual_seed(0)
    orig = torch.rand((1, 3, h, w), generator=g) * 0.8 + 0.1
    out = orig + diff
    return SampleOutputs(name, orig, {"0-prune": orig + 0.1, final: out}, orig.clone() if target else None)


def _png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


# --- escaping and self-containment -----------------------------------------------------------------


def test_all_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>&'
    stages = [{"index": 0, "stage": "prune", "artifact": "0-prune", "seconds": 1.0,
               "info": {"protected": [{"layer": "tail<", "reason": evil}]}}]
    arts = [_artifact("0-prune", "fp32", psnr=31.5, speedup=1.8), _artifact('1-q"<b>', "int8", psnr=30.0, speedup=2.0)]
    r = _report(stages=stages, artifacts=arts, ckpt=f"/x/{evil}.pth")
    page = to_html(r, [_sample(evil, 8, 8, final='1-q"<b>')])
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    assert "1-q&quot;&lt;b&gt;" in page and "tail&lt;" in page
    # and the page still parses into the text that was given
    assert evil in "".join(_Tags(page).text)


def test_page_is_self_contained() -> None:
    page = to_html(_report(), [_sample("a.png", 16, 16)])
    tags = _Tags(page)
    assert not tags.all("script") and not tags.all("link") and not tags.all("iframe")
    assert all((a["src"] or "").startswith("data:image/png;base64,") for a in tags.all("img"))
    # the only URL is the SVG namespace, which is never fetched
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "<style>" in page and page.startswith("<!DOCTYPE html>")


def test_header_has_verdict_and_gate_checks() -> None:
    r = _report(gate=GateConfig(min_psnr=30, min_speedup=2.0))
    page = to_html(r)
    assert "FAILED" in page and 'class="verdict fail"' in page
    for c in r["gate"]["checks"]:
        assert f"<code>{c['name']}</code>: {c['detail'].replace('>', '&gt;')}" in page
    assert "✘ FAIL" in page and "✔ pass" in page
    assert "PASSED" in to_html(_report(gate=GateConfig(min_psnr=20)))


def test_summary_has_the_same_figures_as_report_md() -> None:
    r = _report()
    tables = re.findall(r"<table>.*?</table>", to_html(r), flags=re.S)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", tables[0])
    assert cells == [c for row in summary_rows(r) for c in row]


# --- image grid -------------------------------------------------------------------------------------


def test_grid_has_four_images_per_sample_with_ground_truth() -> None:
    samples = [_sample(f"s{i}.png", 20, 24, diff=0.012) for i in range(3)]  # × 100 would saturate: × 50
    tags = _Tags(to_html(_report(), samples))
    imgs = tags.all("img")
    assert len(imgs) == 12
    assert [a["alt"] for a in imgs[:4]] == ["original (torch fp32)", "1-quantize (int8)", "|difference| × 50",
                                            "ground truth"]
    # the original's pixels as given (no scaling at this size)
    im = _png(imgs[0]["src"] or "")
    assert im.size == (24, 20)
    px = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255
    assert torch.allclose(px, samples[0].original[0], atol=1 / 255)


def test_grid_without_ground_truth_has_three_columns() -> None:
    imgs = _Tags(to_html(_report(), [_sample("a.png", 8, 8, target=False)] * 2)).all("img")
    assert len(imgs) == 6 and "ground truth" not in [a["alt"] for a in imgs]


def test_large_images_are_downscaled_and_the_caption_says_so() -> None:
    page = to_html(_report(), [_sample("big.png", 300, 600)])
    imgs = _Tags(page).all("img")
    assert {_png(a["src"] or "").size for a in imgs} == {(MAX_SIDE, MAX_SIDE // 2)}
    assert f"downscaled to {MAX_SIDE} px" in page and "600×300, shown at 256×128" in page


def test_error_map_gain_is_stated_and_can_be_given() -> None:
    page = to_html(_report(), [_sample("a.png", 8, 8, diff=0.01)], gain=10)
    assert "× 10 (the gain given)" in page and "|difference| × 10" in page
    # no error: black; a uniform error × gain = 1 saturates to the map's top colour
    zero = _Tags(to_html(_report(), [_sample("a.png", 8, 8, diff=0.0)], gain=10)).all("img")[2]
    assert _png(zero["src"] or "").getextrema() == ((0, 0), (0, 0), (4, 4))
    full = _Tags(to_html(_report(), [_sample("a.png", 8, 8, diff=0.1)], gain=10)).all("img")[2]
    assert _png(full["src"] or "").getextrema() == ((252, 252), (255, 255), (164, 164))


def test_auto_gain_is_the_largest_that_does_not_saturate() -> None:
    assert auto_gain([torch.full((4, 4), 0.004)]) == 100
    assert auto_gain([torch.full((4, 4), 0.03)]) == 20
    assert auto_gain([torch.full((4, 4), 0.3)]) == 2
    assert auto_gain([torch.zeros(4, 4)]) == max(GAINS) and auto_gain([]) == min(GAINS)


def test_per_image_psnr_is_in_the_caption() -> None:
    page = to_html(_report(), [_sample("a.png", 8, 8, diff=0.01)])
    assert "PSNR vs original on this image: 40.00 dB" in page


def test_no_samples_says_so() -> None:
    page = to_html(_report(), [])
    assert not _Tags(page).all("img") and "No evaluation outputs were kept" in page


# --- speed vs quality plot --------------------------------------------------------------------------


def _points(page: str) -> tuple[dict[str, str | None], dict[str, str | None], list[dict[str, str | None]]]:
    tags = _Tags(page)
    (svg,) = tags.all("svg")
    rect = tags.all("rect")[0]
    return svg, rect, tags.all("circle")


def test_plot_has_one_point_per_artifact_at_its_coordinates() -> None:
    r = _report(gate=GateConfig(min_psnr=30))
    svg, rect, circles = _points(to_html(r))
    assert [c["data-name"] for c in circles] == ["original (ORT fp32)", "0-prune", "1-quantize"]
    expected = [(1.0, 100.0), (1.8, 31.5), (3.2, 29.25)]
    assert [(float(c["data-speedup"] or 0), float(c["data-psnr"] or 0)) for c in circles] == expected
    x0, y0, w, h = (float(rect[k] or 0) for k in ("x", "y", "width", "height"))
    x_max, y_min, y_max = (float(svg[k] or 0) for k in ("data-x-max", "data-y-min", "data-y-max"))
    assert x_max >= 3.2 and y_min <= 29.25 and y_max == 100.0  # the axis ends at the PSNR cap
    for c, (sx, sy) in zip(circles, expected):
        assert float(c["cx"] or 0) == pytest.approx(x0 + w * sx / x_max, abs=0.01)
        assert float(c["cy"] or 0) == pytest.approx(y0 + h * (y_max - sy) / (y_max - y_min), abs=0.01)
    assert "gate min_psnr 30 dB" in to_html(r)


def test_null_speedup_artifact_is_listed_as_not_plotted() -> None:
    bf16 = _artifact("1-precision", "bf16+fp32", psnr=45.0, speedup=None)
    bf16["speed_note"] = "onnxruntime here cannot run bf16 Conv"
    page = to_html(_report(artifacts=[_artifact("0-quantize", "int8", psnr=41.0, speedup=2.0), bf16]))
    _, _, circles = _points(page)
    assert [c["data-name"] for c in circles] == ["original (ORT fp32)", "0-quantize"]
    listed = re.search(r'<ul class="note not-plotted">(.*?)</ul>', page, flags=re.S)
    assert listed and "<code>1-precision</code> (bf16+fp32): onnxruntime here cannot run bf16 Conv" in listed.group(1)


# --- stages -----------------------------------------------------------------------------------------


def test_sensitivity_and_fallback_tables_appear_for_a_budget_search() -> None:
    rows = [{"node": "/body/conv2", "op": "Conv", "mac_share": 0.4, "psnr_db_alone": 41.5, "ssim_alone": None},
            {"node": "/body/conv1", "op": "Conv", "mac_share": 0.35, "psnr_db_alone": 48.0, "ssim_alone": None}]
    search = {"budget": {"min_psnr_db": 46.0, "min_ssim": None, "against": "original"}, "against": "the original's output",
              "search_inputs": "8 calibration inputs", "all_int8": {"psnr_db": 40.0, "ssim": None},
              "sensitivity": rows, "fallback": [{"node": "/body/conv2", "op": "Conv", "mac_share": 0.4, "to": "fp32"}],
              "result": {"psnr_db": 47.0, "ssim": None}, "met": True}
    stages = [{"index": 0, "stage": "quantize", "artifact": "0-quantize", "seconds": 2.0,
               "info": {"backend": "onnxruntime", "search": search}}]
    page = to_html(_report(stages=stages))
    assert "Drift budget search" in page and "PSNR ≥ 46.00 dB" in page and "met" in page
    assert '<tr class="fb"><td class="l">/body/conv2</td><td class="l">Conv</td><td>40.00 %</td><td>41.50</td>' \
           "<td>yes</td></tr>" in page
    assert '<tr><td class="l">/body/conv1</td><td class="l">Conv</td><td>35.00 %</td><td>48.00</td><td></td></tr>' in page
    assert "Fallback to fp32" in page
    # without a search, neither table
    plain = [{**stages[0], "info": {"backend": "onnxruntime"}}]
    assert "Drift budget search" not in to_html(_report(stages=plain))


def test_protected_layers_and_precision_kept_fp32_appear() -> None:
    stages = [
        {"index": 0, "stage": "prune", "artifact": "0-prune", "seconds": 1.0,
         "info": {"params_before": 100, "params_after": 50, "protected": [{"layer": "tail", "reason": "writes the model output"}]}},
        {"index": 1, "stage": "precision", "artifact": "1-quantize", "seconds": 1.0,
         "info": {"dtype": "fp16", "kept_fp32": [{"node": "3:Resize", "op": "Resize", "reason": "not safe in fp16"}],
                  "speed_note": "CPU speed is not what a GPU would show", "counts": {"converted": 5, "kept_fp32": 1}}},
    ]
    page = to_html(_report(stages=stages))
    assert "Protected layers" in page and '<td class="l">tail</td><td class="l">writes the model output</td>' in page
    assert "Kept fp32" in page and '<td class="l">3:Resize</td><td class="l">Resize</td><td class="l">not safe in fp16</td>' in page
    assert "speed: CPU speed is not what a GPU would show" in page


def test_an_nncf_search_shows_its_fallback_without_a_sensitivity_table() -> None:
    search = {"method": "nncf", "budget": {"min_psnr_db": 46.0, "min_ssim": None, "against": "original"},
              "all_int8": {"psnr_db": 40.0, "ssim": None}, "result": {"psnr_db": 46.5, "ssim": None}, "met": True,
              "fallback": [{"node": "/tail/Conv", "op": "Conv", "mac_share": 0.2, "to": "fp32"}]}
    stages = [{"index": 0, "stage": "quantize", "artifact": "0-quantize", "seconds": 2.0,
               "info": {"backend": "nncf", "search": search}}]
    page = to_html(_report(stages=stages))
    assert "Drift budget search (nncf)" in page and "No per-layer sensitivity table" in page
    assert '<td class="l">/tail/Conv</td><td class="l">Conv</td><td>20.00 %</td>' in page

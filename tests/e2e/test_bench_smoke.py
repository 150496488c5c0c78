"""Smoke test of the side-by-side benchmark: `benchmarks/run.py --quick` on the example checkpoint
writes a markdown report with one row of numbers per variant. Timings are not asserted (they
depend on the machine); the run takes ~15 s on 2 cores."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("torch fp32", "ORT fp32", "ORT quantize_static", "NNCF PTQ", "imgcompress int8", "imgcompress budgeted",
            "imgcompress prune_quant")
NUM = r"\d+(?:\.\d+)?"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_bench_quick_example(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--models", "example", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # a foreign cwd: nothing may land there
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = out.read_text(encoding="utf-8")
    assert "benchmarks/run.py --quick --models example" in md  # the command that made it
    assert re.search(r"avx512_vnni (yes|no)", md) and "onnxruntime" in md and "nncf" in md
    assert re.search(rf"\*\*ceiling\*\* \| int8 \*\*{NUM}\*\* \| fp32 \*\*{NUM}\*\*", md)

    section = md.split("## ESPCN ×2 (example)", 1)[1].split("\n## ", 1)[0]
    rows = {c[0]: c for c in map(_cells, section.splitlines()) if len(c) == 13 and c[0] in VARIANTS}
    assert set(rows) == set(VARIANTS), section
    for variant, c in rows.items():
        name, int8_macs, latency, vs_ort, vs_torch, psnr, ssim, gt_psnr, gt_ssim, macs, size, rate, ceiling = c
        assert re.fullmatch(rf"{NUM} / {NUM}", latency), (variant, latency)
        assert re.fullmatch(rf"{NUM}×", vs_ort) and re.fullmatch(rf"{NUM}×", vs_torch), (variant, c)
        assert re.fullmatch(NUM, gt_psnr) and re.fullmatch(NUM, gt_ssim), (variant, c)  # SR: ground truth
        assert re.fullmatch(rf"{NUM} [kMG]", macs), (variant, macs)
        assert re.fullmatch(NUM, rate) and re.fullmatch(rf"{NUM}% of (int8|fp32)", ceiling), (variant, c)
        if variant == "torch fp32":
            assert psnr == "ref."
            continue
        assert re.fullmatch(rf"(≥ )?{NUM}", psnr) and re.fullmatch(NUM, ssim), (variant, c)
        assert re.fullmatch(rf"{NUM} [kMG]?B", size), (variant, size)
        if variant != "ORT fp32":
            assert re.fullmatch(rf"{NUM}% \(\d+/\d+ nodes\)", int8_macs), (variant, int8_macs)
            assert 10.0 < float(psnr.lstrip("≥ ")) < 100.0  # int8 changes the output, but not to noise
    # pruning: fewer MACs than the original's graph, in its own column
    macs = {v: rows[v][9] for v in VARIANTS}
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}
    value = {v: float(m.split()[0]) * scale[m.split()[1]] for v, m in macs.items()}
    assert value["imgcompress prune_quant"] * 2.5 < value["imgcompress int8"] == value["ORT fp32"]
    assert rows["ORT fp32"][1] == "0%"
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.data"))

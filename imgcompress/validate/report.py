"""The report: `report.json` (schema 1) and `report.md` (a table fit for a CI job summary);
`report.html` is rendered by `validate/html.py` from the same rows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError

SCHEMA = 1


class Report:
    """A thin view over the report's JSON document (``.data``)."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    @property
    def passed(self) -> bool:
        return bool(self.data.get("passed"))

    @property
    def checks(self) -> list[dict[str, Any]]:
        return list(self.data.get("gate", {}).get("checks", []))

    @property
    def failures(self) -> list[str]:
        """One line per failed gate check, e.g. ``min_psnr: PSNR vs original (dB) 31.2 >= 40``."""
        return [f"{c['name']}: {c['detail']}" for c in self.checks if not c["passed"]]

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return list(self.data.get("artifacts", []))

    @property
    def final(self) -> dict[str, Any]:
        name = self.data.get("final")
        return next(a for a in self.artifacts if a["name"] == name)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Report":
        p = Path(path)
        if p.is_dir():
            p = p / "report.json"
        if not p.is_file():
            raise UsageError(f"{p}: no such report; run imgcompress apply first (it writes OUT/report.json)")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{p}: not a JSON report ({e.__class__.__name__}); pass the report.json that apply wrote") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or "artifacts" not in data or "original" not in data:
            raise UsageError(f"{p}: not an imgcompress report (schema {SCHEMA}); pass the report.json that apply wrote")
        return cls(data)


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _times(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "–"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suf}{unit}"
    return f"{n:.0f}{unit}"


SUMMARY_COLUMNS = ("model", "precision", "params", "MACs", "size", "latency ms (median / p90)", "speedup vs ORT fp32",
                   "vs torch fp32", "PSNR vs original", "SSIM", "GT PSNR", "GT SSIM")


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """The summary table under `SUMMARY_COLUMNS`, as text cells: the originals in torch and
    onnxruntime, then every artifact (the final one marked). report.md and report.html show these."""
    r = report
    o = r["original"]
    rows = [
        ["original (torch)", "fp32", _human(o["params"]), _human(o["macs"]), "–",
         f"{_fmt(o['torch_latency_ms'])} / {_fmt(o['torch_latency_p90_ms'])}",
         f"{_fmt(o['ort_latency_ms'] / o['torch_latency_ms'])}×", "1.00×", "–", "–", _fmt(o.get("gt_psnr_db")),
         _fmt(o.get("gt_ssim"), ".4f")],
        ["original (ORT)", "fp32", _human(o["params"]), _human(o["macs"]), _human(o["size_bytes"], "B"),
         f"{_fmt(o['ort_latency_ms'])} / {_fmt(o['ort_latency_p90_ms'])}", "1.00×",
         f"{_fmt(o['torch_latency_ms'] / o['ort_latency_ms'])}×", _fmt(o.get("ort_psnr_db")),
         _fmt(o.get("ort_ssim"), ".4f"), _fmt(o.get("ort_gt_psnr_db")), _fmt(o.get("ort_gt_ssim"), ".4f")],
    ]
    for a in r["artifacts"]:
        mark = " (final)" if a["name"] == r["final"] else ""
        rows.append([f"{a['name']}{mark}", a["precision"], _human(a["params"]), _human(a["macs"]),
                     _human(a["size_bytes"], "B"), f"{_fmt(a['latency_ms'])} / {_fmt(a['latency_p90_ms'])}",
                     _times(a["speedup_vs_ort_fp32"]), _times(a["speedup_vs_torch_fp32"]), _fmt(a["psnr_db"]),
                     _fmt(a["ssim"], ".4f"), _fmt(a.get("gt_psnr_db")), _fmt(a.get("gt_ssim"), ".4f")])
    return rows


def group_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]], str] | None:
    """A diffusion UNet's drift per timestep bucket and end to end, one row per artifact (and the
    ORT fp32 original's end-to-end row): (columns, rows, a note on the sampling run); None when the
    report has neither."""
    r = report
    arts = r["artifacts"]
    groups = [g["group"] for g in (arts[0].get("per_group") or [])] if arts else []
    sampling = r["original"].get("sampling")
    if not groups and not sampling:
        return None
    head = ["model", *(f"PSNR {g}" for g in groups)]
    if sampling:
        head += ["end-to-end PSNR", "end-to-end SSIM"]
    rows = []
    if sampling:
        ort = r["original"].get("ort_sampling") or {}
        rows.append(["original (ORT)", *("–" for _ in groups), _fmt(ort.get("psnr_db")), _fmt(ort.get("ssim"), ".4f")])
    for a in arts:
        by = {g["group"]: g for g in a.get("per_group") or []}
        row = [a["name"], *(_fmt(by.get(g, {}).get("psnr_db")) for g in groups)]
        if sampling:
            row += [_fmt(a.get("sampling_psnr_db")), _fmt(a.get("sampling_ssim"), ".4f")]
        rows.append(row)
    note = ""
    if sampling:
        note = (f"End to end: {sampling['steps']}-step {sampling['sampler']} from {sampling['samples']} seeded noise "
                f"sample(s), the original and each artifact alike; compared: {sampling['compared_on']}.")
    return head, rows, note


def to_markdown(report: dict[str, Any]) -> str:
    r = report
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines = [
        f"## imgcompress — {Path(r['checkpoint']['path']).name}: {verdict}",
        "",
        f"Recipe `{r['recipe']['path']}` · arch `{r['checkpoint']['arch']}` · task `{r['data']['task']}` · "
        f"speed input {'×'.join(map(str, r['speed']['input_shape']))}, {r['speed']['threads']} threads, "
        f"median of {r['speed']['repeats']} · quality on {r['data']['evaluation']}",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(r)]
    lines += ["", "PSNR/SSIM vs original: the compressed output against the original model's output "
              "(drift). GT: against ground truth" + (" (Y channel, border cropped by the scale)" if r["data"]["task"] == "sr" else "") + ".", ""]
    for a in r["artifacts"]:
        if a.get("quality_measured_on"):
            lines.append(f"- `{a['name']}`: quality measured on `{a['quality_measured_on']}` (the graph's fp32 "
                         "emulation, rounding every low-precision tensor as a GPU would).")
        if a.get("speed_note"):
            lines.append(f"- `{a['name']}`: {a['speed_note']}.")
    if any(a.get("quality_measured_on") or a.get("speed_note") for a in r["artifacts"]):
        lines.append("")
    table = group_table(r)
    if table is not None:
        head, rows, note = table
        lines += ["### Drift per timestep bucket and end to end", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", note, ""] if note else [""]
    checks = r["gate"]["checks"]
    if checks:
        lines.append(f"### Gate on `{r['gate']['artifact']}`: {verdict}")
        lines.append("")
        for c in checks:
            lines.append(f"- {'✅' if c['passed'] else '❌'} `{c['name']}`: {c['detail']}")
    else:
        lines.append("### Gate: no thresholds set (passes)")
    lines.append("")
    return "\n".join(lines)

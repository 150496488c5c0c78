"""report.html: the report as one self-contained page that opens offline.

Images are embedded as base64 PNG data URIs, the plot is inline SVG, the style is inline CSS;
there is no script and nothing is fetched. `to_html` is a pure function of the report (the
dict written as report.json) and of the sample outputs the measurement kept
(`measure.SampleOutputs`); every piece of text is escaped.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .metrics import PSNR_CAP, psnr
from .report import SUMMARY_COLUMNS, group_table, summary_rows

if TYPE_CHECKING:
    from .measure import SampleOutputs

MAX_SIDE = 256  # the grid's images are downscaled to at most this many pixels on the long side
# the error map shows |final − original| × a gain from this ladder: the largest that leaves 99.9 % of the
# shown pixels unsaturated (stated on the page), unless to_html is given one
GAINS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
# inferno-like anchors for the error map: black (no error) -> purple -> red -> orange -> pale yellow
_CMAP = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;margin:0 auto;
max-width:1180px;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600;font-size:14px;
vertical-align:middle}.pass{background:#1a7f37}.fail{background:#cf222e}
.meta{color:#57606a}code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f6f8fa;padding:1px 4px;
border-radius:4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}th,td{border:1px solid #d0d7de;padding:3px 8px;
text-align:right;vertical-align:top}th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
td.l{text-align:left}tr.final td{font-weight:600}tr.fb td{background:#fff8c5}
ul.checks{list-style:none;padding-left:0}ul.checks li{margin:2px 0}.ok{color:#1a7f37}.bad{color:#cf222e}
.grid{display:grid;gap:6px 10px;align-items:start;margin:8px 0 16px}
figure{margin:0}figure img{display:block;image-rendering:pixelated;max-width:100%;border:1px solid #d0d7de}
figcaption{font-size:12px;color:#57606a}.sample{font-weight:600;margin-top:10px}
.bar{display:inline-block;width:160px;height:10px;vertical-align:middle;border:1px solid #d0d7de;
background:linear-gradient(to right,rgb(0,0,4),rgb(87,16,110),rgb(188,55,84),rgb(249,142,9),rgb(252,255,164))}
svg text{font:12px system-ui,sans-serif}.note{color:#57606a;font-size:13px}
"""


# --- images ------------------------------------------------------------------------------------------


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) in [0, 1] -> H×W (one channel) or H×W×3 uint8."""
    a = x.detach().float().cpu()[0].clamp(0, 1)
    if a.shape[0] >= 3:
        a = a[:3]
    arr = (a.numpy() * 255.0 + 0.5).astype(np.uint8)
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def _target_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(height, width) scaled so the long side is at most ``max_side``."""
    f = min(1.0, max_side / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def _png(arr: np.ndarray, size: tuple[int, int]) -> str:
    """A data URI of ``arr`` as PNG, resized (Lanczos) to ``size`` (height, width)."""
    im = Image.fromarray(arr)
    if (im.height, im.width) != size:
        im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _error_png(a: torch.Tensor, b: torch.Tensor, size: tuple[int, int], gain: float) -> str:
    """|a − b| × gain (max over channels, clipped to 1), max-pooled to ``size`` so a small
    error does not average away, colour-mapped with `_CMAP`."""
    err = ((a.float() - b.float()).abs().amax(dim=1, keepdim=True) * gain).clamp(0, 1)
    if tuple(err.shape[-2:]) != size:
        err = F.adaptive_max_pool2d(err, size)
    e = err[0, 0].cpu().numpy().astype(np.float64)
    pos = np.linspace(0.0, 1.0, len(_CMAP))
    rgb = np.stack([np.interp(e, pos, _CMAP[:, c]) for c in range(3)], axis=-1)
    return _png((rgb + 0.5).astype(np.uint8), size)


# --- text --------------------------------------------------------------------------------------------


def auto_gain(diffs: Sequence[torch.Tensor]) -> float:
    """The largest of `GAINS` for which the 99.9th percentile of ``diffs`` (absolute differences in
    [0, 1]) times the gain stays within 1."""
    if not diffs:
        return GAINS[0]
    flat = np.concatenate([d.detach().float().cpu().reshape(-1).numpy() for d in diffs])
    q = float(np.percentile(flat, 99.9))
    return next((g for g in reversed(GAINS) if q * g <= 1.0), GAINS[0])


def _e(v: Any) -> str:
    return escape(str(v), quote=True)


def _num(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "–"
    return format(v, spec) if isinstance(v, float) else str(v)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, left: Sequence[int] = (0,),
           row_class: Sequence[str] | None = None) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        cls = f' class="{_e(row_class[i])}"' if row_class and row_class[i] else ""
        cells = "".join(f'<td class="l">{_e(c)}</td>' if j in left else f"<td>{_e(c)}</td>" for j, c in enumerate(r))
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


# --- sections ----------------------------------------------------------------------------------------


def _header(r: dict[str, Any]) -> str:
    verdict = "PASSED" if r["passed"] else "FAILED"
    sp = r["speed"]
    parts = [
        f"<h1>imgcompress — {_e(Path(r['checkpoint']['path']).name)} "
        f'<span class="verdict {"pass" if r["passed"] else "fail"}">{verdict}</span></h1>',
        f'<p class="meta">Recipe <code>{_e(r["recipe"]["path"])}</code> · arch <code>{_e(r["checkpoint"]["arch"])}</code>'
        f' · task <code>{_e(r["data"]["task"])}</code> · speed input {_e("×".join(map(str, sp["input_shape"])))}, '
        f'{_e(sp["threads"])} threads, median of {_e(sp["repeats"])} · quality on {_e(r["data"].get("evaluation", "–"))}</p>',
    ]
    gate = r.get("gate") or {}
    checks = gate.get("checks") or []
    if checks:
        parts.append(f"<h2>Gate on <code>{_e(gate.get('artifact', r['final']))}</code>: {verdict}</h2>"
                     '<ul class="checks">')
        for c in checks:
            mark = '<span class="ok">✔ pass</span>' if c["passed"] else '<span class="bad">✘ FAIL</span>'
            parts.append(f"<li>{mark} <code>{_e(c['name'])}</code>: {_e(c['detail'])}</li>")
        parts.append("</ul>")
    else:
        parts.append("<h2>Gate: no thresholds set (passes)</h2>")
    return "\n".join(parts)


def _summary(r: dict[str, Any]) -> str:
    rows = summary_rows(r)
    classes = ["", ""] + ["final" if a["name"] == r["final"] else "" for a in r["artifacts"]]
    parts = ["<h2>Summary</h2>", _table(SUMMARY_COLUMNS, rows, left=(0, 1), row_class=classes),
             '<p class="note">PSNR/SSIM vs original: the compressed output against the original model\'s output '
             "(drift). GT: against ground truth"
             + (" (Y channel, border cropped by the scale)" if r["data"]["task"] == "sr" else "") + ".</p>"]
    notes = []
    for a in r["artifacts"]:
        if a.get("quality_measured_on"):
            notes.append(f"<li><code>{_e(a['name'])}</code>: quality measured on <code>{_e(a['quality_measured_on'])}"
                         "</code> (the graph's fp32 emulation, rounding every low-precision tensor as a GPU would).</li>")
        if a.get("speed_note"):
            notes.append(f"<li><code>{_e(a['name'])}</code>: {_e(a['speed_note'])}.</li>")
    if notes:
        parts.append('<ul class="note">' + "".join(notes) + "</ul>")
    table = group_table(r)
    if table is not None:
        head, grows, note = table
        parts += ["<h2>Drift per timestep bucket and end to end</h2>", _table(head, grows)]
        if note:
            parts.append(f'<p class="note">{_e(note)} The images below are those end-to-end samples.</p>')
    return "\n".join(parts)


def _grid(r: dict[str, Any], samples: Sequence[SampleOutputs], gain: float | None, max_side: int) -> str:
    final = r["final"]
    art = next((a for a in r["artifacts"] if a["name"] == final), {"name": final, "precision": "?"})
    parts = ["<h2>Outputs</h2>"]
    shown = [s for s in samples if final in s.artifacts]
    if not shown:
        parts.append('<p class="note">No evaluation outputs were kept for this report.</p>')
        return "\n".join(parts)
    has_gt = any(s.target is not None for s in shown)
    how = "the gain given"
    if gain is None:
        gain = auto_gain([(s.artifacts[final].float() - s.original.float()).abs().amax(dim=1) for s in shown
                          if s.artifacts[final].shape == s.original.shape])
        how = "the largest of " + "/".join(f"{g:g}" for g in GAINS) + " that leaves 99.9 % of the pixels unsaturated"
    emulated = f" (from its fp32 emulation <code>{_e(art['quality_measured_on'])}</code>)" \
        if art.get("quality_measured_on") else ""
    parts.append(
        f'<p class="note">The first {len(shown)} evaluation input(s), as measured in this run: the original model '
        f"(torch fp32) | the final artifact <code>{_e(final)}</code> ({_e(art['precision'])}){emulated} | "
        f"|final − original| × {gain:g} ({how}), the largest channel, clipped "
        f'(<span class="bar"></span> 0 … ≥ {1 / gain:.2g} of the full range)'
        + (" | ground truth" if has_gt else "")
        + f". Images larger than {max_side} px on the long side are downscaled to {max_side} px "
        "(Lanczos; the error map by the maximum over each block, so an error stays visible).</p>")
    cols = 4 if has_gt else 3
    for s in shown:
        out = s.artifacts[final]
        h, w = s.original.shape[-2:]
        size = _target_size(int(h), int(w), max_side)
        scaled = f", shown at {size[1]}×{size[0]}" if size != (h, w) else ""
        p = psnr(out.clamp(0, 1), s.original.clamp(0, 1)) if out.shape == s.original.shape else None
        parts.append(f'<div class="sample">{_e(s.name)} <span class="note">({w}×{h}{_e(scaled)}; '
                     f"PSNR vs original on this image: {_num(p)} dB)</span></div>")
        parts.append(f'<div class="grid" style="grid-template-columns:repeat({cols},minmax(0,{size[1]}px))">')
        cells = [("original (torch fp32)", _png(_to_uint8(s.original), size)),
                 (f"{final} ({art['precision']})", _png(_to_uint8(out), size))]
        if out.shape == s.original.shape:
            cells.append((f"|difference| × {gain:g}", _error_png(out, s.original, size, gain)))
        else:
            cells.append((f"no error map: shapes differ ({list(out.shape)} vs {list(s.original.shape)})", None))
        if has_gt:
            cells.append(("ground truth", _png(_to_uint8(s.target), size) if s.target is not None else None))
        for cap, uri in cells:
            img = f'<img src="{uri}" width="{size[1]}" height="{size[0]}" alt="{_e(cap)}">' if uri else ""
            parts.append(f"<figure>{img}<figcaption>{_e(cap)}</figcaption></figure>")
        parts.append("</div>")
    return "\n".join(parts)


def _nice_step(span: float, target: int = 6) -> float:
    raw = max(span, 1e-9) / target
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _threshold(r: dict[str, Any], name: str) -> float | None:
    for c in (r.get("gate") or {}).get("checks") or []:
        if c["name"] == name and c.get("threshold") is not None:
            return float(c["threshold"])
    return None


def _plot(r: dict[str, Any]) -> str:
    """Speed vs quality: x speedup vs ORT fp32, y PSNR vs the original (dB); the ORT fp32 original
    at 1× and its own PSNR vs the torch original (the cap when identical)."""
    o = r["original"]
    orig_y = o.get("ort_psnr_db")
    orig_y = PSNR_CAP if orig_y is None else float(orig_y)
    pts = [("original (ORT fp32)", 1.0, orig_y, "orig")]
    skipped = []
    for a in r["artifacts"]:
        if a.get("speedup_vs_ort_fp32") is None or a.get("psnr_db") is None:
            why = a.get("speed_note") or "latency not measured here"
            skipped.append((a["name"], a["precision"], why))
        else:
            pts.append((a["name"], float(a["speedup_vs_ort_fp32"]), float(a["psnr_db"]),
                        "final" if a["name"] == r["final"] else "art"))
    min_psnr, min_speedup = _threshold(r, "min_psnr"), _threshold(r, "min_speedup")
    xs = [p[1] for p in pts] + ([min_speedup] if min_speedup is not None else [])
    ys = [p[2] for p in pts] + ([min_psnr] if min_psnr is not None else [])
    x_step = _nice_step(max(xs) * 1.15)
    x_hi = math.ceil(max(xs) * 1.15 / x_step) * x_step
    y_lo0, y_hi0 = min(ys) - 2.0, max(ys) + 2.0
    y_step = _nice_step(y_hi0 - y_lo0)
    y_lo, y_hi = math.floor(y_lo0 / y_step) * y_step, math.ceil(y_hi0 / y_step) * y_step
    if max(ys) <= PSNR_CAP < y_hi:  # nothing lies above the cap
        y_hi = PSNR_CAP

    W, H, L, R, T, B = 720, 420, 64, 150, 16, 48
    pw, ph = W - L - R, H - T - B

    def sx(v: float) -> float:
        return L + pw * v / x_hi

    def sy(v: float) -> float:
        return T + ph * (y_hi - v) / (y_hi - y_lo)

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
         f'aria-label="speed versus quality" data-x-max="{x_hi:g}" data-y-min="{y_lo:g}" data-y-max="{y_hi:g}">',
         f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="#fff" stroke="#8c959f"/>']
    v = 0.0
    while v <= x_hi + 1e-9:
        s.append(f'<line x1="{sx(v):.1f}" y1="{T}" x2="{sx(v):.1f}" y2="{T + ph}" stroke="#eaeef2"/>'
                 f'<text x="{sx(v):.1f}" y="{T + ph + 16}" text-anchor="middle">{v:g}×</text>')
        v += x_step
    v = y_lo
    while v <= y_hi + 1e-9:
        s.append(f'<line x1="{L}" y1="{sy(v):.1f}" x2="{L + pw}" y2="{sy(v):.1f}" stroke="#eaeef2"/>'
                 f'<text x="{L - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += y_step
    s.append(f'<text x="{L + pw / 2}" y="{H - 8}" text-anchor="middle">speedup vs ORT fp32 (×)</text>'
             f'<text transform="translate(16 {T + ph / 2}) rotate(-90)" text-anchor="middle">PSNR vs original (dB)</text>')
    if min_psnr is not None:
        s.append(f'<line class="gate" x1="{L}" y1="{sy(min_psnr):.1f}" x2="{L + pw}" y2="{sy(min_psnr):.1f}" '
                 f'stroke="#cf222e" stroke-dasharray="5 4"/><text x="{L + pw + 4}" y="{sy(min_psnr) + 4:.1f}" '
                 f'fill="#cf222e">gate min_psnr {min_psnr:g} dB</text>')
    if min_speedup is not None:
        s.append(f'<line class="gate" x1="{sx(min_speedup):.1f}" y1="{T}" x2="{sx(min_speedup):.1f}" y2="{T + ph}" '
                 f'stroke="#cf222e" stroke-dasharray="5 4"/><text x="{sx(min_speedup) + 4:.1f}" y="{T + 12}" '
                 f'fill="#cf222e">gate min_speedup {min_speedup:g}×</text>')
    colour = {"orig": "#6e7781", "art": "#0969da", "final": "#8250df"}
    for name, x, y, kind in pts:
        label = f"{name}: {x:.2f}×, {y:.2f} dB"
        s.append(f'<circle class="point {kind}" cx="{sx(x):.2f}" cy="{sy(y):.2f}" r="6" fill="{colour[kind]}" '
                 f'data-name="{_e(name)}" data-speedup="{x!r}" data-psnr="{y!r}"><title>{_e(label)}</title></circle>'
                 f'<text x="{sx(x) + 9:.1f}" y="{sy(y) - 7:.1f}">{_e(name)}</text>')
    s.append("</svg>")
    parts = ["<h2>Speed vs quality</h2>", "\n".join(s),
             f'<p class="note">One point per artifact (the final one in purple) and the original in onnxruntime '
             f"fp32 at 1× and its PSNR vs the torch original ({orig_y:.2f} dB; {PSNR_CAP:g} dB = identical, "
             "the cap). Dashed: the gate's thresholds.</p>"]
    if skipped:
        parts.append('<p class="note">Not plotted (no speedup measured here):</p><ul class="note not-plotted">'
                     + "".join(f"<li><code>{_e(n)}</code> ({_e(p)}): {_e(why)}</li>" for n, p, why in skipped)
                     + "</ul>")
    return "\n".join(parts)


def _prune(info: dict[str, Any]) -> list[str]:
    out = [f'<p>params {_e(_num(info.get("params_before")))} → {_e(_num(info.get("params_after")))} · MACs '
           f'{_e(_num(info.get("macs_before")))} → {_e(_num(info.get("macs_after")))} '
           f'(÷{_e(_num(info.get("macs_factor")))}) · {len(info.get("pruned_layers") or [])} layer(s) pruned '
           f'in {_e(_num(info.get("steps")))} step(s)</p>']
    protected = info.get("protected") or []
    out.append("<h3>Protected layers</h3>")
    out.append(_table(("layer", "reason"), [(p["layer"], p["reason"]) for p in protected], left=(0, 1))
               if protected else '<p class="note">none</p>')
    for note in info.get("notes") or []:
        out.append(f'<p class="note">note: {_e(note)}</p>')
    if info.get("fallback"):
        out.append(f'<p class="note">fallback: {_e(info["fallback"])}</p>')
    return out


def _quantize(info: dict[str, Any]) -> list[str]:
    out = [f'<p>backend {_e(info.get("backend"))} · calibration {_e(info.get("calibration"))} on '
           f'{_e(info.get("calibration_samples"))} input(s) · per-channel {_e(info.get("per_channel"))}</p>']
    if info.get("skipped"):
        out.append(f'<p class="note">{_e(info["skipped"])}</p>')
    kept = info.get("kept_fp32_by_default") or []
    if kept:
        out.append('<p class="note">kept fp32 by default (first/last layers, negligible MAC share): '
                   + ", ".join(f"<code>{_e(n)}</code>" for n in kept) + "</p>")
    search = info.get("search")
    if search:
        b = search.get("budget") or {}
        res = search.get("result") or {}
        method = search.get("method")
        out.append(f"<h3>Drift budget search{f' ({_e(method)})' if method else ''}</h3><p>budget: PSNR ≥ {_e(_num(b.get('min_psnr_db')))} dB, "
                   f"SSIM ≥ {_e(_num(b.get('min_ssim'), '.4f'))} vs {_e(search.get('against', '–'))}, on "
                   f"{_e(search.get('search_inputs', '–'))} · all int8: "
                   f"{_e(_num((search.get('all_int8') or {}).get('psnr_db')))} dB · result: "
                   f"{_e(_num(res.get('psnr_db')))} dB · "
                   + ('<span class="ok">met</span>' if search.get("met") else '<span class="bad">not met</span>')
                   + "</p>")
        fb = search.get("fallback") or []
        fb_nodes = {f["node"] for f in fb}
        rows = search.get("sensitivity") or []
        if rows:
            out.append('<p class="note">Per-layer sensitivity: each layer quantized alone; ordered by damage per MAC '
                       "share (the order layers fall back to fp32). Highlighted: fell back.</p>")
            out.append(_table(("node", "op", "MAC share", "PSNR alone (dB)", "fp32 fallback"),
                              [(x["node"], x["op"], f"{100 * x['mac_share']:.2f} %", _num(x["psnr_db_alone"]),
                                "yes" if x["node"] in fb_nodes else "") for x in rows],
                              left=(0, 1), row_class=["fb" if x["node"] in fb_nodes else "" for x in rows]))
        elif method and method != "greedy":
            out.append(f'<p class="note">No per-layer sensitivity table: the {_e(method)} search ranks layers itself; '
                       "the fallback list is what it reverted to fp32.</p>")
        out.append("<h3>Fallback to fp32</h3>")
        out.append(_table(("node", "op", "MAC share"), [(f["node"], f["op"], f"{100 * f['mac_share']:.2f} %")
                                                        for f in fb], left=(0, 1))
                   if fb else '<p class="note">none: the budget held with every candidate layer in int8</p>')
    return out


def _precision(info: dict[str, Any]) -> list[str]:
    counts = info.get("counts") or {}
    out = [f'<p>dtype {_e(info.get("dtype"))} · {_e(counts.get("converted", "–"))} node(s) converted, '
           f'{_e(counts.get("kept_fp32", "–"))} kept fp32 · runnable here: {_e(info.get("runnable_here", "–"))}</p>']
    if info.get("speed_note"):
        out.append(f'<p class="note">speed: {_e(info["speed_note"])}</p>')
    if info.get("not_runnable_reason"):
        out.append(f'<p class="note">not runnable here: {_e(info["not_runnable_reason"])}</p>')
    kept = info.get("kept_fp32") or []
    out.append("<h3>Kept fp32</h3>")
    out.append(_table(("node", "op", "reason"), [(k["node"], k["op"], k["reason"]) for k in kept], left=(0, 1, 2))
               if kept else '<p class="note">none</p>')
    return out


def _distill(info: dict[str, Any]) -> list[str]:
    return [f'<p>{_e(info.get("steps_done", "–"))}/{_e(info.get("steps", "–"))} steps'
            + (" (stopped early)" if info.get("stopped_early") else "")
            + f' · PSNR vs teacher on held-out crops {_e(_num(info.get("psnr_vs_teacher_held_out")))} dB · '
            f'{_e(info.get("nproc", "–"))} process(es) on {_e(info.get("device", "–"))}</p>']


def _stages(r: dict[str, Any]) -> str:
    render = {"prune": _prune, "quantize": _quantize, "precision": _precision, "distill": _distill}
    parts = ["<h2>Stages</h2>"]
    for st in r.get("stages") or []:
        parts.append(f"<h3>{_e(st['index'])}: {_e(st['stage'])} → <code>{_e(st['artifact'])}</code> "
                     f'<span class="note">({_e(_num(st.get("seconds")))} s)</span></h3>')
        fn = render.get(st["stage"])
        if fn is not None:
            parts += fn(st.get("info") or {})
    return "\n".join(parts)


def _footer(r: dict[str, Any]) -> str:
    env = r.get("environment") or {}
    exp = r.get("export") or {}
    return (f'<h2>Run</h2><p class="note">imgcompress {_e(r.get("imgcompress_version", "?"))} · {_e(r.get("created", ""))}'
            f' · {_e(r.get("seconds", "–"))} s · python {_e(env.get("python", "?"))}, torch {_e(env.get("torch", "?"))}, '
            f'onnxruntime {_e(env.get("onnxruntime", "?"))} ({_e(env.get("provider_used", "?"))}) on '
            f'{_e(env.get("processor", env.get("machine", "?")))} · ONNX opset {_e(exp.get("opset", "?"))}, export max '
            f'abs error {_e(_num(exp.get("max_abs_error"), ".2e"))} · recipe sha256 '
            f'<code>{_e((r.get("recipe") or {}).get("sha256", "")[:12])}</code> · the figures are report.json\'s.</p>')


def to_html(report: dict[str, Any], samples: Sequence[SampleOutputs] = (), *, gain: float | None = None,
            max_side: int = MAX_SIDE) -> str:
    """report.html: verdict and gate checks, the summary table, an image grid for ``samples``
    (original | final artifact | |difference| × ``gain`` (default: `auto_gain`) | ground truth, at most
    ``max_side`` px),
    a speed-vs-quality plot, and the stages' tables (sensitivity, fallback, protected layers,
    layers kept fp32). Self-contained: no script, no external resource."""
    r = report
    title = f"imgcompress — {Path(r['checkpoint']['path']).name}: {'PASSED' if r['passed'] else 'FAILED'}"
    body = [_header(r), _summary(r), _grid(r, samples, gain, max_side), _plot(r), _stages(r), _footer(r)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")

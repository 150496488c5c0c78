"""The `imgcompress` command. Commands are thin: they parse options and call the library.

Exit codes (mapped here, and only here): 0 passed, 1 gate failed, 2 bad input,
3 internal error (a bug: rerun with IMGCOMPRESS_DEBUG=1 and report the traceback).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar

# Timing alternates torch and onnxruntime on the same cores: torch's OpenMP threads must not
# spin-wait after a run and steal the cores from the next model (onnxruntime's sessions turn
# their own spinning off, see export/runtime.py). Read once when torch loads, so set it here,
# before anything imports torch; a value from the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from .errors import ImgcompressError  # noqa: E402

app = typer.Typer(
    name="imgcompress",
    help="Compress trained image generators with a YAML recipe; measure speed and quality drift; gate on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
# A summary table needs ~110 columns; pipes and CI logs get that width instead of 80.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

EXIT_PASSED, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
F = TypeVar("F", bound=Callable[..., Any])


def _debug() -> bool:
    return os.environ.get("IMGCOMPRESS_DEBUG", "") not in ("", "0")


def _errors(fn: F) -> F:
    """The one place that turns exceptions into messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _logging_restored():
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ImgcompressError as e:
            if _debug():
                err.print_exception()
            err.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing in --out was marked finished")
            raise typer.Exit(130) from None
        except Exception as e:  # a bug, not bad input
            if _debug():
                err.print_exception()
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            err.print(f"[bold red]internal error:[/] {type(e).__name__}: {first} "
                      "(rerun with IMGCOMPRESS_DEBUG=1 for the traceback, and report it)", markup=True, soft_wrap=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


NOISY_LOGGERS = ("nncf", "onnxruntime", "torch", "spandrel")


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """A command configures logging for itself; put the process's logging back when it ends.

    Called in-process (typer's CliRunner, a notebook, a deployment script) the command's
    handler would otherwise outlive the stream it writes to and break every later log call.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        yield
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lvl in noisy.items():
            logging.getLogger(name).setLevel(lvl)


def _setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]  # the ones there before come back when the command ends
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _summary(report: dict[str, Any]) -> Table:
    t = Table(title=f"imgcompress: {Path(report['checkpoint']['path']).name} ({report['checkpoint']['arch']})")
    for col in ("model", "precision", "latency ms", "× ORT fp32", "× torch fp32", "PSNR vs orig", "SSIM", "GT PSNR"):
        t.add_column(col, justify="right" if col != "model" else "left", no_wrap=True)
    o = report["original"]

    def f(v: Any, spec: str = ".2f") -> str:
        return "–" if v is None else format(v, spec)

    t.add_row("original (torch)", "fp32", f(o["torch_latency_ms"]), f(o["ort_latency_ms"] / o["torch_latency_ms"]),
              "1.00", "–", "–", f(o.get("gt_psnr_db")))
    t.add_row("original (ORT)", "fp32", f(o["ort_latency_ms"]), "1.00", f(o["torch_latency_ms"] / o["ort_latency_ms"]),
              f(o.get("ort_psnr_db")), f(o.get("ort_ssim"), ".4f"), f(o.get("ort_gt_psnr_db")))
    for a in report["artifacts"]:
        t.add_row(a["name"], a["precision"], f(a["latency_ms"]), f(a["speedup_vs_ort_fp32"]),
                  f(a["speedup_vs_torch_fp32"]), f(a["psnr_db"]), f(a["ssim"], ".4f"), f(a.get("gt_psnr_db")))
    return t


class _TrainingBar:
    """A rich progress bar for training stages on a terminal; elsewhere a log line now and then."""

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None
        self.last_logged = 0.0

    def __enter__(self) -> "_TrainingBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, d: dict[str, Any]) -> None:
        psnr = "–" if d.get("psnr_db") is None else f"{d['psnr_db']:.2f} dB"
        fields = {"loss": f"{d['loss']:.4g}", "psnr": psnr, "rate": f"{d['steps_per_s']:.2f} steps/s"}
        if not self.enabled:
            now = time.monotonic()
            if now - self.last_logged >= 10 or d["step"] == d["steps"]:
                self.last_logged = now
                logging.getLogger("imgcompress.distill").info(
                    "distill: step %d/%d loss %s, PSNR vs teacher %s, %s", d["step"], d["steps"], fields["loss"],
                    psnr, fields["rate"])
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]} · PSNR vs teacher {task.fields[psnr]} · "
                                           "{task.fields[rate]}"), TimeRemainingColumn(), console=err)
            self.bar.start()
            self.task = self.bar.add_task("distill", total=d["steps"], **fields)
        self.bar.update(self.task, completed=d["step"], **fields)


def _print_gate(report: dict[str, Any]) -> None:
    checks = report["gate"]["checks"]
    if not checks:
        err.print("gate: no thresholds set")
    for c in checks:
        mark = "[green]pass[/]" if c["passed"] else "[bold red]FAIL[/]"
        err.print(f"gate {mark} {c['name']}: {c['detail']}", markup=True)
    err.print("[bold green]PASSED[/]" if report["passed"] else "[bold red]FAILED[/]: quality gate", markup=True)


@app.command()
@_errors
def apply(
    recipe: Path = typer.Argument(..., help="Recipe YAML (e.g. recipes/int8.yaml)."),
    checkpoint: Path = typer.Argument(..., help="Generator checkpoint (.safetensors, .pth, .pt, .ckpt)."),
    out_dir: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder for calibration (overrides data.images)."),
    eval_images: Optional[str] = typer.Option(None, "--eval-images", help="Image folder for evaluation (overrides data.eval_images)."),
    min_psnr: Optional[float] = typer.Option(None, "--min-psnr", help="Gate: min PSNR (dB) vs the original's output."),
    min_ssim: Optional[float] = typer.Option(None, "--min-ssim", help="Gate: min SSIM vs the original's output."),
    max_gt_psnr_drop: Optional[float] = typer.Option(None, "--max-gt-psnr-drop", help="Gate: max drop (dB) of ground-truth PSNR."),
    min_speedup: Optional[float] = typer.Option(None, "--min-speedup", help="Gate: min speedup vs the ORT fp32 original."),
    min_sampling_psnr: Optional[float] = typer.Option(
        None, "--min-sampling-psnr", help="Gate: min PSNR (dB) of a diffusion UNet's end-to-end DDIM samples."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Threads for torch and onnxruntime (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report JSON on stdout; no progress output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the verdict."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes for training stages (distill): DistributedDataParallel when > 1."),
    device: str = typer.Option("auto", "--device", help="Device for training stages: auto (CUDA when present), cpu or cuda."),
    fresh: bool = typer.Option(False, "--fresh", help="Start training stages over instead of resuming from OUT/.resume/."),
) -> None:
    """Apply RECIPE to CHECKPOINT: compress, export ONNX, measure, report, gate."""
    from .pipeline import apply as run_apply

    quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 talks
    _setup_logging(quiet or as_json)
    progress = None if (quiet or as_json) else (lambda msg: err.print(f"[dim]·[/] {msg}", markup=True))
    with _TrainingBar(enabled=progress is not None and err.is_terminal) as bar:
        result = run_apply(
            recipe, checkpoint, out=out_dir, images=images, eval_images=eval_images, threads=threads,
            gate={"min_psnr": min_psnr, "min_ssim": min_ssim, "max_gt_psnr_drop": max_gt_psnr_drop,
                  "min_speedup": min_speedup, "min_sampling_psnr": min_sampling_psnr},
            progress=progress, nproc=nproc, device=device, fresh=fresh,
            train_progress=bar.update if progress is not None else None,
        )
    data = result.report.data
    if "secondary_rank" in data:  # a torchrun rank other than 0: rank 0 prints and writes the report
        raise typer.Exit(EXIT_PASSED)
    if as_json:
        out.print_json(json.dumps(data))
    else:
        if not quiet:
            out.print(_summary(data))
            out.print(f"report: {out_dir / 'report.md'} · {out_dir / 'report.html'} · model: {out_dir / 'model.onnx'}",
                      soft_wrap=True)
        _print_gate(data)
    raise typer.Exit(EXIT_PASSED if result.passed else EXIT_GATE_FAILED)


@app.command()
@_errors
def gate(
    report: Path = typer.Argument(..., help="report.json written by apply (or its folder)."),
    min_psnr: Optional[float] = typer.Option(None, "--min-psnr"),
    min_ssim: Optional[float] = typer.Option(None, "--min-ssim"),
    max_gt_psnr_drop: Optional[float] = typer.Option(None, "--max-gt-psnr-drop"),
    min_speedup: Optional[float] = typer.Option(None, "--min-speedup"),
    min_sampling_psnr: Optional[float] = typer.Option(None, "--min-sampling-psnr"),
    as_json: bool = typer.Option(False, "--json", help="Print the gate verdict as JSON."),
) -> None:
    """Re-check a report against thresholds without rerunning (no flags: the report's own thresholds)."""
    from .validate.gate import check_gate, merge_gate
    from .validate.report import Report

    rep = Report.load(report)
    flags = {"min_psnr": min_psnr, "min_ssim": min_ssim, "max_gt_psnr_drop": max_gt_psnr_drop, "min_speedup": min_speedup,
             "min_sampling_psnr": min_sampling_psnr}
    if any(v is not None for v in flags.values()):
        cfg = merge_gate(**flags)
    else:
        cfg = merge_gate(**{c["name"]: c["threshold"] for c in rep.checks})
    verdict = check_gate(rep.data, cfg)
    data = {**rep.data, "gate": verdict, "passed": verdict["passed"]}
    if as_json:
        out.print_json(json.dumps(verdict))
    else:
        _print_gate(data)
    raise typer.Exit(EXIT_PASSED if verdict["passed"] else EXIT_GATE_FAILED)


@app.command()
@_errors
def inspect(
    checkpoint: Optional[Path] = typer.Argument(None, help="Generator checkpoint to describe."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture, when the file does not say (built-in name or package.module:Class)."),
    size: Optional[int] = typer.Option(None, "--size", min=8, help="Image input side for MACs (default: the model's)."),
    archs: bool = typer.Option(False, "--archs", help="List the built-in architectures and exit."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Describe a checkpoint: architecture, parameters, MACs at a stated input, input/output convention."""
    from .inspect import describe, list_archs

    _setup_logging(True)
    if archs:
        for line in list_archs():
            out.print(line)
        raise typer.Exit(0)
    if checkpoint is None:
        from .errors import UsageError

        raise UsageError("inspect needs a CHECKPOINT (or --archs)")
    info = describe(checkpoint, arch=arch, size=size)
    if as_json:
        out.print_json(json.dumps(info))
        return
    for k, v in info.items():
        out.print(f"{k:>14}: {v}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""Run a recipe on a checkpoint: load -> stages -> export -> validate -> report -> gate.

Everything is built in ``OUT/.partial/`` and moved into ``OUT/`` at the end, report.json
last, so an interrupted run never leaves a report that passes for a finished one, and the
input checkpoint is never written.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .compress import distill as distill_stage
from .compress import precision as precision_stage
from .compress import prune as prune_stage
from .compress import quantize as quantize_stage
from .compress.base import StageContext, StageResult, TrainOptions
from .data import Inputs, make_inputs
from .errors import RecipeError, UsageError
from .export import runtime
from .export.onnx import export_onnx
from .models.load import load_generator, save_generator
from .models.spec import Generator
from .recipe import GateConfig, Recipe, load_recipe, recipe_sha256
from .files import atomic_write_text
from .validate.gate import check_gate, merge_gate
from .validate.html import to_html
from .validate.measure import Artifact, environment, measure
from .validate.report import Report, to_markdown

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class ApplyResult:
    """What `apply` returns: the verdict, the report, and where everything was written."""

    passed: bool
    report: Report
    out: Path

    @property
    def model_path(self) -> Path:
        return self.out / "model.onnx"


STAGES = {"prune": prune_stage.run, "distill": distill_stage.run, "quantize": quantize_stage.run,
          "precision": precision_stage.run}
HTML_SAMPLES = 3  # evaluation inputs shown as images in report.html
RESUME_DIR = ".resume"  # inside --out: training checkpoints that outlive an interrupted run


def _run_stage(kind: str, generator: Generator, ctx: StageContext, cfg: Any, out: Path) -> StageResult:
    if kind in STAGES:
        return STAGES[kind](generator, ctx, cfg, out=out)
    raise AssertionError(f"stage {kind} has no implementation")  # the recipe schema allows only these


def _torchrun() -> tuple[int, int]:
    """(rank, world size) when torchrun launched this process, else (0, 1)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return 0, 1
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _resume_key(rec: Recipe, checkpoint: Path, data: Any) -> str:
    """What a training checkpoint in OUT/.resume must match to be resumed: the recipe, the
    checkpoint's bytes (a model folder's files) and the data options."""
    h = hashlib.sha256()
    h.update(recipe_sha256(rec).encode())
    h.update(data.model_dump_json().encode())
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file()) if checkpoint.is_dir() else [checkpoint]
    for path in files:  # a diffusers model folder: every file in it, by name
        h.update(str(path.relative_to(checkpoint.parent)).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _check_out(out: Path, checkpoint: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder; --out must name a folder")
    ck = checkpoint.resolve()
    for name in ("model.safetensors", "model.onnx", "report.json", "report.md", "report.html", "original.onnx"):
        if (out / name).resolve() == ck:
            raise UsageError(f"--out {out} would overwrite the input checkpoint {checkpoint}; choose another folder")


def _move_into(staging: Path, out: Path) -> None:
    """Move staged files into ``out``; report.json goes last."""
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == "report.json")
    for f in files:
        dest = out / f.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
    shutil.rmtree(staging, ignore_errors=True)


def apply(
    recipe: str | os.PathLike[str] | Recipe,
    checkpoint: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] = "out",
    images: str | None = None,
    eval_images: str | None = None,
    gate: dict[str, float | None] | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    nproc: int = 1,
    device: str = "auto",
    fresh: bool = False,
    train_progress: Callable[[dict[str, Any]], None] | None = None,
) -> ApplyResult:
    """Apply ``recipe`` to ``checkpoint`` and write model, graphs and report into ``out``.

    ``images``/``eval_images`` override the recipe's ``data.images``/``data.eval_images``;
    ``gate`` overrides thresholds of its ``gate:`` (keys min_psnr, min_ssim,
    max_gt_psnr_drop, min_speedup); ``threads`` overrides ``validate.threads``.
    Training stages (distill) run in ``nproc`` processes (DistributedDataParallel when > 1) on
    ``device`` (auto: CUDA when present), resume from ``OUT/.resume/`` after an interruption
    unless ``fresh``, and send progress dicts to ``train_progress``.
    Raises `ImgcompressError` on bad input; a failed gate is ``result.passed == False``.
    """
    say = progress or (lambda msg: log.info("%s", msg))
    t_start = time.perf_counter()
    if isinstance(recipe, Recipe):
        rec, recipe_path = recipe, "<python>"
    else:
        recipe_path = str(recipe)
        rec = load_recipe(recipe)
    ckpt_path = Path(checkpoint)
    out_dir = Path(out)
    _check_out(out_dir, ckpt_path)

    data_cfg = rec.data.model_copy(update={k: v for k, v in {"images": images, "eval_images": eval_images}.items() if v is not None})
    gate_cfg: GateConfig = merge_gate(rec.gate, **(gate or {}))
    vcfg = rec.validate_config
    n_threads = threads or vcfg.threads or runtime.default_threads()

    say(f"loading {ckpt_path}")
    generator = load_generator(ckpt_path, model=rec.model)
    spec = generator.spec
    inputs = make_inputs(spec, data_cfg, checkpoint=ckpt_path)
    if gate_cfg.max_gt_psnr_drop is not None and inputs.evaluation[0].target is None:
        raise UsageError(
            f"gate max_gt_psnr_drop needs ground truth, and task {inputs.task!r} has none; drop that threshold"
        )
    if gate_cfg.min_sampling_psnr is not None and (inputs.sampling is None or inputs.sampling.steps == 0):
        raise UsageError(
            "gate min_sampling_psnr needs the end-to-end sampling check of a diffusion UNet "
            f"(task {inputs.task!r}{', data.diffusion.sampling_steps 0' if inputs.sampling is not None else ''}); "
            "drop that threshold"
        )
    teacher = Generator(copy.deepcopy(generator.module).eval(), spec, generator.arch, dict(generator.kwargs),
                        dict(generator.widths), generator.source)
    for p in teacher.module.parameters():
        p.requires_grad_(False)

    rank, world = _torchrun()
    if world > 1:
        if not any(st.kind == "distill" for st in rec.stages):
            raise UsageError(f"launched by torchrun ({world} processes), but the recipe has no training stage; "
                             "run imgcompress apply without torchrun")
        nproc, n_threads = world, max(1, n_threads // world)
    train = TrainOptions(nproc=nproc, launcher="torchrun" if world > 1 else "spawn", rank=rank, device=device,
                         fresh=fresh, progress=train_progress, resume_key=_resume_key(rec, ckpt_path, data_cfg))
    if fresh and rank == 0:
        shutil.rmtree(out_dir / RESUME_DIR, ignore_errors=True)

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        staging = out_dir / ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    else:  # another torchrun rank: it trains beside rank 0 and writes nothing into --out
        staging = Path(tempfile.mkdtemp(prefix=f"imgcompress-rank{rank}-"))
    try:
        result = _apply(rec, recipe_path, ckpt_path, out_dir, staging, generator, teacher, inputs, gate_cfg,
                        n_threads, say, t_start, train=train)
        if rank == 0:
            shutil.rmtree(out_dir / RESUME_DIR, ignore_errors=True)  # finished: nothing to resume
        return result
    finally:
        torch.set_num_threads(prev_threads)
        shutil.rmtree(staging, ignore_errors=True)  # empty after success; half-work after a failure


def _apply(rec: Recipe, recipe_path: str, ckpt_path: Path, out_dir: Path, staging: Path, generator: Generator,
           teacher: Generator, inputs: Inputs, gate_cfg: GateConfig, n_threads: int, say: Progress,
           t_start: float, *, train: TrainOptions) -> ApplyResult:
    spec = generator.spec
    ecfg, vcfg = rec.export, rec.validate_config
    export_kw = dict(opset=ecfg.opset, dynamic_batch=ecfg.dynamic_batch, dynamic_spatial=ecfg.dynamic_spatial,
                     tolerance=ecfg.tolerance)

    say("exporting the original to ONNX")
    original_onnx = staging / "original.onnx"
    export_check = export_onnx(teacher, original_onnx, **export_kw)

    current = generator
    current_onnx: Path | None = original_onnx
    artifacts: list[Artifact] = []
    stage_log: list[dict[str, Any]] = []
    for i, st in enumerate(rec.stages):
        say(f"stage {i}: {st.kind}")
        t0 = time.perf_counter()
        if current_onnx is None:
            current_onnx = staging / "stages" / f"{i:02d}-{current.arch}-fp32.onnx"
            export_onnx(current, current_onnx, **export_kw)
        stage_train = dataclasses.replace(train, resume_path=out_dir / RESUME_DIR / f"{i:02d}-{st.kind}.pt",
                                          resume_key=f"{train.resume_key}:{i}")
        ctx = StageContext(teacher=teacher, inputs=inputs, workdir=staging, threads=n_threads, onnx_path=current_onnx,
                           train=stage_train)
        try:
            res = _run_stage(st.kind, current, ctx, st, staging / "stages" / f"{i:02d}-{st.kind}.onnx")
        except RecipeError as e:  # a stage's option that does not fit this model ("prune.ignore: ...")
            raise RecipeError(f"{recipe_path}: stages.{i}.{e}") from None
        if train.rank != 0 and not any(s.kind == "distill" for s in rec.stages[i + 1:]):
            say(f"rank {train.rank}: training done; rank 0 measures and writes the report")
            return ApplyResult(True, Report({"secondary_rank": train.rank}), out_dir)
        current = res.generator
        current_onnx = res.onnx_path
        name = f"{i}-{st.kind}"
        if current_onnx is None:  # a torch stage: its artifact is the fp32 export
            current_onnx = staging / "stages" / f"{i:02d}-{st.kind}.onnx"
            export_onnx(current, current_onnx, **export_kw)
        note = res.info.get("speed_note") if res.quality_onnx is not None or not res.runnable else None
        if not res.runnable:
            note = res.info.get("not_runnable_reason") or "onnxruntime here cannot run this graph"
        artifacts.append(Artifact(name, current, current_onnx, res.precision, quality_path=res.quality_onnx,
                                  runnable=res.runnable, speed_note=note))
        stage_log.append({"index": i, "stage": st.kind, "artifact": name, "seconds": round(time.perf_counter() - t0, 2),
                          "info": res.info})

    say("measuring quality and speed")
    original, art_rows, speed_info, samples = measure(teacher, original_onnx, artifacts, inputs, cfg=vcfg,
                                                      threads=n_threads, root=staging, keep=HTML_SAMPLES)
    final = artifacts[-1]

    report: dict[str, Any] = {
        "schema": 1,
        "imgcompress_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "passed": False,
        "recipe": {"path": recipe_path, "name": rec.name, "sha256": recipe_sha256(rec),
                   "stages": [st.kind for st in rec.stages]},
        "checkpoint": {"path": str(ckpt_path), "arch": generator.arch, "kwargs": generator.kwargs,
                       "spec": spec.to_dict()},
        "data": {"task": inputs.task, **inputs.description},
        "environment": environment(),
        "export": {"opset": rec.export.opset, "max_abs_error": export_check.max_abs_error,
                   "tolerance": export_check.tolerance, "checked_shapes": [list(s) for s in export_check.shapes]},
        "speed": speed_info,
        "original": original,
        "stages": stage_log,
        "artifacts": art_rows,
        "final": final.name,
        "files": {"model_onnx": "model.onnx", "model_safetensors": "model.safetensors",
                  "original_onnx": "original.onnx"},
    }
    verdict = check_gate(report, gate_cfg)
    report["gate"] = verdict
    report["passed"] = verdict["passed"]
    report["seconds"] = round(time.perf_counter() - t_start, 1)

    report = json.loads(json.dumps(report))  # what the file holds is what the API returns
    shutil.copyfile(final.path, staging / "model.onnx")
    save_generator(final.generator, staging / "model.safetensors", recipe_sha256=report["recipe"]["sha256"])
    atomic_write_text(staging / "report.md", to_markdown(report))
    atomic_write_text(staging / "report.html", to_html(report, samples))
    atomic_write_text(staging / "report.json", json.dumps(report, indent=2))
    say(f"writing {out_dir}")
    _move_into(staging, out_dir)
    return ApplyResult(report["passed"], Report(report), out_dir)


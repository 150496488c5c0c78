"""The `distill` stage: the original model (the teacher) trains a student to reproduce its output.

- **Student**: ``pruned`` — the model as the previous stages left it (usually pruned); or a
  model mapping ``{arch, kwargs}`` naming a fresh, smaller built-in or ``package.module:Class``
  whose output must have the teacher's shape.
- **Data**: batch ``s`` of training is a function of (seed, s): random crops with flips of the
  calibration images, made into inputs as the task says, or fresh latents (data.py's
  `TrainingSource`). Evaluation inputs are never seen. The teacher's output is the target.
- **Loss**: ``pixel`` (l1, l2 or Charbonnier, on outputs normalised to [0, 1]); ``feature``
  (GAN-Compression style: at each tap, the student's activation goes through a learned 1×1
  adapter to the teacher's width and is compared by MSE normalised by the teacher
  activation's mean square; adapters are dropped after training); ``ssim`` (1 - SSIM).
- **Optimiser**: Adam, linear warm-up over 5% of the steps then cosine decay. The student
  trains in inference mode (norm layers use their stored statistics, no dropout), so what is
  trained is what is deployed. The result is the exponential moving average of its weights
  (decay ``min(ema, (1 + t) / (10 + t))`` at step t, so early steps are not frozen in).
- **Early stop**: every ``eval_every`` steps the EMA student's PSNR vs the teacher is measured
  on a held-out batch (the first calibration inputs, not trained on as such); at
  ``target_psnr`` training stops.
- **Resumable**: every ``checkpoint_every`` steps the student, adapters, optimiser, EMA, step
  and RNG state are written atomically to ``TrainOptions.resume_path`` (torch tensors and
  plain containers only, read back with ``weights_only=True``) with a key naming the recipe,
  the checkpoint and the stage; a restarted run with the same key continues from there.
- **Multi-process**: ``nproc > 1`` spawns that many processes training with
  DistributedDataParallel (gloo on CPU, nccl on CUDA); each takes its slice of the same global
  batch, so the result matches one process with that batch. Models reach the workers as
  safetensors files (no pickled modules); rank 0 writes checkpoints and the result.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from ..data import TrainingSource
from ..errors import RecipeError, UsageError
from ..files import temp_beside
from ..models import registry
from ..models.load import SPANDREL, load_generator, save_generator
from ..models.spec import Generator
from ..recipe import Distill, ModelConfig
from ..validate import cost, metrics
from .base import StageContext, StageResult, TrainOptions

log = logging.getLogger(__name__)

COMPUTE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  nn.Linear)
AUTO_TAPS = 4
HELD_OUT = 8  # calibration inputs in the held-out batch
CHARBONNIER_EPS = 1e-3
WARMUP_SHARE = 0.05
ADAPTER_SEED = 1234
CHECKPOINT_FORMAT = 1


# --- the student and its taps -----------------------------------------------------------------


def make_student(generator: Generator, cfg: Distill) -> Generator:
    """The model to train: a copy of ``generator`` (``student: pruned``) or a fresh model."""
    if cfg.student == "pruned":
        g = copy.deepcopy(generator)
        g.module = g.module.eval()
        return g
    assert isinstance(cfg.student, ModelConfig)
    m = cfg.student
    if m.arch == SPANDREL:
        raise RecipeError("distill.student: a spandrel model is built from its weights; name a built-in arch or a "
                          "'package.module:Class' for a fresh student")
    torch.manual_seed(0)
    if ":" in m.arch:
        from ..models.load import _import_class

        cls = _import_class(m.arch, "distill.student")
        try:
            module = cls(**m.kwargs)
        except TypeError as e:
            raise RecipeError(f"distill.student: {m.arch}({m.kwargs}) failed: {e}; fix student.kwargs") from None
    else:
        arch = registry.get(m.arch)
        if arch is None:
            raise RecipeError(f"distill.student.arch: {m.arch!r} is not a built-in architecture "
                              f"({', '.join(registry.names())}); or name a class as 'package.module:Class'")
        try:
            module = arch.build(**m.kwargs)
        except TypeError as e:
            raise RecipeError(f"distill.student.kwargs: {m.arch} does not take {m.kwargs} ({e})") from None
    spec = generator.spec
    x = spec.example_input(batch=1, size=spec.default_size, seed=0)
    with torch.no_grad():
        try:
            y_s = module.eval()(x)
        except Exception as e:  # noqa: BLE001 - any failure means the student does not fit
            raise RecipeError(f"distill.student: {m.arch} does not run on the teacher's input {tuple(x.shape)} "
                              f"({type(e).__name__}: {str(e)[:200]}); choose a student with the same input") from None
        y_t = generator.module(x)
    if tuple(y_s.shape) != tuple(y_t.shape):
        raise RecipeError(f"distill.student: {m.arch} gives output {tuple(y_s.shape)} where the teacher gives "
                          f"{tuple(y_t.shape)}; the student must produce the teacher's output shape (same scale)")
    return Generator(module.eval(), spec, m.arch, dict(m.kwargs), {}, generator.source)


def _compute_layers(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if n and isinstance(m, COMPUTE_LAYERS)]


def resolve_taps(teacher: nn.Module, student: nn.Module, taps: str | list[str]) -> list[tuple[str, str]]:
    """(teacher module, student module) pairs where the feature loss compares activations."""
    t_names = dict(teacher.named_modules())
    s_names = dict(student.named_modules())
    if taps == "auto":
        shared = [n for n in _compute_layers(teacher) if n in s_names and isinstance(s_names[n], COMPUTE_LAYERS)]
        inner = shared[1:-1]
        if len(inner) <= AUTO_TAPS:
            return [(n, n) for n in inner]
        idx = [round((i + 1) * (len(inner) + 1) / (AUTO_TAPS + 1)) - 1 for i in range(AUTO_TAPS)]
        return [(inner[i], inner[i]) for i in sorted(set(idx))]
    pairs = []
    for item in taps:
        t, _, s = item.partition("=")
        s = s or t
        for name, names, who in ((t, t_names, "teacher"), (s, s_names, "student")):
            if name not in names or not name:
                raise RecipeError(f"distill.taps: {item!r}: the {who} has no module {name!r}; module names look "
                                  f"like {', '.join(_compute_layers(teacher if who == 'teacher' else student)[:4])}")
        pairs.append((t, s))
    return pairs


class _Taps:
    """Forward hooks that keep the outputs of named modules during one forward."""

    def __init__(self, module: nn.Module, names: list[str]):
        self.feats: dict[str, torch.Tensor] = {}
        mods = dict(module.named_modules())
        self.handles = [mods[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            self.feats[name] = out[0] if isinstance(out, (tuple, list)) else out
        return hook

    def take(self, names: list[str]) -> list[torch.Tensor]:
        out = [self.feats[n] for n in names]
        self.feats = {}
        return out


def _adapter(s: torch.Tensor, t: torch.Tensor) -> nn.Module:
    if s.dim() == 2:
        return nn.Linear(s.shape[1], t.shape[1])
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[s.dim()]
    return conv(s.shape[1], t.shape[1], kernel_size=1)


class _Trainee(nn.Module):
    """The student and its adapters: what the optimiser updates (and DDP wraps). The forward
    returns the student's output and its tap activations mapped through the adapters."""

    def __init__(self, student: nn.Module, adapters: nn.ModuleList, taps: list[str]):
        super().__init__()
        self.student = student
        self.adapters = adapters
        self.names = taps
        self.taps = _Taps(student, taps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y = self.student(x)
        return y, [ad(f) for ad, f in zip(self.adapters, self.taps.take(self.names))]


# --- losses -------------------------------------------------------------------------------------


def _pixel(kind: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    d = s - t
    if kind == "l1":
        return d.abs().mean()
    if kind == "l2":
        return (d * d).mean()
    return torch.sqrt(d * d + CHARBONNIER_EPS ** 2).mean()


def _ssim_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if s.dim() != 4 or min(s.shape[-2:]) < 7:
        return s.new_zeros(())
    k = 11 if min(s.shape[-2:]) >= 11 else 7
    return 1.0 - structural_similarity_index_measure(s, t, data_range=1.0, kernel_size=k, sigma=1.5 * k / 11)


def _feature(adapted: list[torch.Tensor], t_feats: list[torch.Tensor]) -> torch.Tensor:
    total = adapted[0].new_zeros(())
    for a, t in zip(adapted, t_feats):
        if a.shape[2:] != t.shape[2:]:
            a = F.interpolate(a, size=t.shape[2:], mode="nearest")
        total = total + ((a - t) ** 2).mean() / ((t * t).mean() + 1e-8)
    return total / max(1, len(adapted))


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over `WARMUP_SHARE` of the steps, then cosine decay to 0."""
    warm = max(1, int(steps * WARMUP_SHARE))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


# --- one training process -----------------------------------------------------------------------


@dataclass
class _Job:
    """Everything a training process needs, picklable: models travel as safetensors files."""

    teacher_file: str
    student_file: str
    cfg: Distill
    source: TrainingSource
    held_out: torch.Tensor
    out_range: tuple[float, float]
    taps: list[tuple[str, str]]
    threads: int
    device: str
    world: int
    resume_path: str | None
    resume_key: str
    result_file: str
    rendezvous: str = ""
    fresh: bool = False
    eval_every: int = 50
    log_every: int = 10


@dataclass
class _State:
    step: int = 0
    resumed_from: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    psnr: float | None = None
    stopped_early: bool = False


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = temp_beside(path, ".tmp.pt")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint means starting over
        log.warning("distill: %s is unreadable (%s); starting over", path, type(e).__name__)
        return None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or payload.get("key") != key:
        log.warning("distill: %s belongs to another run (recipe, checkpoint or stage differ); starting over", path)
        return None
    return payload


def _ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(decay).add_(v.detach(), alpha=1.0 - decay)
            else:
                ema[k].copy_(v)


def _held_out_psnr(student: nn.Module, ema: dict[str, torch.Tensor], x: torch.Tensor, ref: torch.Tensor,
                   rng: tuple[float, float]) -> float:
    probe = copy.deepcopy(student)
    probe.load_state_dict(ema)
    with torch.no_grad():
        y = metrics.normalise(probe(x), rng)
    return float(np.mean([metrics.psnr(y[i:i + 1], ref[i:i + 1]) for i in range(y.shape[0])]))


def _train(rank: int, job: _Job, report: Any = None) -> None:
    """Train (as process ``rank`` of ``job.world``); rank 0 writes the result file."""
    torch.set_num_threads(job.threads)
    device = torch.device(job.device if job.device != "cuda" else f"cuda:{rank}")
    if job.world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=job.rendezvous,
                                rank=rank, world_size=job.world)
    try:
        _loop(rank, job, device, report)
    finally:
        if job.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _loop(rank: int, job: _Job, device: torch.device, report: Any) -> None:
    cfg = job.cfg
    teacher = load_generator(job.teacher_file).module.to(device).eval()
    student = load_generator(job.student_file).module.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t_names, s_names = [t for t, _ in job.taps], [s for _, s in job.taps]
    t_taps = _Taps(teacher, t_names)
    rng = job.out_range
    held = job.held_out.to(device)
    with torch.no_grad():
        teacher(held[:1])
        probe_t = t_taps.take(t_names)
        probe = _Taps(student, s_names)
        student(held[:1])
        probe_s = probe.take(s_names)
        for h in probe.handles:
            h.remove()
        ref = metrics.normalise(teacher(held), rng)
        t_taps.take(t_names)
    torch.manual_seed(ADAPTER_SEED)
    adapters = nn.ModuleList(_adapter(s, t) for s, t in zip(probe_s, probe_t)).to(device)
    trainee = _Trainee(student, adapters, s_names)
    opt = torch.optim.Adam([p for p in trainee.parameters() if p.requires_grad], lr=cfg.lr)
    ema = {k: v.detach().clone() for k, v in student.state_dict().items()}
    st = _State()

    resume = Path(job.resume_path) if job.resume_path else None
    payload = _load_checkpoint(resume, job.resume_key) if resume and not job.fresh else None
    if payload is not None:
        mine = {k: tuple(v.shape) for k, v in trainee.state_dict().items()}
        saved = {k: tuple(v.shape) for k, v in payload["trainee"].items()}
        if mine != saved:
            log.warning("distill: %s does not fit this student (its layers differ); starting over", resume)
        else:
            trainee.load_state_dict(payload["trainee"])
            opt.load_state_dict(payload["opt"])
            ema = {k: v.to(device) for k, v in payload["ema"].items()}
            st.step = st.resumed_from = int(payload["step"])
            st.history = list(payload["history"])
            st.psnr = payload.get("psnr")
            torch.set_rng_state(payload["torch_rng"])
            if rank == 0:
                log.info("distill: resuming from step %d of %d (%s)", st.step, cfg.steps, resume)
    model: nn.Module = trainee
    if job.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(trainee, device_ids=[device.index] if device.type == "cuda" else None)

    per_rank = cfg.batch_size // job.world
    t0, step0, last_loss = time.perf_counter(), st.step, float("nan")
    while st.step < cfg.steps and not st.stopped_early:
        step = st.step
        x_all = job.source.batch(step, cfg.batch_size)
        x = x_all[rank * per_rank:(rank + 1) * per_rank].to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.lr)
        with torch.no_grad():
            t_out = teacher(x)
            t_feats = t_taps.take(t_names)
        s_out, adapted = model(x)
        t_n, s_n = metrics_norm(t_out, rng), metrics_norm(s_out, rng)
        loss = _pixel(cfg.loss.pixel, s_n, t_n)
        if adapted:
            loss = loss + cfg.loss.feature * _feature(adapted, t_feats)
        if cfg.loss.ssim > 0:
            loss = loss + cfg.loss.ssim * _ssim_loss(s_n.clamp(0, 1), t_n.clamp(0, 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(cfg.ema, (1.0 + step) / (10.0 + step)) if cfg.ema > 0 else 0.0
        _ema_update(ema, student, decay)
        st.step = step + 1
        last_loss = float(loss.detach())
        if st.step % job.eval_every == 0 or st.step == cfg.steps:
            st.psnr = _held_out_psnr(student, ema, held, ref, rng)
            st.history.append({"step": st.step, "loss": round(last_loss, 6), "psnr_db": round(st.psnr, 3)})
            if cfg.target_psnr is not None and st.psnr >= cfg.target_psnr:
                st.stopped_early = st.step < cfg.steps
        if rank == 0 and report is not None and (st.step % job.log_every == 0 or st.step == cfg.steps
                                                 or st.stopped_early):
            rate = (st.step - step0) / max(1e-9, time.perf_counter() - t0)
            report({"step": st.step, "steps": cfg.steps, "loss": last_loss, "psnr_db": st.psnr,
                    "steps_per_s": rate})
        if rank == 0 and resume is not None and st.step % cfg.checkpoint_every == 0 and st.step < cfg.steps:
            _save_checkpoint(resume, {
                "format": CHECKPOINT_FORMAT, "key": job.resume_key, "step": st.step,
                "trainee": trainee.state_dict(), "opt": opt.state_dict(), "ema": ema,
                "history": st.history, "psnr": st.psnr, "torch_rng": torch.get_rng_state(),
            })
    in_sync = None
    if job.world > 1:  # every process must hold the same weights: measure how far apart they are
        import torch.distributed as dist

        flat = torch.cat([p.detach().flatten() for p in trainee.parameters()])
        copies = [torch.empty_like(flat) for _ in range(job.world)]
        dist.all_gather(copies, flat)
        in_sync = max(float((c - copies[0]).abs().max()) for c in copies)
    if rank == 0:
        _save_checkpoint(Path(job.result_file), {
            "format": CHECKPOINT_FORMAT, "ema": {k: v.cpu() for k, v in ema.items()},
            "live": {k: v.detach().cpu() for k, v in student.state_dict().items()},
            "state": json.dumps({"step": st.step, "resumed_from": st.resumed_from, "history": st.history,
                                 "psnr": st.psnr, "stopped_early": st.stopped_early,
                                 "adapter_params": sum(p.numel() for p in adapters.parameters()),
                                 "ranks_max_param_diff": in_sync}),
        })


def metrics_norm(x: torch.Tensor, rng: tuple[float, float]) -> torch.Tensor:
    """``x`` mapped from ``rng`` to [0, 1], without clamping (gradients flow everywhere)."""
    lo, hi = rng
    return (x - lo) / (hi - lo)


def _spawned(rank: int, job: _Job, q: Any) -> None:
    _train(rank, job, (lambda d: q.put(d)) if rank == 0 else None)


def _run_processes(job: _Job, progress: Callable[[dict[str, Any]], None] | None) -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    procs = mp.start_processes(_spawned, args=(job, q), nprocs=job.world, join=False, start_method="spawn")

    def drain() -> None:
        while not q.empty():
            d = q.get()
            if progress is not None:
                progress(d)

    try:
        while not procs.join(timeout=0.5):
            drain()
    except mp.ProcessRaisedException as e:
        raise RuntimeError(f"distill: a training process failed: {str(e).strip().splitlines()[-1][:300]}") from None
    except mp.ProcessExitedException as e:
        raise RuntimeError(f"distill: a training process died ({e})") from None
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
    drain()


# --- the stage --------------------------------------------------------------------------------


def _device(requested: str, nproc: int) -> str:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto)")
        if nproc > torch.cuda.device_count():
            raise UsageError(f"--nproc {nproc} with --device cuda needs {nproc} GPUs; torch sees "
                             f"{torch.cuda.device_count()}")
    elif requested != "cpu":
        raise UsageError(f"--device {requested}: use auto, cpu or cuda")
    return requested


def run(generator: Generator, ctx: StageContext, cfg: Distill, *, out: Path | None = None) -> StageResult:
    """Distil ``ctx.teacher`` into a student (see the module doc); the teacher is not changed."""
    del out  # a torch stage: the pipeline exports the result
    opts: TrainOptions = ctx.train
    if opts.nproc < 1:
        raise UsageError(f"--nproc {opts.nproc}: must be at least 1")
    if cfg.batch_size % opts.nproc:
        raise UsageError(f"--nproc {opts.nproc} does not divide distill.batch_size {cfg.batch_size}; "
                         "choose a batch size that is a multiple of the process count")
    if generator.spec.extra_inputs:
        names = ", ".join(e.name for e in generator.spec.extra_inputs)
        raise RecipeError(f"distill: the model takes extra inputs ({names}), and distillation trains single-input "
                          "generators (decoders, image nets) only; drop the distill stage (prune and quantize work)")
    source = ctx.inputs.training
    if source is None:
        raise RuntimeError("distill needs ctx.inputs.training (data.make_inputs provides it)")
    device = _device(opts.device, opts.nproc)
    teacher = ctx.teacher
    student = make_student(generator, cfg)
    taps = resolve_taps(teacher.module, student.module, cfg.taps) if cfg.loss.feature > 0 else []
    if cfg.loss.feature > 0 and not taps:
        raise RecipeError("distill.loss.feature: the student shares no layer names with the teacher; set "
                          "distill.taps to 'teacher_layer=student_layer' pairs, or loss.feature: 0")
    if cfg.student == "pruned" and not generator.widths and generator.module is not None and \
            cost.params(generator.module) == cost.params(teacher.module):
        log.warning("distill: the student is the original model (no earlier prune stage); it will only drift")
    held = torch.cat(ctx.inputs.calibration[:HELD_OUT])
    threads = max(1, ctx.threads // opts.nproc)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="distill-", dir=ctx.workdir))
    teacher_file, student_file = work / "teacher.safetensors", work / "student.safetensors"
    save_generator(teacher, teacher_file)
    save_generator(student, student_file)
    torchrun = opts.launcher == "torchrun"
    if opts.resume_path is not None and opts.rank == 0:
        if opts.fresh:
            opts.resume_path.unlink(missing_ok=True)
        opts.resume_path.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(
        teacher_file=str(teacher_file), student_file=str(student_file), cfg=cfg, source=source, held_out=held,
        out_range=teacher.spec.output_range, taps=taps, threads=threads, device=device, world=opts.nproc,
        resume_path=str(opts.resume_path) if opts.resume_path else None, resume_key=opts.resume_key,
        result_file=str(work / "result.pt"), fresh=opts.fresh,
        rendezvous="env://" if torchrun else f"file://{work / 'rendezvous'}",
        eval_every=max(1, min(50, cfg.checkpoint_every, cfg.steps)),
        log_every=max(1, min(10, cfg.steps // 50 or 1)),
    )
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    prev = torch.get_num_threads()
    try:
        if torchrun:  # this process is one of the ranks torchrun started
            _train(opts.rank, job, opts.progress if opts.rank == 0 else None)
            if opts.rank != 0:  # rank 0 holds the result and writes everything
                return StageResult(student, None, "fp32", {"rank": opts.rank})
        elif opts.nproc > 1:
            _run_processes(job, opts.progress)
        else:
            _train(0, job, opts.progress)
        result = torch.load(job.result_file, map_location="cpu", weights_only=True)
    finally:
        torch.set_num_threads(prev)
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    state = json.loads(result["state"])
    student.module.load_state_dict(result["ema"] if cfg.ema > 0 else result["live"])
    student.module.eval()
    for p in student.module.parameters():
        p.requires_grad_(False)
    trained = state["step"] - (state["resumed_from"] or 0)
    x = ctx.inputs.calibration[0]
    info: dict[str, Any] = {
        "student": "pruned" if cfg.student == "pruned" else {"arch": student.arch, "kwargs": student.kwargs},
        "student_params": cost.params(student.module),
        "student_macs": cost.macs(student.module, x),
        "teacher_params": cost.params(teacher.module),
        "teacher_macs": cost.macs(teacher.module, x),
        "steps": cfg.steps,
        "steps_done": state["step"],
        "stopped_early": state["stopped_early"],
        "target_psnr": cfg.target_psnr,
        "psnr_vs_teacher_held_out": state["psnr"],
        "held_out": f"{held.shape[0]} calibration inputs",
        "resumed_from_step": state["resumed_from"],
        "history": state["history"],
        "loss": cfg.loss.model_dump(),
        "taps": [f"{t}={s}" if t != s else t for t, s in taps],
        "adapter_params": state["adapter_params"],
        "batch_size": cfg.batch_size,
        "nproc": opts.nproc,
        "launcher": opts.launcher if opts.nproc > 1 else None,
        "backend": ("nccl" if device == "cuda" else "gloo") if opts.nproc > 1 else None,
        "device": device,
        "threads_per_process": threads,
        "ranks_max_param_diff": state["ranks_max_param_diff"],
        "seconds": round(seconds, 1),
        "steps_per_s": round(trained / seconds, 3) if seconds > 0 and trained else None,
        "started": started.isoformat(timespec="seconds"),
    }
    log.info("distill: %d steps (%s), held-out PSNR vs teacher %.2f dB, %.1f s", state["step"],
             "stopped early" if state["stopped_early"] else "all", state["psnr"] or float("nan"), seconds)
    return StageResult(student, None, "fp32", info)



"""onnxruntime sessions with fixed threads, and running them on torch tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..models.inputs import Batch, feeds


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def providers() -> list[str]:
    """Execution providers used here: CUDA when onnxruntime has it, then CPU."""
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


def session(path: str | Path | bytes, *, threads: int | None = None, provider: str | None = None,
            spinning: bool = False) -> ort.InferenceSession:
    """A CPU (or ``provider``) session with ``threads`` intra-op threads and no spin-waiting.

    Idle onnxruntime worker threads spin by default; with several sessions (and torch) timed
    in turns, one session's spinning threads steal the cores of whichever runs next, which
    skews an interleaved comparison. With spinning off (unless ``spinning``), each runs on quiet
    cores."""
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    prov = [provider] if provider else ["CPUExecutionProvider"]
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=opts, providers=prov)


def run(sess: ort.InferenceSession, x: Batch) -> torch.Tensor:
    """Run a one-output session on a float32 tensor (or a tuple: the graph's inputs in order)."""
    (y,) = sess.run(None, feeds([i.name for i in sess.get_inputs()], x))
    return torch.from_numpy(np.asarray(y, dtype=np.float32))

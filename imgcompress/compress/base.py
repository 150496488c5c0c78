"""What every stage takes and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import Inputs
from ..models.spec import Generator


@dataclass(frozen=True)
class TrainOptions:
    """How training stages run, from the command line or the API rather than the recipe:
    processes (DistributedDataParallel when > 1) and who starts them (``spawn``: the stage;
    ``torchrun``: the command was launched under torchrun, this process is ``rank``), device
    (``auto``: CUDA when present), where a resumable checkpoint lives and the key it must match
    to be resumed, whether to ignore it (``fresh``), and a callback that receives progress dicts."""

    nproc: int = 1
    launcher: str = "spawn"
    rank: int = 0
    device: str = "auto"
    fresh: bool = False
    resume_path: Path | None = None
    resume_key: str = ""
    progress: Callable[[dict[str, Any]], None] | None = None


@dataclass
class StageContext:
    """What a stage may use: the frozen original (teacher), the inputs, the current ONNX graph
    (for graph stages), a work folder inside the output folder, and the thread count."""

    teacher: Generator
    inputs: Inputs
    workdir: Path
    threads: int
    onnx_path: Path | None = None
    train: TrainOptions = field(default_factory=TrainOptions)


@dataclass
class StageResult:
    """A stage's product. Torch stages return a new generator and no graph; graph stages
    return the same generator and the path of the graph they wrote.

    ``quality_onnx``: a graph to measure quality on instead of ``onnx_path`` (the precision
    stage's fp32 emulation, which rounds as a GPU would where onnxruntime's CPU provider does
    not); ``runnable``: False when onnxruntime here cannot run ``onnx_path`` (bf16 on CPU), so
    its speed is not measured."""

    generator: Generator
    onnx_path: Path | None
    precision: str
    info: dict[str, Any] = field(default_factory=dict)
    quality_onnx: Path | None = None
    runnable: bool = True

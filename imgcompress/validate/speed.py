"""Latency: warm-up, then repeats interleaved across every model so drift hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    runs: int


def _p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def measure(runners: dict[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 20) -> dict[str, Timing]:
    """Time each runner ``repeats`` times after ``warmup`` calls, rotating the order each round."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            runners[name]()
            samples[name].append((time.perf_counter() - t0) * 1000.0)
    return {n: Timing(statistics.median(v), _p90(v), len(v)) for n, v in samples.items()}

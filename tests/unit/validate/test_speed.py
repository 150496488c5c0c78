"""Latency measurement: warm-up, interleaved rounds, median and p90 (on a fake clock, not real sleeps)."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from imgcompress.validate import speed
from imgcompress.validate.speed import Timing, _p90, measure


class FakeClock:
    """A `perf_counter` that moves only when a runner says it took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, ms: float) -> None:
        self.now += ms / 1000.0


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=c.perf_counter))
    return c


def _recording(names: list[str]) -> tuple[dict[str, object], list[str]]:
    calls: list[str] = []
    return {n: (lambda n=n: calls.append(n)) for n in names}, calls


def test_warmup_then_interleaved_rounds() -> None:
    runners, calls = _recording(["torch", "ort", "int8"])
    timings = measure(runners, warmup=2, repeats=4)
    warm, timed = calls[:6], calls[6:]
    assert warm == ["torch", "torch", "ort", "ort", "int8", "int8"]
    rounds = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert rounds == [["torch", "ort", "int8"], ["ort", "int8", "torch"], ["int8", "torch", "ort"],
                      ["torch", "ort", "int8"]]
    assert {n: t.runs for n, t in timings.items()} == {"torch": 4, "ort": 4, "int8": 4}


@pytest.mark.parametrize(("n", "warmup", "repeats"), [(1, 0, 3), (2, 3, 20), (4, 1, 7)])
def test_every_runner_is_called_warmup_plus_repeats_times(n: int, warmup: int, repeats: int) -> None:
    names = [f"m{i}" for i in range(n)]
    runners, calls = _recording(names)
    timings = measure(runners, warmup=warmup, repeats=repeats)
    assert all(calls.count(name) == warmup + repeats for name in names)
    assert list(timings) == names
    timed = calls[n * warmup:]
    for r in range(repeats):  # each round calls every runner exactly once
        assert sorted(timed[r * n:(r + 1) * n]) == sorted(names)
    firsts = [timed[r * n] for r in range(repeats)]
    assert firsts == [names[r % n] for r in range(repeats)]  # the start rotates


def test_warmup_is_not_timed(clock: FakeClock) -> None:
    calls = {"a": 0}

    def a() -> None:
        calls["a"] += 1
        clock.spend(1000.0 if calls["a"] <= 3 else 2.0)  # slow first calls (caches, allocations)

    t = measure({"a": a}, warmup=3, repeats=5)["a"]
    assert (t.median_ms, t.p90_ms, t.runs) == (pytest.approx(2.0), pytest.approx(2.0), 5)


def test_median_and_p90_on_a_fake_clock(clock: FakeClock) -> None:
    durations = {"slow": iter([5.0, 1.0, 3.0, 9.0, 7.0, 2.0, 8.0, 4.0, 6.0, 10.0, 100.0]),
                 "fast": iter([0.5] * 11)}

    def run(name: str) -> None:
        clock.spend(next(durations[name]))

    t = measure({"slow": lambda: run("slow"), "fast": lambda: run("fast")}, warmup=1, repeats=10)
    slow, fast = t["slow"], t["fast"]
    # warm-up took 5.0; timed: 1, 3, 9, 7, 2, 8, 4, 6, 10, 100
    assert slow.median_ms == pytest.approx(6.5)
    assert slow.p90_ms == pytest.approx(10.0)
    assert slow.runs == 10
    assert (fast.median_ms, fast.p90_ms) == (pytest.approx(0.5), pytest.approx(0.5))


def test_each_runner_is_timed_on_its_own(clock: FakeClock) -> None:
    t = measure({"a": lambda: clock.spend(3.0), "b": lambda: clock.spend(7.0)}, warmup=0, repeats=3)
    assert t["a"].median_ms == pytest.approx(3.0) and t["b"].median_ms == pytest.approx(7.0)


@pytest.mark.parametrize(("xs", "expected"), [
    ([4.0], 4.0),
    ([1.0, 2.0], 2.0),
    (list(range(1, 11)), 9.0),  # nearest rank: index round(0.9 * 9) = 8
    (list(range(1, 12)), 10.0),
    (list(range(1, 21)), 18.0),
    ([100.0, 1.0, 50.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 50.0),  # order does not matter
])
def test_p90(xs: list[float], expected: float) -> None:
    assert _p90([float(x) for x in xs]) == expected


def test_p90_is_between_median_and_max() -> None:
    xs = [float((i * 37) % 101) for i in range(50)]
    assert statistics.median(xs) <= _p90(xs) <= max(xs)


def test_timing_is_frozen() -> None:
    t = Timing(1.0, 2.0, 3)
    with pytest.raises(AttributeError):
        t.median_ms = 5.0  # type: ignore[misc]

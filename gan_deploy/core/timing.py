"""The one module that reads a clock. Every backend is timed the same way:

warm-up calls (not measured: first-call compilation, allocator growth, autotuning), then measured calls,
each bracketed by the runner's `synchronize()` so queued GPU work is inside the measurement.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

NOISY_SPREAD = 1.5  # p90/p50 above this: the machine was busy during the measurement (bench warns, auto records nothing)


@dataclass
class LatencyStats:
    batch_size: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    images_per_s: float

    @classmethod
    def from_samples(cls, batch_size: int, seconds: list[float]) -> "LatencyStats":
        a = np.asarray(seconds, dtype=np.float64) * 1e3
        mean = float(a.mean())
        p50 = float(np.percentile(a, 50))
        # images/s from the median: one stall (a page fault, another process) moves the mean, not the median
        return cls(batch_size, len(a), mean, p50, float(np.percentile(a, 90)),
                   float(np.percentile(a, 99)), float(a.min()), batch_size / (p50 / 1e3))

    @property
    def spread(self) -> float:
        """p90 / p50: above NOISY_SPREAD the machine was noisy during the measurement."""
        return self.p90_ms / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(fn: Callable[[], Any], batch_size: int, warmup: int = 5, iters: int = 50, min_time_s: float = 0.0,
            max_time_s: float = 30.0, synchronize: Callable[[], None] = lambda: None) -> LatencyStats:
    """Time `fn()`: `warmup` unmeasured calls, then at least `iters` calls (more until `min_time_s`),
    stopping early once `max_time_s` of measurement has passed (at least 3 samples are always taken)."""
    for _ in range(warmup):
        fn()
    synchronize()
    samples: list[float] = []
    clock = time.perf_counter
    t_start = clock()
    while True:
        t0 = clock()
        fn()
        synchronize()
        samples.append(clock() - t0)
        elapsed = clock() - t_start
        if len(samples) >= 3 and elapsed >= max_time_s:
            break
        if len(samples) >= iters and elapsed >= min_time_s:
            break
    return LatencyStats.from_samples(batch_size, samples)


def measure_interleaved(fns: dict[str, tuple[Callable[[], Any], Callable[[], None]]], batch_size: int, warmup: int = 5,
                        iters: int = 30, rounds: int = 5, min_time_s: float = 0.0, max_time_s: float = 30.0,
                        progress: Callable[[str], None] | None = None) -> dict[str, LatencyStats]:
    """Time several callables against each other: warm-up each, then `rounds` rounds in which each callable gets
    its share of calls in turn, so a slow spell of the machine hits all of them alike. `fns`: label ->
    (fn, synchronize). Each callable gets at least `iters` samples (and `min_time_s` of them), at most
    `max_time_s` of measurement; ratios between the results are what to compare."""
    for label, (fn, sync) in fns.items():
        if progress:
            progress(f"{label} batch {batch_size}")
        for _ in range(warmup):
            fn()
        sync()
    rounds = max(1, rounds)
    per_round = max(1, -(-iters // rounds))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    spent: dict[str, float] = {k: 0.0 for k in fns}
    clock = time.perf_counter
    while True:
        for label, (fn, sync) in fns.items():
            if spent[label] >= max_time_s and len(samples[label]) >= 3:
                continue
            for _ in range(per_round):
                t0 = clock()
                fn()
                sync()
                dt = clock() - t0
                samples[label].append(dt)
                spent[label] += dt
        done = all((len(samples[k]) >= iters and spent[k] >= min_time_s) or (spent[k] >= max_time_s and len(samples[k]) >= 3)
                   for k in fns)
        if done:
            break
    return {k: LatencyStats.from_samples(batch_size, v) for k, v in samples.items()}


def measure_rotated(fns: dict[str, Callable[[], Any]], round_s: float = 0.02, rounds: int = 7, min_rounds: int = 3,
                    budget_s: float = 3.0) -> dict[str, list[float]]:
    """Seconds per call of each callable, one figure per round: a warm-up call each (the second call says how many
    calls fill `round_s`), then up to `rounds` rounds in which every callable runs its calls in turn, the order
    rotated each round. Rotation matters on a CPU: a runtime whose threads spin after a call (onnxruntime's do)
    slows whichever callable runs right after it, so none may always follow the same one. Stops after `min_rounds`
    once `budget_s` per callable is spent."""
    names = list(fns)
    reps: dict[str, int] = {}
    for n in names:
        fns[n]()
        t0 = time.perf_counter()
        fns[n]()
        reps[n] = max(1, int(round_s / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[str, list[float]] = {n: [] for n in names}
    spent = 0.0
    for k in range(max(1, rounds)):
        for n in names[k % len(names):] + names[:k % len(names)]:
            t0 = time.perf_counter()
            for _ in range(reps[n]):
                fns[n]()
            dt = time.perf_counter() - t0
            samples[n].append(dt / reps[n])
            spent += dt
        if k + 1 >= min_rounds and spent >= budget_s * len(names):
            break
    return samples


class Stopwatch:
    """Wall-clock span of a whole job (generate end to end)."""

    def __enter__(self) -> "Stopwatch":
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

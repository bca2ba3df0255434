"""The one module that reads a clock. Every backend is timed the same way:

warm-up calls (not measured: first-call compilation, allocator growth, autotuning), then measured calls,
each bracketed by the runner's `synchronize()` so queued GPU work is inside the measurement.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np


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
        return cls(batch_size, len(a), mean, float(np.percentile(a, 50)), float(np.percentile(a, 90)),
                   float(np.percentile(a, 99)), float(a.min()), batch_size / (mean / 1e3))

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

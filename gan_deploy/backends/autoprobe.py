"""`auto` on a CPU: onnxruntime, or a challenger runtime (OpenVINO) when it is measurably faster for *this* artifact
on *this* machine at the command's batch size.

Which runtime is fastest depends on the model and the CPU (OpenVINO runs our INT8 DCGAN 1.6-1.9x faster than
onnxruntime at batch 64-256 on an AVX-512 VNNI CPU and on a Zen 3 without VNNI; the StyleGAN2-style FP32 1.4x
slower on the first, 1.3x faster on the second; docs/precision.md), so no fixed rule can choose.
The probe, once per (artifact sha256, CPU model and flags, threads, batch size, runtime versions):

1. builds and activates each runner (a runtime that refuses the model, or that the caller's `vet` refuses, e.g.
   the quality gate re-run on that runtime, is out, and the reason is said);
2. times `infer` on one batch of the command's size: a warm-up call each, then up to ROUNDS interleaved rounds
   (each runner in turn, so a busy spell of the machine hits both), at most BUDGET_S of measurement;
3. takes the medians and picks the challenger only if it is faster than onnxruntime by more than MARGIN (noise):
   `auto` never runs slower than onnxruntime (today's choice) by more than noise.

The choice is written to the user's cache folder (core/usercache.py: auto/<key>.json) and read back through
core/jsonio.py with every field checked; a damaged file is measured again (with a warning), never trusted. A
choice older than MAX_AGE_DAYS is measured again: one probe on a busy machine (another job on the cores, a
thermal spell) would otherwise decide for good; the reason printed says when the choice was measured. A probe
that finds the machine busy (`busy_reason`: other jobs' load above half the cores, or rounds spread as `bench` warns)
decides for its own run only and records nothing.
GAN_DEPLOY_AUTO_MEASURE=0 turns the measurement off (onnxruntime, as before; the test suite sets it so that
outputs never depend on a timing).
"""
from __future__ import annotations

import functools
import hashlib
import json
import statistics
import time  # only for the date a choice was measured; timing is core/timing.py's
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from gan_deploy.core.errors import GanDeployError, warn

if TYPE_CHECKING:
    from gan_deploy.artifacts.artifact import Artifact
    from gan_deploy.backends.base import Runner

ENV_MEASURE = "GAN_DEPLOY_AUTO_MEASURE"  # "0": auto on a CPU takes onnxruntime unmeasured, as before this module
MARGIN = 0.05  # a challenger must be faster than the incumbent's median by more than this share
# A probe counts as busy by bench's rule (core/timing.NOISY_SPREAD) or by other jobs' load. Runtimes do not suffer
# a busy machine alike (OpenVINO's pinned threads measured 2.6x slower with another job on the 2 cores, onnxruntime
# 1.2x), so a choice measured then is used for this run only, never recorded.
ROUNDS = 7
MIN_ROUNDS = 3
BUDGET_S = 3.0  # measurement time per candidate, at most (after MIN_ROUNDS)
ROUND_S = 0.02  # a round calls `infer` enough times to last about this long (batch 1 takes ~0.2 ms)
CHALLENGERS = ("openvino",)
FORMAT = "gan-deploy-auto-choice"
MAX_AGE_DAYS = 7
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
VERSION = 1

Measure = Callable[[dict[str, "Runner"], int], dict[str, list[float]]]


def decide(medians_ms: dict[str, float], incumbent: str, margin: float = MARGIN) -> tuple[str, str]:
    """(the backend to run, why) from median milliseconds per batch; the incumbent unless a challenger beats it by
    more than `margin`. A challenger without a figure (it refused the model) is not a candidate."""
    base = medians_ms[incumbent]
    best, best_ms = incumbent, base
    for name, ms in medians_ms.items():
        if name != incumbent and ms * (1 + margin) < base and ms < best_ms:
            best, best_ms = name, ms
    figures = ", ".join(f"{n} {ms:.3g} ms" for n, ms in sorted(medians_ms.items(), key=lambda kv: kv[1]))
    if best == incumbent:
        return incumbent, f"{figures}: no challenger faster by more than {margin:.0%}"
    return best, f"{figures}: {base / best_ms:.2f}x {incumbent}"


def measure(runners: dict[str, "Runner"], batch_size: int) -> dict[str, list[float]]:
    """Seconds per `infer` call of each runner on one batch, one figure per round (core/timing.measure_rotated)."""
    from gan_deploy.core.latents import latents_range
    from gan_deploy.core.timing import measure_rotated

    z = latents_range(0, 0, batch_size, next(iter(runners.values())).spec.latent_dim)
    calls: dict[str, Callable[[], Any]] = {n: functools.partial(r.infer, z) for n, r in runners.items()}
    return measure_rotated(calls, ROUND_S, ROUNDS, MIN_ROUNDS, BUDGET_S)


def machine_load() -> float:
    """The 1-minute load average (0 where the OS has none): what other jobs ask of the cores before the probe."""
    import os

    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def busy_reason(load: float, cores: int, times: dict[str, list[float]]) -> str | None:
    """Why a probe's figures should not decide for good (None: they may): other jobs' load above half the cores
    before it started, or a runner whose rounds spread beyond NOISY_SPREAD."""
    import math

    from gan_deploy.core.timing import NOISY_SPREAD

    if cores and load > cores / 2:  # one other busy job on 2 cores: OpenVINO's pinned threads already suffer
        return f"load average {load:.1f} on {cores} cores before the probe"
    for name, t in times.items():  # nearest-rank p90: a probe has 3-7 rounds, too few to interpolate between
        v = sorted(t)
        p50, p90 = statistics.median(v), v[max(0, math.ceil(0.9 * len(v)) - 1)]
        if p50 > 0 and p90 / p50 > NOISY_SPREAD:
            return f"{name}'s rounds spread p90/p50 {p90 / p50:.1f} > {NOISY_SPREAD}"
    return None


def probe_key(artifact: "Artifact", names: list[str], batch_size: int, threads: int, spin: bool = True) -> dict[str, Any]:
    """What the choice depends on: the file, the machine, the threads, the batch size and the runtimes' versions."""
    import os

    from gan_deploy.core.hardware import cpu_flags, cpu_model

    return {"sha256": artifact.sha256, "cpu": cpu_model(), "cpu_flags": hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16],
            "cores": os.cpu_count() or 0, "threads": threads, "batch_size": batch_size, "spin": spin,
            "runtimes": {n: _version(n) for n in names}}


def _version(name: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "unknown"


def cache_file(key: dict[str, Any]) -> Path | None:
    from gan_deploy.core.usercache import cache_dir

    folder = cache_dir("auto")
    if folder is None:
        return None
    return folder / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json")


def _parse_time(text: str) -> float | None:
    """Seconds since the epoch of a TIME_FORMAT string (UTC), or None when it is not one."""
    import calendar

    try:
        return float(calendar.timegm(time.strptime(text, TIME_FORMAT)))
    except ValueError:
        return None


def read_choice(path: Path, key: dict[str, Any], candidates: list[str], now: float | None = None) -> tuple[str, str, str] | None:
    """(choice, why, measured_at) recorded for `key`; None when there is none or it is older than MAX_AGE_DAYS. A
    damaged or foreign file: a warning, then None."""
    from gan_deploy.core.jsonio import field, read_document

    if not path.exists():
        return None
    what, hint = "auto's cached backend choice", f"delete {path}; it is measured again"
    try:
        d = read_document(path, FORMAT, VERSION, what=what, hint=hint)
        if field(d, "key", path, what, kind="dict", hint=hint) != key:
            return None  # another machine's or version's choice under a colliding name: measure again
        choice = field(d, "choice", path, what, kind="str", check=lambda v: v in candidates,
                       expected=" or ".join(candidates), hint=hint)
        why = field(d, "why", path, what, kind="str", check=lambda v: 0 < len(v) <= 2000, expected="a sentence", hint=hint)
        medians = field(d, "median_ms", path, what, kind="dict", hint=hint)
        for name, ms in medians.items():
            field(medians, name, path, what, kind="number", check=lambda v: v > 0, expected="milliseconds > 0", hint=hint)
        measured_at = field(d, "measured_at", path, what, kind="str", check=lambda v: _parse_time(v) is not None,
                            expected=f"a UTC time {TIME_FORMAT}", hint=hint)
        if medians and choice not in medians:
            raise GanDeployError(f"{what} field is invalid", f"{path}: choice={choice!r} has no median_ms", hint=hint)
    except GanDeployError as e:
        warn(f"ignoring a damaged cache file: {e}")
        return None
    age_s = (time.time() if now is None else now) - (_parse_time(measured_at) or 0.0)
    if not 0 <= age_s <= MAX_AGE_DAYS * 86400:  # old (or from a clock ahead of ours): measured again
        return None
    return choice, why, measured_at


def write_choice(path: Path, key: dict[str, Any], choice: str, why: str, medians_ms: dict[str, float]) -> None:
    from gan_deploy.core.fileio import atomic_write_text

    doc = {"format": FORMAT, "format_version": VERSION, "key": key, "choice": choice, "why": why,
           "median_ms": medians_ms, "measured_at": time.strftime(TIME_FORMAT, time.gmtime())}
    try:
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    except OSError as e:
        warn(f"could not record auto's choice in {path} ({e.strerror or type(e).__name__}); it is measured again next time")


def measured_choice(artifact: "Artifact", incumbent: str, challengers: list[str], batch_size: int, threads: int,
                    make: Callable[[str], "Runner"], vet: Callable[["Runner"], Any] | None = None,
                    measure_fn: Measure = measure, *, spin: bool = True) -> tuple[str, str]:
    """(backend, why) for `auto`: the cached choice for this key, else a probe of the incumbent and the challengers
    (built by `make(name)`, vetted by `vet(runner)` after activation), recorded for the next start."""
    names = [incumbent, *challengers]
    key = probe_key(artifact, names, batch_size, threads, spin)
    path = cache_file(key)
    if path is not None:
        cached = read_choice(path, key, names)
        if cached is not None:
            return cached[0], f"{cached[1]}; measured before, at {cached[2]}, kept {MAX_AGE_DAYS} days in {path}"
    runners: dict[str, Runner] = {}
    refused: list[str] = []
    load = machine_load()  # before our own runners add to it
    try:
        for name in names:
            try:
                r = make(name).activate()
                if vet is not None and name != incumbent:
                    vet(r)
                runners[name] = r
            except GanDeployError as e:
                if name == incumbent:
                    raise
                refused.append(f"{name} refused this model ({e.one_line().split('. Note:')[0]})")
        times = measure_fn(runners, batch_size) if len(runners) > 1 else {incumbent: [0.0]}
    finally:
        for r in runners.values():
            r.close()
    medians = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    if len(runners) > 1:
        choice, why = decide(medians, incumbent)
        why = f"measured at batch {batch_size}: {why}"
    else:
        choice, why, medians = incumbent, "no challenger can run it", {}
    if refused:
        why += "; " + "; ".join(refused)
    busy = busy_reason(load, key["cores"], times) if len(runners) > 1 else None
    if busy is not None:
        return choice, f"{why}; the machine was busy ({busy}): this choice is for this run only, measured again next time"
    if path is not None:
        write_choice(path, key, choice, why, {n: max(round(ms, 6), 1e-6) for n, ms in medians.items()})
    return choice, why

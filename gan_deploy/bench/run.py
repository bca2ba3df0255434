"""Backends side by side on the same latents: latency, throughput, speed-up and error against eager.

`bench(artifact, BenchOptions(...))` is what `gan-deploy bench` runs; the options check themselves when built,
and `progress` (core.progress) prints a "measuring ..." line per backend and batch size on stderr unless False.

The reference is eager FP32 PyTorch when the artifact has PyTorch weights, else onnxruntime on the FP32
ONNX. Variants (e.g. an INT8 or FP16 ONNX from `quantize`) are measured with onnxruntime beside them, and with
OpenVINO when it is among the backends (a row per runtime, each with the gate's verdict on that runtime).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.spec import kind_name, kinds_phrase
from gan_deploy.backends import make_runner, runner_class, unavailable_reason
from gan_deploy.backends.torch_common import TORCH_PRECISIONS
from gan_deploy.core.errors import BackendUnavailable, GanDeployError
from gan_deploy.core.fileio import atomic_path, atomic_write_text
from gan_deploy.core.latents import MAX_SEED, latents_range
from gan_deploy.core.timing import NOISY_SPREAD, LatencyStats, measure_interleaved

DEFAULT_BATCH_SIZES = (1, 16, 64, 256)


@dataclass
class BenchRow:
    backend: str  # label: backend name, or backend:variant
    detail: str
    stats: LatencyStats
    speedup: float | None  # median latency of the reference / this, same batch size, measured interleaved
    max_abs_err: float | None  # vs the reference's images, same latents
    psnr_db: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "detail": self.detail, **self.stats.to_dict(), "speedup_vs_reference": self.speedup,
                "max_abs_err": self.max_abs_err, "psnr_db": self.psnr_db, **self.extra}


@dataclass
class BenchReport:
    artifact: str
    reference: str
    rows: list[BenchRow]
    skipped: dict[str, str]
    flops_per_image: int | None
    cpu_peak_gflops: float | None
    cpu_peak_how: str
    settings: dict[str, Any]
    gate: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> gate.gate_figures(...) vs the reference

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "reference": self.reference, "rows": [r.to_dict() for r in self.rows],
                "gate": self.gate,
                "skipped": self.skipped, "flops_per_image": self.flops_per_image, "cpu_peak_gflops": self.cpu_peak_gflops,
                "cpu_peak_how": self.cpu_peak_how, "settings": self.settings}

    def best_row(self) -> "BenchRow | None":
        """The fastest row (images/s from the median) of the FP32-family rows the peak is quoted for."""
        return max(self.rows, key=lambda r: r.stats.images_per_s, default=None)

    def _peak_lines(self) -> list[str]:
        best = self.best_row()
        if best is None or not self.flops_per_image:
            return []
        achieved = best.stats.images_per_s * self.flops_per_image / 1e9  # GFLOP/s
        gpu = self.settings.get("gpu")
        if gpu:
            from gan_deploy.bench.flops import gpu_peak_tflops

            prec = best.backend.split(":")[1] if ":" in best.backend else "fp32"
            peak = gpu_peak_tflops(gpu, prec)
            if peak is None:
                return [f"best: {best.backend} at batch {best.stats.batch_size}: {achieved / 1e3:.2f} TFLOP/s on {gpu} "
                        "(peak unknown for this GPU)"]
            return [f"best: {best.backend} at batch {best.stats.batch_size}: {achieved / 1e3:.2f} TFLOP/s = "
                    f"{100 * achieved / 1e3 / peak[0]:.1f}% of {gpu}'s {peak[0]:g} TFLOP/s ({peak[1]})"]
        fp32_rows = [r for r in self.rows if ":" not in r.backend]  # variants such as INT8 are not FP32 work
        best = max(fp32_rows, key=lambda r: r.stats.images_per_s, default=None)
        if best is None or not self.cpu_peak_gflops:
            return []
        achieved = best.stats.images_per_s * self.flops_per_image / 1e9
        return [f"best: {best.backend} at batch {best.stats.batch_size}: {achieved:.1f} GFLOP/s = "
                f"{100 * achieved / self.cpu_peak_gflops:.1f}% of this CPU's peak {self.cpu_peak_gflops:.0f} GFLOP/s "
                f"({self.cpu_peak_how})"]

    def table(self) -> str:
        head = f"{'backend':<22} {'batch':>5} {'mean ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>10} {'speedup':>8} {'max err':>9} {'PSNR dB':>8}"
        lines = [head, "-" * len(head)]
        for r in sorted(self.rows, key=lambda r: (r.stats.batch_size, r.backend)):
            s = r.stats
            sp = f"{r.speedup:.2f}x" if r.speedup else "-"
            err = f"{r.max_abs_err:.1e}" if r.max_abs_err is not None else "-"
            psnr = ("inf" if r.psnr_db == math.inf else f"{r.psnr_db:.1f}") if r.psnr_db is not None else "-"
            lines.append(f"{r.backend:<22} {s.batch_size:>5} {s.mean_ms:>9.3f} {s.p50_ms:>9.3f} {s.p90_ms:>9.3f} {s.p99_ms:>9.3f} "
                         f"{s.images_per_s:>10,.0f} {sp:>8} {err:>9} {psnr:>8}")
        for name, why in self.skipped.items():
            lines.append(f"skipped {name}: {why}")
        details = dict((r.backend, r.detail) for r in self.rows)
        lines.append("rows: " + "; ".join(f"{k} = {v}" for k, v in details.items()))
        noisy = [f"{r.backend}@{r.stats.batch_size} ({r.stats.spread:.1f}x)" for r in self.rows if r.stats.spread > NOISY_SPREAD]
        if noisy:
            lines.append(f"warning: p90/p50 above {NOISY_SPREAD} for {', '.join(noisy[:8])}{' ...' if len(noisy) > 8 else ''}: "
                         "the machine was busy; rerun on a quiet machine before trusting those rows")
        if self.flops_per_image:
            lines.append(f"{self.flops_per_image / 1e6:.1f} MFLOP per image")
            lines += self._peak_lines()
        lines.append(f"reference for speedup/error: {self.reference}")
        if self.gate:
            n = self.settings.get("gate_samples")
            lines.append("")
            lines.append(f"quality-gate figures against the reference on {n} gate latents (see `gan-deploy quantize --help`):")
            head = (f"{'backend':<22} {'NaN/Inf':>8} {'saturated':>9} {'PSNR worst':>10} {'PSNR median':>11} {'FD':>9} {'FD noise':>9} "
                    f"{'FD ratio':>8}  gate")
            lines += [head, "-" * len(head)]
            for label, g in self.gate.items():
                def f(key: str, fmt: str) -> str:
                    v = g.get(key)
                    return "-" if v is None else format(v, fmt)
                lines.append(f"{label:<22} {g['nonfinite']:>8} {f('saturated_rate', '.2%'):>9} {f('psnr_worst_db', '.1f'):>10} "
                             f"{f('psnr_median_db', '.1f'):>11} {f('fd', '.3g'):>9} {f('fd_noise', '.3g'):>9} {f('fd_ratio', '.3g'):>8}  "
                             f"{g.get('verdict', '-')}")
        return "\n".join(lines)


def psnr(a: np.ndarray, b: np.ndarray, span: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(span * span / mse)


@dataclass
class BenchOptions:
    """Everything `gan-deploy bench` decides, as one object; checks itself when built (`validate`)."""

    backends: tuple[str, ...] | None = None  # None: every registered backend that can run here
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 5  # unmeasured calls per backend and batch size
    iters: int = 30  # measured calls (at least)
    min_time_s: float = 0.5
    max_time_s: float = 10.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # onnxruntime intra-op threads
    variants: tuple[str | Path, ...] = ()  # reduced-precision ONNX files measured with onnxruntime beside the rest
    gate_samples: int = 0  # >0: the quality gate's figures of every row on this many images
    precisions: tuple[str, ...] | None = None  # torch backends' precisions; None: all four on CUDA, fp32 on the CPU
    compile_mode: str | None = None  # torch.compile mode (compile.COMPILE_MODES); None: Inductor's default
    rounds: int = 5  # interleaved measurement rounds (noise hits every backend alike)
    progress: bool | None = None  # "measuring ..." lines on stderr unless False (core.progress)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Ranges and choices from the library's constants, one GanDeployError line each; nothing is loaded."""
        from gan_deploy.backends import BACKENDS
        from gan_deploy.backends.compile import COMPILE_MODES
        from gan_deploy.core.device import check_device

        if self.backends is not None:
            if not self.backends:
                raise GanDeployError("no backend named", "an empty list", expected="backends such as eager,onnxruntime",
                                     hint="leave the backends out to measure every backend available here")
            for name in self.backends:
                if name not in BACKENDS:
                    raise GanDeployError("unknown backend", repr(name), expected=f"one of {', '.join(BACKENDS)}")
        if not self.batch_sizes or any(not isinstance(b, Integral) or b < 1 for b in self.batch_sizes):
            raise GanDeployError("bad batch sizes", list(self.batch_sizes), expected="one or more integers >= 1")
        for what, value, low in (("warm-up calls", self.warmup, 0), ("measured calls", self.iters, 1),
                                 ("measurement rounds", self.rounds, 1), ("gate samples", self.gate_samples, 0)):
            if not isinstance(value, Integral) or value < low:
                raise GanDeployError(f"bad number of {what}", value, expected=f">= {low}")
        if not 0 <= self.min_time_s <= self.max_time_s:
            raise GanDeployError("bad measuring times", f"min {self.min_time_s} s, max {self.max_time_s} s",
                                 expected="0 <= min <= max seconds")
        if not 0 <= self.seed <= MAX_SEED:
            raise GanDeployError("bad seed", self.seed, expected=f"0 <= seed <= {MAX_SEED}")
        check_device(self.device)
        if self.threads is not None and (not isinstance(self.threads, Integral) or self.threads < 1):
            raise GanDeployError("bad number of threads", self.threads, expected=">= 1")
        if self.threads is not None:
            from gan_deploy.core.errors import check_at_most
            from gan_deploy.core.hardware import compute_threads_bound

            check_at_most("too many threads", "--threads", self.threads, *compute_threads_bound(),
                          hint="leave --threads out: onnxruntime then uses every core")
        if self.precisions is not None:
            bad = [p for p in self.precisions if p not in TORCH_PRECISIONS]
            if not self.precisions or bad:
                raise GanDeployError("bad precisions", list(self.precisions), expected=f"one or more of {', '.join(TORCH_PRECISIONS)}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise GanDeployError("unknown torch.compile mode", repr(self.compile_mode), expected=" | ".join(COMPILE_MODES))


def bench(artifact: Artifact, opts: BenchOptions | None = None) -> BenchReport:
    """Measure each backend (and variant) at each batch size on identical latents."""
    from gan_deploy.backends.memory import check_batch_fits
    from gan_deploy.core.device import resolve_device
    from gan_deploy.core.progress import progress_lines

    opts = opts or BenchOptions()
    opts.validate()  # again: a dataclass may have been changed since it was built
    say = progress_lines(opts.progress)
    variants = [_load_variant(v, artifact) for v in opts.variants]
    runnable, skipped = _runnable(artifact, opts.backends)
    dev = resolve_device(opts.device)
    precisions = opts.precisions or (TORCH_PRECISIONS if dev.startswith("cuda") else ("fp32",))
    if not runnable:  # e.g. an engine on a machine without TensorRT: say what would run it, not what cannot
        from gan_deploy.backends import unavailable_hint
        raise BackendUnavailable("no backend can benchmark this artifact here", artifact.describe(),
                                 expected="; ".join(f"{n} ({why})" for n, why in skipped.items()), hint=unavailable_hint(artifact))
    # the reference: eager when the artifact has PyTorch weights, onnxruntime for ONNX, the engine itself for an engine
    ref_name = {"checkpoint": "eager", "engine": "tensorrt"}.get(artifact.kind, "onnxruntime")
    jobs, ref_runner = _runners(artifact, runnable, variants, precisions, dev, opts, ref_name, skipped)
    # every row keeps its images of the largest batch for the error columns: refuse what cannot fit before allocating
    runners = len(jobs) + (ref_runner not in [r for _, r in jobs])
    check_batch_fits(artifact, max(opts.batch_sizes), dev, image_copies=runners + 2, activation_copies=runners, option="--batch-sizes")
    if opts.gate_samples:
        check_batch_fits(artifact, opts.gate_samples, dev, image_copies=3, activation_copies=0, option="--gate-samples")
    span = artifact.spec.value_range[1] - artifact.spec.value_range[0]
    rows: list[BenchRow] = []
    for b in opts.batch_sizes:
        z = latents_range(opts.seed, 0, b, artifact.spec.latent_dim)
        ref_images = ref_runner.infer(z)
        images = {label: runner.infer(z) for label, runner in jobs}
        timed: dict[str, tuple[Callable[[], Any], Callable[[], None]]] = {
            label: (functools.partial(runner.infer, z), runner.synchronize) for label, runner in jobs}
        if ref_runner not in [r for _, r in jobs]:
            timed[ref_name] = (functools.partial(ref_runner.infer, z), ref_runner.synchronize)
        stats = measure_interleaved(timed, b, opts.warmup, opts.iters, opts.rounds, opts.min_time_s, opts.max_time_s,
                                    lambda what: say(f"measuring {what} ..."))
        ref_p50 = stats[ref_name].p50_ms
        for label, runner in jobs:
            st = stats[label]
            rows.append(BenchRow(label, runner.describe(), st, ref_p50 / st.p50_ms if st.p50_ms else None,
                                 float(np.abs(images[label] - ref_images).max()), psnr(images[label], ref_images, span), {}))
    gate: dict[str, dict[str, Any]] = {}
    if opts.gate_samples:
        gate = _gate_figures(jobs, ref_runner, artifact, opts.gate_samples, lambda what: say(f"measuring {what} ..."))
    flops = None
    if artifact.kind == "checkpoint":
        from gan_deploy.bench.flops import generator_flops
        flops = generator_flops(artifact.torch_module(), artifact.spec.latent_shape)
    from gan_deploy.bench.flops import cpu_peak_gflops
    peak, how = cpu_peak_gflops()
    return BenchReport(artifact.describe(), f"{ref_name} ({ref_runner.describe()})", rows, skipped, flops, peak, how,
                       {"batch_sizes": list(opts.batch_sizes), "warmup": opts.warmup, "iters": opts.iters,
                        "min_time_s": opts.min_time_s, "seed": opts.seed, "device": dev, "threads": opts.threads,
                        "gate_samples": opts.gate_samples, "precisions": list(precisions), "rounds": opts.rounds,
                        "gpu": _gpu_name(dev)}, gate)


def _runnable(artifact: Artifact, backends: tuple[str, ...] | None) -> tuple[list[str], dict[str, str]]:
    """(backends to measure, skipped: name -> why). A backend asked for by name that cannot run is an error."""
    from gan_deploy.backends import BACKENDS

    requested = list(dict.fromkeys(backends)) if backends else list(BACKENDS)
    runnable: list[str] = []
    skipped: dict[str, str] = {}
    for name in requested:
        cls = runner_class(name)
        reason = unavailable_reason(name)
        if artifact.kind not in cls.accepts:
            reason = f"it cannot run {kind_name(artifact.kind)} (it runs {kinds_phrase(cls.accepts)})"
        if reason:
            if backends:  # asked for by name: an error, not a silent skip
                able = [n for n in BACKENDS if artifact.kind in runner_class(n).accepts]
                raise GanDeployError(f"backend '{name}' cannot be benchmarked", reason,
                                     hint=(f"drop it from --backends (for {kind_name(artifact.kind)}: {', '.join(able)})"
                                           if able else "leave --backends out to measure every backend that can run it"))
            skipped[name] = reason
        else:
            runnable.append(name)
    return runnable, skipped


def _runners(artifact: Artifact, runnable: list[str], variants: list[Artifact], precisions: tuple[str, ...], dev: str,
             opts: BenchOptions, ref_name: str,
             skipped: dict[str, str]) -> tuple[list[tuple[str, Any]], Any]:
    """([(row label, runner)], the reference runner): a row per PyTorch backend and precision (backends'
    precision rule: `make_runner(..., precision=)`), per other backend, per variant (onnxruntime)."""
    from gan_deploy.backends import TORCH_BACKENDS

    options: dict[str, Any] = {"threads": opts.threads} if opts.threads else {}
    jobs: list[tuple[str, Any]] = []
    for name in runnable:
        if name in TORCH_BACKENDS:
            for prec in precisions:
                jobs.append((name if prec == "fp32" else f"{name}:{prec}",
                             make_runner(name, artifact, dev, precision=prec, compile_mode=opts.compile_mode, **options)))
        else:
            jobs.append((name, make_runner(name, artifact, dev, **options)))
    for v in variants:
        jobs.append((f"onnxruntime:{v.precision}", make_runner("onnxruntime", v, dev, **options)))
        if "openvino" in runnable:  # the variant on OpenVINO too: its speed, and the gate's verdict on that runtime
            try:
                jobs.append((f"openvino:{v.precision}", make_runner("openvino", v, dev, **options).activate()))
            except GanDeployError as e:  # e.g. OpenVINO computes another image shape for this model: said, not fatal
                skipped[f"openvino:{v.precision}"] = e.one_line()
    # the reference is strict FP32 (TF32 off on a GPU): eager when the artifact has PyTorch weights
    ref_runner = next((r for n, r in jobs if n == ref_name), None) or make_runner(ref_name, artifact, dev, **options)
    return jobs, ref_runner


def _load_variant(path: str | Path, artifact: Artifact) -> Artifact:
    """A reduced-precision ONNX measured beside the artifact: it must exist (quantize makes it) and be the same generator."""
    from gan_deploy.artifacts.load import load_artifact

    p = Path(path)
    if not p.exists():
        name = p.name.lower()
        how = ("gan-deploy quantize --fp16" if "fp16" in name else
               "gan-deploy quantize --int8" + (" --target tensorrt" if "tensorrt" in name else "") if "int8" in name else
               "gan-deploy quantize --int8 (or --fp16)")
        raise GanDeployError("--variant file not found", str(p), expected="a reduced-precision ONNX made by `gan-deploy quantize`",
                             hint=f"make it first: `{how}`" + (f" --onnx ... -o {p}" if "digits_dcgan" not in name else ""))
    v = load_artifact(onnx=p)
    a, b = artifact.spec, v.spec
    if (a.latent_dim, a.image_shape) != (b.latent_dim, b.image_shape):
        raise GanDeployError("--variant is another generator", f"{p}: Z={b.latent_dim} image {'x'.join(map(str, b.image_shape))} "
                             f"vs Z={a.latent_dim} image {'x'.join(map(str, a.image_shape))} of {artifact.path}",
                             expected="a quantized model of the benchmarked generator",
                             hint="pass the generator it was made from with --checkpoint / --onnx")
    return v


def _gate_figures(jobs, ref_runner, artifact: Artifact, n: int, say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """The quality gate's figures for every non-reference backend, on the gate's own latents (not the timing ones)."""
    from gan_deploy.precision.gate import batched, check_artifact, gate_figures, gate_latents, thresholds_for

    z = gate_latents(n, artifact.spec.latent_dim)
    ref = batched(ref_runner.infer, z, 256)
    fresh = batched(ref_runner.infer, gate_latents(n, artifact.spec.latent_dim, start=n), 256)  # the FD noise floor
    out: dict[str, dict[str, Any]] = {}
    for label, runner in jobs:
        if runner is ref_runner:
            continue
        say(f"gate figures of {label} on {n} images")
        images = batched(runner.infer, z, 256)
        fig = gate_figures(images, ref, artifact.spec.value_range, fresh)
        fig.pop("_quality", None)
        # the verdict the gate would give this row: the same thresholds as quantize / build-engine for its precision
        prec = label.split(":")[1] if ":" in label else getattr(runner, "precision", "fp32")
        report = check_artifact(images, ref, thresholds_for(GATE_THRESHOLDS_FOR.get(prec, "fp32")), prec,
                                artifact.spec.value_range, fresh)
        fig["verdict"] = "pass" if report.accepted else "FAIL " + ",".join(report.failed)
        out[label] = fig
    return out


# which gate thresholds a row's precision is held to: TF32 keeps FP16's 10-bit mantissa, BF16 has 7 bits (an
# error like INT8's); torch's own FP32 rows are held to FP32's
GATE_THRESHOLDS_FOR = {"fp32": "fp32", "tf32": "fp16", "fp16": "fp16", "bf16": "int8", "int8": "int8"}


def write_json(report: BenchReport, path: str | Path) -> Path:
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")
    return Path(path)


def write_plot(report: BenchReport, path: str | Path) -> Path:
    """Latency per batch and throughput vs batch size, one line per backend (log-log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in dict.fromkeys(r.backend for r in report.rows):
        rs = sorted((r for r in report.rows if r.backend == label), key=lambda r: r.stats.batch_size)
        bs = [r.stats.batch_size for r in rs]
        ax1.errorbar(bs, [r.stats.p50_ms for r in rs],
                     yerr=[[r.stats.p50_ms - r.stats.min_ms for r in rs], [r.stats.p99_ms - r.stats.p50_ms for r in rs]],
                     marker="o", capsize=3, label=label)
        ax2.plot(bs, [r.stats.images_per_s for r in rs], marker="o", label=label)
    for ax, title, ylabel in ((ax1, "latency per batch (p50, bars: min..p99)", "ms"), (ax2, "throughput", "images / s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"gan-deploy bench on {report.settings.get('device')}: {Path(report.artifact.split(' ')[1]).name}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def compare_latency(artifact: Artifact, chosen: str, batch_size: int, device: str = "auto", seed: int = 0,
                    iters: int = 20) -> list[dict[str, Any]]:
    """The chosen backend against onnxruntime and eager on the same batch (generate --compare)."""
    names = list(dict.fromkeys([chosen, "onnxruntime", "eager"]))
    names = [n for n in names if unavailable_reason(n) is None and artifact.kind in runner_class(n).accepts]
    rep = bench(artifact, BenchOptions(tuple(names), (batch_size,), warmup=3, iters=iters, min_time_s=0.3, max_time_s=5,
                                       seed=seed, device=device, progress=False))
    return [r.to_dict() for r in rep.rows]


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch
    return str(torch.cuda.get_device_name(torch.device(device)))

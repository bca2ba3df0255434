"""The quality gate: a reduced-precision artifact is accepted only if its images match eager FP32's.

The known failures of FP16/INT8 generators are NaN or Inf (FP16 overflow), solid-colour or washed-out
images (saturation, a collapsed layer), per-image damage (a badly quantized layer) and a shifted image
distribution. Each has a check, all on the same latents for the candidate and the FP32 reference:

* nonfinite      NaN/Inf pixel count                                    <= max_nonfinite (0)
* saturation     rate of pixels at either end of the value range, minus the reference's rate
                                                                        <= max_saturation_increase
* psnr_worst     lowest per-image PSNR, peak = value-range span          >= min_psnr_worst
* psnr_median    median per-image PSNR                                   >= min_psnr_median
* fd_ratio       quality-score FD(candidate, FP32) / FD(FP32 on these latents, FP32 on fresh latents)
                                                                        <= max_fd_ratio

The FD bound is relative to the sampling noise floor, measured on the spot: FD between two independent
sets of n FP32 images of this generator. fd_ratio 0.25 means "the reduced-precision images are four times
closer to FP32's than a fresh draw of the same size is", so the distribution moved well below what anyone
could detect at this n. See `THRESHOLDS` for why each default is what it is.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import latents_range

GATE_SEED = 104_729  # gate latents: never the calibration latents (calibrate.CALIB_SEED), so calibration cannot overfit them
DEFAULT_GATE_SAMPLES = 1000
PSNR_CAP_DB = 200.0  # identical images have infinite PSNR; 200 dB is far above float32 rounding (~140 dB) and JSON-safe
SATURATION_EDGE = 0.005  # a pixel within 0.5% of the span from either end counts as saturated (tanh(2.99) = 0.995)


class GateRejected(GanDeployError):
    """A reduced-precision artifact failed the quality gate; `.report` says which checks."""

    def __init__(self, report: "GateReport", what: str, hint: str | None = None):
        self.report = report
        failed = "; ".join(c.line() for c in report.checks if not c.passed)
        super().__init__(f"{what} failed the quality gate", failed, hint=hint)


@dataclass(frozen=True)
class GateThresholds:
    max_nonfinite: int = 0
    max_saturation_increase: float = 0.01
    min_psnr_worst: float = 20.0
    min_psnr_median: float = 30.0
    max_fd_ratio: float | None = 0.25  # None: skip the quality-score check

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Defaults per precision, on a value range of span 2 ([-1, 1]); PSNR is span-relative, so they hold for [0, 1] too.
# * nonfinite 0: one NaN pixel is a broken kernel or an FP16 overflow, never rounding.
# * saturation +1 point (int8) / +0.5 point (fp16/fp32 engines): a collapsed or exploding layer drives whole images
#   to the rails ("solid colour"); rounding moves a pixel across the 0.5% edge only rarely. The reference's own
#   rate is subtracted because trained digit generators have a lot of background exactly at -1.
# * PSNR int8 worst 20 dB / median 30 dB: 20 dB on span 2 is RMS error 0.2 (10% of the range, ~25 grey levels) on the
#   worst of n images -- still clearly the same picture; 30 dB median is RMS 0.06 (~8 grey levels), the INT8 noise of
#   an 8-bit activation grid after a few layers. Measured on the shipped model: see docs/precision.md.
# * PSNR fp16 worst 30 dB / median 45 dB: FP16 keeps 11 significant bits, so per-image error is ~1e-3 (~60 dB);
#   30 dB worst still lets one image near a tanh knee differ, 45 dB median catches a systematically wrong layer.
# * fd_ratio 0.25 (int8) / 0.1 (fp16): see the module doc; measured good models sit far below (docs/precision.md).
THRESHOLDS: dict[str, GateThresholds] = {
    "int8": GateThresholds(0, 0.01, 20.0, 30.0, 0.25),
    "fp16": GateThresholds(0, 0.005, 30.0, 45.0, 0.1),
    "fp32": GateThresholds(0, 0.005, 30.0, 45.0, 0.1),  # a TensorRT FP32 engine may use TF32 (10-bit mantissa)
}


def thresholds_for(precision: str, **overrides: Any) -> GateThresholds:
    """The default thresholds of a precision with the given fields replaced (None values are ignored)."""
    if precision not in THRESHOLDS:
        raise GanDeployError("unknown precision", repr(precision), expected=f"one of {', '.join(THRESHOLDS)}")
    return replace(THRESHOLDS[precision], **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class GateCheck:
    name: str
    value: float | None  # None: not computed (e.g. the quality score of images that contain NaN)
    limit: float
    op: str  # "<=" or ">="
    passed: bool
    note: str = ""

    def line(self) -> str:
        v = "n/a" if self.value is None else f"{self.value:.4g}"
        rel = self.op if self.passed else {"<=": ">", ">=": "<"}[self.op]
        s = f"{self.name} {v} {rel} {self.limit:g}"
        return s + (f" ({self.note})" if self.note else "")


@dataclass
class GateReport:
    precision: str
    n_images: int
    figures: dict[str, Any]
    checks: list[GateCheck]
    thresholds: GateThresholds
    quality: dict[str, Any] | None = None  # QualityScore.to_dict() of candidate vs FP32

    @property
    def accepted(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def summary(self) -> str:
        lines = [f"quality gate ({self.precision}, {self.n_images} images vs eager FP32 on the same latents): "
                 + ("ACCEPTED" if self.accepted else f"REJECTED ({', '.join(self.failed)})")]
        for c in self.checks:
            lines.append(f"  {'ok  ' if c.passed else 'FAIL'} {c.line()}")
        f = self.figures
        lines.append(f"  saturated pixels {f['saturated_rate']:.4f} (FP32 {f['reference_saturated_rate']:.4f}), "
                     f"PSNR mean {f['psnr_mean_db']:.1f} dB, max abs err {f['max_abs_err']:.3g}")
        if self.quality:
            q = self.quality
            lines.append(f"  quality vs FP32: FD {q['fd']:.4g} (noise floor {f.get('fd_noise', float('nan')):.4g}), "
                         f"precision {q['precision']:.3f}, recall {q['recall']:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "n_images": self.n_images, "accepted": self.accepted,
                "failed": self.failed, "figures": _json_safe(self.figures),
                "checks": [_json_safe(asdict(c)) for c in self.checks], "thresholds": self.thresholds.to_dict(),
                "quality": self.quality}


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def gate_latents(n: int, latent_dim: int, start: int = 0) -> np.ndarray:
    """The gate's latents [n, Z]: drawn from the prior under GATE_SEED, so every gate run sees the same images."""
    return latents_range(GATE_SEED, start, n, latent_dim)


def _as_images(x: Any, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        raise GanDeployError(f"bad {name} images", f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}", expected="a float array [N, C, H, W]")
    return x


def image_figures(images: np.ndarray, reference: np.ndarray, value_range: Sequence[float] = (-1.0, 1.0)) -> dict[str, Any]:
    """Per-pixel figures of `images` against `reference` (same latents, same shape): NaN/Inf, saturation, PSNR."""
    a = _as_images(images, "candidate")
    b = _as_images(reference, "reference")
    if a.shape != b.shape:
        raise GanDeployError("candidate and reference images differ in shape", f"{a.shape} vs {b.shape}", expected="the same latents through both")
    lo, hi = float(value_range[0]), float(value_range[1])
    span = hi - lo
    n = len(a)
    a64 = a.reshape(n, -1).astype(np.float64)
    b64 = b.reshape(n, -1).astype(np.float64)
    finite = np.isfinite(a64)
    nonfinite = int((~finite).sum())
    edge = SATURATION_EDGE * span

    def saturated_rate(x: np.ndarray) -> float:
        # NaN compares False on both sides, so it is counted by `nonfinite`, not here
        return float(((x <= lo + edge) | (x >= hi - edge)).mean())

    diff = np.where(finite, a64 - b64, np.inf)
    mse = (diff * diff).mean(axis=1)  # [N]; inf for an image with any NaN/Inf pixel
    with np.errstate(divide="ignore"):
        psnr = np.where(np.isfinite(mse), 10.0 * np.log10(span * span / np.maximum(mse, span * span * 10 ** (-PSNR_CAP_DB / 10))),
                        -np.inf)
    return {
        "n_images": n,
        "nonfinite": nonfinite,
        "nonfinite_images": int((~finite).any(axis=1).sum()),
        "saturated_rate": saturated_rate(a64),
        "reference_saturated_rate": saturated_rate(b64),
        "psnr_worst_db": float(psnr.min()),
        "psnr_median_db": float(np.median(psnr)),
        "psnr_mean_db": float(psnr[np.isfinite(psnr)].mean()) if np.isfinite(psnr).any() else float("-inf"),
        "max_abs_err": float(np.abs(diff).max()),
    }


def gate_figures(images: np.ndarray, reference: np.ndarray, value_range: Sequence[float] = (-1.0, 1.0),
                 noise_reference: np.ndarray | None = None, quality: bool = True) -> dict[str, Any]:
    """Everything the gate measures, as a flat dict (what `bench` shows beside the speed).

    `noise_reference`: FP32 images of *other* latents, same count; gives `fd_noise` and `fd_ratio`.
    The quality score is skipped (None) when asked, or when the images contain NaN/Inf.
    """
    fig = image_figures(images, reference, value_range)
    fig.update(fd=None, fd_spread=None, quality_precision=None, quality_recall=None, fd_noise=None, fd_ratio=None)
    if quality and fig["nonfinite"] == 0:
        q = _quality(images, reference, value_range, paired=True)  # same latents: resample pairs together
        fig.update(fd=q["fd"], fd_spread=q["fd_spread"], quality_precision=q["precision"], quality_recall=q["recall"])
        fig["_quality"] = q
        if noise_reference is not None:
            noise = _quality(noise_reference, reference, value_range)["fd"]
            fig["fd_noise"] = noise
            fig["fd_ratio"] = q["fd"] / noise if noise > 0 else (0.0 if q["fd"] == 0 else float("inf"))
    return fig


def _quality(a: np.ndarray, b: np.ndarray, value_range: Sequence[float], paired: bool = False) -> dict[str, Any]:
    from gan_deploy.quality.distances import quality_between

    lo, hi = float(value_range[0]), float(value_range[1])
    # reduced precision may overshoot the range by a rounding step; the score's input check allows 10% of the span
    return quality_between(np.clip(a, lo, hi), np.clip(b, lo, hi), value_range=(lo, hi), k=5, bootstrap=10, seed=0,
                           paired=paired).to_dict()


def check_artifact(candidate, reference: np.ndarray, thresholds: GateThresholds, precision: str = "int8",
                   value_range: Sequence[float] = (-1.0, 1.0), noise_reference: np.ndarray | None = None,
                   batch_size: int = 256) -> GateReport:
    """Apply the thresholds to a candidate against FP32 `reference` images of the gate latents.

    `candidate`: the candidate's images of the same latents [N, C, H, W], or a runner (anything with `.spec`
    and `.infer`), which is then run on `gate_latents(N, Z)`.
    """
    if not isinstance(candidate, np.ndarray):
        if not (hasattr(candidate, "infer") and hasattr(candidate, "spec")):
            raise GanDeployError("bad gate candidate", type(candidate).__name__, expected="images [N, C, H, W] or a runner")
        candidate = batched(candidate.infer, gate_latents(len(reference), candidate.spec.latent_dim), batch_size)
    images = candidate
    t = thresholds
    want_quality = t.max_fd_ratio is not None
    if want_quality and noise_reference is None:
        raise GanDeployError("the FD check needs FP32 images of fresh latents", None, expected="noise_reference [N, C, H, W]", hint="pass max_fd_ratio=None to skip the quality-score check")
    fig = gate_figures(images, reference, value_range, noise_reference if want_quality else None, want_quality)
    q = fig.pop("_quality", None)
    checks = [
        GateCheck("nonfinite", fig["nonfinite"], t.max_nonfinite, "<=", fig["nonfinite"] <= t.max_nonfinite,
                  f"in {fig['nonfinite_images']} images" if fig["nonfinite"] else ""),
        GateCheck("saturation_increase", fig["saturated_rate"] - fig["reference_saturated_rate"], t.max_saturation_increase, "<=",
                  fig["saturated_rate"] - fig["reference_saturated_rate"] <= t.max_saturation_increase),
        GateCheck("psnr_worst_db", fig["psnr_worst_db"], t.min_psnr_worst, ">=", fig["psnr_worst_db"] >= t.min_psnr_worst),
        GateCheck("psnr_median_db", fig["psnr_median_db"], t.min_psnr_median, ">=", fig["psnr_median_db"] >= t.min_psnr_median),
    ]
    if want_quality:
        r = fig["fd_ratio"]
        checks.append(GateCheck("fd_ratio", r, t.max_fd_ratio, "<=", r is not None and r <= t.max_fd_ratio,  # type: ignore[arg-type]
                                "not computed: images contain NaN/Inf" if r is None else
                                f"FD {fig['fd']:.3g} vs noise floor {fig['fd_noise']:.3g}"))
    return GateReport(precision, len(images), fig, checks, t, q)


def run_gate(candidate, reference, thresholds: GateThresholds, precision: str, n: int = DEFAULT_GATE_SAMPLES,
             batch_size: int = 256, value_range: Sequence[float] | None = None) -> GateReport:
    """Generate the gate's images with two runners (anything with `.spec` and `.infer(z)`) and check them."""
    spec = reference.spec
    vr = tuple(value_range or spec.value_range)
    if n < 32 and thresholds.max_fd_ratio is not None:
        raise GanDeployError("too few gate images for the quality score", n, expected="at least 32", hint="raise --gate-samples or pass --max-fd-ratio none")
    z = gate_latents(n, spec.latent_dim)
    images = batched(candidate.infer, z, batch_size)
    ref = batched(reference.infer, z, batch_size)
    noise = None
    if thresholds.max_fd_ratio is not None:  # FP32 images of the next n latents: the FD noise floor
        noise = batched(reference.infer, gate_latents(n, spec.latent_dim, start=n), batch_size)
    return check_artifact(images, ref, thresholds, precision, vr, noise)


def batched(fn, z: np.ndarray, batch_size: int) -> np.ndarray:
    """fn over z in batches, concatenated (the gate's n may exceed a backend's largest batch)."""
    return np.concatenate([fn(z[s:s + batch_size]) for s in range(0, len(z), batch_size)])

"""INT8 calibration: the activation range of every float tensor, for every method, from one calibration run.

onnxruntime's own calibrators run the calibration latents through the model once per method, and its histogram
ones (percentile, entropy) are slow in Python (~50 s each on the StyleGAN2-style example, 2 cores) and its entropy
method is degenerate with the defaults quantize_static passes (128 histogram bins for 128 quantized bins: it
always returns min/max). `calibrate` instead makes two passes over the prior latents with every float tensor as
an extra graph output: min/max first, then a histogram of each tensor over [-a, a] (a = its largest |value|,
`BINS` bins), and derives from those the ranges of

* minmax      [min, max] over all calibration latents: what onnxruntime's MinMax calibrator gives (the default;
              bit-identical models to today's)
* percentile  the (100 - p) / 2 and 100 - (100 - p) / 2 percentiles of the values (p = `PERCENTILE`), clipped to
              [min, max]: drops the rare outliers that stretch a min/max grid
* entropy     TensorRT's KL-divergence calibration on |x|: the clipping threshold t whose 128-level quantized
              histogram is closest (KL) to the clipped reference histogram; range [max(min, -t), min(max, t)]

The ranges reach onnxruntime's quantizer through its calibration cache (a MinMax TensorsData JSON), so the
quantizer itself (Q/DQ placement, scales, zero points) is onnxruntime's, unchanged.

Calibration latents come from the generator's own prior (standard normal, `gan_deploy.core.latents`, seed
`CALIB_SEED`): a generator needs no data set to calibrate. `PriorLatents` serves them to onnxruntime's quantizer
as a CalibrationDataReader where an older onnxruntime needs a calibration run of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import latents_range

CALIB_METHODS = ("minmax", "percentile", "entropy")
CALIB_SEED = 7919  # calibration latents; the gate uses gate.GATE_SEED so it never sees them
DEFAULT_CALIB_SAMPLES = 512
CALIB_BATCH = 64  # latents per batch onnxruntime's own calibration run is fed
MIN_CALIB_SAMPLES = CALIB_BATCH // 4
BINS = 4096  # over [-a, a]: 2048 per sign, as onnxruntime's histogram calibrators use
PERCENTILE = 99.99
ENTROPY_LEVELS = 128  # quantized levels on |x| (TensorRT's entropy calibration)
RUN_BATCH = 32  # latents per calibration run: bounds the memory of every intermediate tensor at once


def check_calib_method(method: str, allow_auto: bool = False) -> str:
    """`method` if it is one of CALIB_METHODS (or "auto", where the caller lets the gate choose); else the error."""
    if allow_auto and method == "auto":
        return method
    if method not in CALIB_METHODS:
        if allow_auto:
            raise GanDeployError("unknown calibration method", repr(method), expected=f"auto or one of {', '.join(CALIB_METHODS)}")
        raise GanDeployError("unknown calibration method", repr(method), expected=f"one of {', '.join(CALIB_METHODS)}",
                             hint="'auto' chooses by the quality gate: only `quantize` (int8_onnx_from_onnx) does that")
    return method


def check_calib_samples(samples: int) -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < MIN_CALIB_SAMPLES:
        raise GanDeployError("too few calibration samples", samples, expected=f">= {MIN_CALIB_SAMPLES}",
                             hint=f"{DEFAULT_CALIB_SAMPLES} is the default")
    return samples


class PriorLatents:
    """onnxruntime CalibrationDataReader: batches of latents from the generator's prior (no data set needed)."""

    def __init__(self, spec, samples: int, seed: int = CALIB_SEED, batch: int = CALIB_BATCH):
        self.spec, self.samples, self.seed, self.batch = spec, samples, seed, batch
        self.rewind()

    def rewind(self) -> None:
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= self.samples:
            return None
        n = min(self.batch, self.samples - self._start)
        z = latents_range(self.seed, self._start, n, self.spec.latent_dim).reshape(n, *self.spec.latent_shape)
        self._start += n
        return {self.spec.input_name: z}


@dataclass
class Calibration:
    """Per-tensor statistics of the calibration latents, and the ranges each method derives from them. The
    histograms (a second pass) are made the first time a method needs them: minmax alone costs one pass."""

    samples: int
    seed: int
    lo: dict[str, float]
    hi: dict[str, float]
    _run: Any = field(default=None, repr=False)  # (session, tensor indices, input name, spec, batch) for the histogram pass
    _hist: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _ranges: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict, repr=False)

    @property
    def tensors(self) -> list[str]:
        return list(self.lo)

    @property
    def hist(self) -> dict[str, np.ndarray]:
        if self._hist is None:
            self._hist = _histograms(self)
        return self._hist

    def ranges(self, method: str) -> dict[str, tuple[float, float]]:
        if method not in CALIB_METHODS:
            raise GanDeployError("unknown calibration method", repr(method), expected=f"one of {', '.join(CALIB_METHODS)}")
        if method not in self._ranges:
            hist = self.hist if method != "minmax" else {}
            self._ranges[method] = {t: _range(method, self.lo[t], self.hi[t], hist.get(t)) for t in self.lo}
        return self._ranges[method]

    def clipped(self, method: str) -> int:
        """How many tensors the method gives a narrower range than min/max."""
        r = self.ranges(method)
        return sum(1 for t in r if r[t] != (self.lo[t], self.hi[t]))

    def write_ort_cache(self, method: str, path: Path) -> Path:
        """The ranges as onnxruntime's calibration cache (quantize_static(calibration_cache_path=...))."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

        data = {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for t, (lo, hi) in self.ranges(method).items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
        return path

    def overrides(self, method: str) -> dict[str, list[dict[str, np.ndarray]]]:
        """The ranges as quantize_static's TensorQuantOverrides (rmin/rmax): for onnxruntime without the cache."""
        return {t: [{"rmin": np.array(lo, np.float32), "rmax": np.array(hi, np.float32)}] for t, (lo, hi) in self.ranges(method).items()}


def _range(method: str, lo: float, hi: float, hist: np.ndarray | None) -> tuple[float, float]:
    if method == "minmax" or hist is None or hist.sum() == 0 or lo == hi:
        return lo, hi
    a = max(abs(lo), abs(hi))
    edges = np.linspace(-a, a, len(hist) + 1)
    if method == "percentile":
        cdf = np.cumsum(hist) / hist.sum()
        cut = (100.0 - PERCENTILE) / 200.0
        left = edges[min(int(np.searchsorted(cdf, cut)), len(hist) - 1)]
        right = edges[min(int(np.searchsorted(cdf, 1.0 - cut)) + 1, len(hist))]
        return max(lo, float(left)), min(hi, float(right))
    t = _entropy_threshold(_fold(hist), a)
    return max(lo, -t), min(hi, t)


def _fold(hist: np.ndarray) -> np.ndarray:
    """Histogram over [-a, a] -> histogram of |x| over [0, a] (same bin width)."""
    half = len(hist) // 2
    return hist[half:] + hist[:half][::-1]


def _entropy_threshold(h: np.ndarray, a: float, levels: int = ENTROPY_LEVELS, stride: int = 16) -> float:
    """TensorRT's entropy calibration on a histogram `h` of |x| over [0, a]: among thresholds at bin edges i >= `levels`
    (every `stride` bins), the one minimizing KL(P || Q), where P is h[:i] with the outliers h[i:] added to its last
    bin and Q is h[:i] requantized to `levels` levels (each level's count spread evenly over its non-empty bins)."""
    n = len(h)
    h = h.astype(np.float64)
    if n <= levels or h.sum() == 0:
        return a
    best_i, best_kl = n, np.inf
    for i in list(range(levels, n, stride)) + [n]:
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        starts = (np.arange(levels) * i) // levels
        used = (h[:i] > 0).astype(np.float64)
        sums = np.add.reduceat(h[:i], starts)
        counts = np.add.reduceat(used, starts)
        level = np.repeat(np.arange(levels), np.diff(np.append(starts, i)))
        q = used * (sums / np.maximum(counts, 1.0))[level]
        pn, qn = p / p.sum(), q / max(q.sum(), 1e-300)
        m = pn > 0
        kl = float(np.sum(pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return a * best_i / n


def float_tensors(model) -> list[str]:
    """Every float32 tensor a node produces, and the float graph inputs: what a Q/DQ quantizer may need a range for."""
    import onnx
    from onnx import TensorProto

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        raise GanDeployError("cannot infer the tensor types of the ONNX model", f"{type(e).__name__}: {str(e)[:160]}",
                             expected="a model onnx.shape_inference accepts") from None
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if types.get(i.name) == TensorProto.FLOAT]
    for n in model.graph.node:
        names += [o for o in n.output if o and o not in inits and types.get(o) == TensorProto.FLOAT]
    return list(dict.fromkeys(names))


def _augmented_session(model, tensors: list[str]):
    import onnx
    import onnxruntime as ort

    aug = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in aug.graph.output}
    for t in tensors:
        if t not in have:
            aug.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as the graph computes it
    from gan_deploy.backends.onnxruntime import env_threads

    threads = env_threads()  # checked and bounded there
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(aug.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _latent_batches(spec, samples: int, seed: int, batch: int) -> Iterator[np.ndarray]:
    for s in range(0, samples, batch):
        n = min(batch, samples - s)
        yield latents_range(seed, s, n, spec.latent_dim).reshape(n, *spec.latent_shape)


def calibrate(model, spec, samples: int, seed: int, batch: int = RUN_BATCH) -> Calibration:
    """Min/max of every float tensor over `samples` prior latents (seed `seed`, the calibration seed); histograms
    follow on demand (`Calibration.hist`). Deterministic: the same model and latents give the same ranges."""
    tensors = float_tensors(model)
    sess = _augmented_session(model, tensors)
    names = [o.name for o in sess.get_outputs()]
    wanted = [names.index(t) for t in tensors]
    inp = sess.get_inputs()[0].name
    lo = dict.fromkeys(tensors, np.inf)
    hi = dict.fromkeys(tensors, -np.inf)
    for z in _latent_batches(spec, samples, seed, batch):
        outs = sess.run(None, {inp: z})
        for t, k in zip(tensors, wanted):
            v = outs[k]
            if v.size:
                lo[t] = min(lo[t], float(v.min()))
                hi[t] = max(hi[t], float(v.max()))
    lo = {t: (v if np.isfinite(v) else 0.0) for t, v in lo.items()}
    hi = {t: (v if np.isfinite(v) else 0.0) for t, v in hi.items()}
    return Calibration(samples, seed, lo, hi, _run=(sess, wanted, inp, spec, batch))


HIST_VALUES = 1 << 18  # values per tensor and batch that go into a histogram (strided subsample beyond that)


def _histograms(cal: Calibration) -> dict[str, np.ndarray]:
    """Second pass over the same latents: a histogram of each tensor over [-a, a], a = its largest |value|."""
    if cal._run is None:
        raise GanDeployError("this calibration has no histograms and cannot make them", None, expected="one from calibrate()")
    sess, wanted, inp, spec, batch = cal._run
    tensors = cal.tensors
    hist: dict[str, np.ndarray] = {}
    for z in _latent_batches(spec, cal.samples, cal.seed, batch):
        outs = sess.run(None, {inp: z})
        for t, k in zip(tensors, wanted):
            a = max(abs(cal.lo[t]), abs(cal.hi[t]))
            v = outs[k].ravel()
            if a == 0 or not v.size:
                continue
            if v.size > HIST_VALUES:
                v = v[:: -(-v.size // HIST_VALUES)]
            x = v * np.float32(BINS / (2 * a))
            x += np.float32(BINS / 2)
            idx = x.astype(np.int32)
            np.clip(idx, 0, BINS - 1, out=idx)
            h = np.bincount(idx, minlength=BINS)
            hist[t] = hist[t] + h if t in hist else h
    return hist


def summary_of(cal: Calibration) -> dict[str, object]:
    """What the recipe records about the calibration run itself."""
    return {"tensors": len(cal.tensors), "histogram_bins": BINS, "percentile": PERCENTILE, "entropy_levels": ENTROPY_LEVELS,
            "clipped_tensors": {m: cal.clipped(m) for m in CALIB_METHODS if m != "minmax"}}


def calibration_recipe(cal: Calibration, method: str) -> dict[str, Any]:
    """The recipe's "calibration" entry of a model quantized with `method`'s ranges from `cal`."""
    return {"samples": cal.samples, "seed": cal.seed, "method": method,
            "data": "latents from the generator's prior: standard normal, gan_deploy.core.latents", **summary_of(cal)}

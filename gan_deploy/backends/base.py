"""The one small interface every backend implements (after Polygraphy's BaseRunner).

A runner is built from an `Artifact`, loads lazily on `activate()`, and maps latents to images:

    infer(z: float32 [N, Z]) -> float32 [N, C, H, W] on the host, in the artifact's value range

`infer()` validates and calls `infer_impl()`; backends implement only `infer_impl()` (and `_load()`).
Timing is not done here: `gan_deploy.core.timing` measures every backend the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.spec import kind_name, kinds_phrase
from gan_deploy.core.device import resolve_device
from gan_deploy.core.errors import GanDeployError, GanDeployWarning, warn

WARN_FRACTION = 0.01  # NaN/Inf or out-of-range values above this share of the images so far: one warning


class Runner(ABC):
    name: ClassVar[str]
    accepts: ClassVar[tuple[str, ...]]  # artifact kinds this backend can run
    # expected max |image - eager FP32 image| on the [-1, 1] scale; conformance tests and --compare use it
    tolerance: ClassVar[float] = 1e-4

    def __init__(self, artifact: Artifact, device: str = "auto", **options: Any):
        if artifact.kind not in self.accepts:
            raise GanDeployError(f"backend '{self.name}' cannot run {kind_name(artifact.kind)}", str(artifact.path),
                                 expected=f"{kinds_phrase(self.accepts)} for --backend {self.name}", hint=self._accepts_hint(artifact))
        self.artifact = artifact
        self.spec = artifact.spec
        self.device = resolve_device(device)
        self.options = options
        self.active = False
        self.auto_reason: str | None = None  # set by make_runner when `auto` chose this backend
        self.health = OutputHealth(artifact.spec.value_range, f"{self.name} on {artifact.path}")

    @classmethod
    def _accepts_hint(cls, artifact: Artifact) -> str:
        from gan_deploy.backends import BACKENDS, runner_class

        able = [n for n in BACKENDS if artifact.kind in runner_class(n).accepts]
        if not able:
            return "use --backend auto"
        return f"for {kind_name(artifact.kind)} use --backend {' or '.join(able)} (or --backend auto, which picks one)"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the backend can run here; otherwise why not and how to fix it."""
        return None

    # -- lifecycle -------------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.active:
            self._load()
            self.active = True
        return self

    def close(self) -> None:
        self.active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------------
    def _checked(self, z: np.ndarray) -> np.ndarray:
        if not self.active:
            self.activate()
        if not isinstance(z, np.ndarray) or z.dtype != np.float32 or z.ndim != 2 or z.shape[1] != self.spec.latent_dim or z.shape[0] < 1:
            got = f"{type(z).__name__} {getattr(z, 'dtype', '')} {getattr(z, 'shape', '')}"
            raise GanDeployError("bad latent batch", got, expected=f"float32 array [N>=1, {self.spec.latent_dim}]")
        if self.spec.latent_rank == 4:
            z = z.reshape(z.shape[0], self.spec.latent_dim, 1, 1)
        return np.ascontiguousarray(z)

    def infer(self, z: np.ndarray) -> np.ndarray:
        """float32 latents [N, Z] -> float32 images [N, C, H, W] on the host, in the artifact's value range."""
        return self.health.observe(self.infer_impl(self._checked(z)))

    def infer_pixels(self, z: np.ndarray) -> np.ndarray:
        """float32 latents [N, Z] -> uint8 pixels [N, H, W, C] on the host, exactly `to_uint8(infer(z))`.

        GPU backends override `infer_pixels_impl` to convert on the device and copy 4x fewer bytes to the host
        (the D2H copy of float32 images is what bounds generate on a fast GPU). The array is the caller's."""
        return self.infer_pixels_impl(self._checked(z))

    def infer_pixels_impl(self, z: np.ndarray) -> np.ndarray:
        from gan_deploy.core.images import to_uint8

        return to_uint8(self.health.observe(self.infer_impl(z)), self.spec.value_range)

    def infer_pixels_device(self, z: np.ndarray) -> Any:
        """float32 latents [N, Z] -> uint8 pixels [N, H, W, C] as a torch tensor left on the CUDA device (for an
        encoder on the GPU: `generate --jpeg-encoder cuda`). The PyTorch backends on CUDA only; the tensor is the caller's."""
        raise GanDeployError(f"the {self.name} backend cannot leave pixels on the GPU", f"{self.name} on {self.device}",
                             expected="backend eager or compile on a CUDA device", hint="use --jpeg-encoder cpu")

    @classmethod
    def device_reason(cls, device: str) -> str | None:
        """None when this backend computes on `device` (cpu | cuda[:N]); else why not (for `auto`'s message)."""
        return None

    def synchronize(self) -> None:
        """Wait for queued device work (the timing module calls this before reading the clock)."""

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def infer_impl(self, z: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


class OutputHealth:
    """Counts what a runner's images hold that no image should: NaN/Inf (written as black pixels) and values outside
    the declared value range (clipped: a range that does not fit the model gives black or washed-out images).
    Warns once, when either passes WARN_FRACTION of the values seen so far. The common case costs a min and a max."""

    def __init__(self, value_range: tuple[float, float], what: str):
        lo, hi = value_range
        slack = 0.01 * (hi - lo)  # quantized and FP16 models overshoot the range by a rounding step
        self.lo, self.hi, self.lo_ok, self.hi_ok = lo, hi, lo - slack, hi + slack
        self.what = what
        self.values = 0
        self.nonfinite = 0
        self.out_of_range = 0
        self.warned = False

    def observe(self, images: np.ndarray) -> np.ndarray:
        self.values += images.size
        if images.size:
            mn, mx = images.min(), images.max()  # NaN propagates into both
            if mn >= self.lo_ok and mx <= self.hi_ok:
                return images
        finite = np.isfinite(images)
        self.nonfinite += int(images.size - np.count_nonzero(finite))
        self.out_of_range += int(np.count_nonzero(finite & ((images < self.lo_ok) | (images > self.hi_ok))))
        if not self.warned and self.over():
            self.warned = True
            warn(self.message())
        return images

    def check_spread(self, images: np.ndarray) -> None:
        """A probe batch whose values all sit at one end of the declared range: warns once (see `spread`)."""
        if self.warned:
            return
        end = self.spread(images)
        if end:
            self.warned = True
            warn(f"images from {self.what} {end}. The range is likely not the model's: pass the right --value-range "
                 "(-1,1 for tanh, 0,1 for sigmoid) or fix the gan_deploy.value_range metadata")

    def spread(self, images: np.ndarray) -> str | None:
        """None, or what is wrong when every finite value sits at one end of the declared range ([0, 255] declared on
        a tanh or sigmoid model gives black images, with every value inside the range). An untrained generator's
        near-constant mid-range output is not flagged."""
        finite = images[np.isfinite(images)]
        if finite.size < 2:
            return None
        mn, mx, span = float(finite.min()), float(finite.max()), self.hi - self.lo
        end = "black" if mx <= self.lo + span / 32 else "white" if mn >= self.hi - span / 32 else None
        if end and mx - mn < span / 64:  # a constant at one end too: every image one flat colour
            return (f"span [{mn:.3g}, {mx:.3g}], at one end of the declared value range [{self.lo:g}, {self.hi:g}]: "
                    f"they will be nearly {end}")
        return None

    def over(self) -> bool:
        """True when NaN/Inf or out-of-range values pass WARN_FRACTION of the values seen (the rule for the warning
        and for the probe batch's refusal)."""
        return self.nonfinite > WARN_FRACTION * self.values or self.out_of_range > WARN_FRACTION * self.values

    def fractions(self) -> tuple[float, float]:
        n = max(self.values, 1)
        return self.nonfinite / n, self.out_of_range / n

    def message(self) -> str:
        nf, oor = self.fractions()
        parts = []
        if nf > WARN_FRACTION:
            parts.append(f"{nf:.1%} of the image values are NaN/Inf (written as black pixels)")
        if oor > WARN_FRACTION:
            parts.append(f"{oor:.1%} lie outside the declared value range [{self.lo:g}, {self.hi:g}] (clipped)")
        hint = ("the model's output range is not the declared one: pass the right --value-range (-1,1 for tanh, 0,1 for "
                "sigmoid) or fix the gan_deploy.value_range metadata" if oor > WARN_FRACTION
                else "the model produces NaN/Inf: check its weights (or a reduced precision that overflows)")
        return f"images from {self.what}: {'; '.join(parts)}; {hint}"


PROBE_IMAGES = 64  # generate's probe: the run's first this many images decide whether the model makes images at all
ALLOW_OPTION = "--allow-bad-images"


def check_images(runner: Runner, seed: int, start: int = 0, count: int = PROBE_IMAGES, batch: int | None = None,
                 allow: bool = False) -> np.ndarray:
    """Before anything is written: compute images [start, start + count) of `seed` (in batches of at most `batch`)
    and refuse, in one line with the figures, a model whose images are mostly NaN/Inf, outside the declared value
    range or all at one end of it (OutputHealth's rule: WARN_FRACTION and the one-end spread). `allow`
    (--allow-bad-images) turns the refusal into the warning the run would print anyway. Activates the runner;
    warnings raised while loading it are held back when the run is refused (the refusal says it all). Returns the
    images, float32 [count, C, H, W] (generate estimates its disk space from them)."""
    import warnings

    from gan_deploy.core.latents import latents_range

    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always", GanDeployWarning)
        runner.activate()
        probe = OutputHealth(runner.spec.value_range, f"{runner.name} on {runner.artifact.path}")
        probe.warned = True  # counts only: the verdict is below
        step = max(1, min(batch or count, count))
        images = [probe.observe(runner.infer_impl(runner._checked(latents_range(seed, b0, min(step, start + count - b0),
                                                                                   runner.spec.latent_dim))))
                  for b0 in range(start, start + count, step)]
    spread = None if probe.over() else probe.spread(np.concatenate(images))
    if (probe.over() or spread) and not allow:
        nf, oor = probe.fractions()
        figures = (f"{nf:.0%} of values NaN/Inf, {oor:.0%} out of range [{probe.lo:g}, {probe.hi:g}] in the first {count} "
                   f"image(s)" + (f"; they {spread}" if spread else ""))
        cause = ("fix the value range (--value-range 0,1 for sigmoid, -1,1 for tanh, or the gan_deploy.value_range metadata)"
                 if spread or oor > nf else "check the model's weights (or a reduced precision that overflows)")
        raise GanDeployError(f"the model does not produce images (it would write black or clipped pixels): {probe.what}",
                             figures, expected=f"at most {WARN_FRACTION:.0%} NaN/Inf and out-of-range values, spread over the range",
                             hint=f"{cause}; pass {ALLOW_OPTION} to write them anyway")
    for w in held:
        if issubclass(w.category, GanDeployWarning):
            warn(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for part in images:  # the warning the run prints anyway (once), now rather than at the first batch
        runner.health.observe(part)
    if spread:
        runner.health.check_spread(np.concatenate(images))
    return np.concatenate(images)


def in_fixed_batches(run: Callable[[np.ndarray], np.ndarray], z: np.ndarray, batch: int | None,
                     image_shape: tuple[int, ...]) -> np.ndarray:
    """`run(z)` for a graph that may be fixed to one batch size (`batch`; None: any): whole chunks of it, the last one
    padded with zeros, the padding's images dropped. float32 [N, C, H, W]."""
    if batch is None or len(z) == batch:
        return run(z)
    out = np.empty((len(z), *image_shape), dtype=np.float32)
    for s in range(0, len(z), batch):
        chunk = z[s:s + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)])
        out[s:s + batch] = run(chunk)[: min(batch, len(z) - s)]
    return out

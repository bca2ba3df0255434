"""OpenVINO: ONNX files (FP32, FP16 and our Q/DQ INT8, both flavours) on the CPU with Intel's runtime; a PyTorch
checkpoint is exported to ONNX in memory first, as onnxruntime does (no file written).

Compiled once per batch shape (a static [b, Z] input): measured on the shipped DCGAN FP32 on 2 cores, a static shape
was faster than one dynamic-batch model at every batch size (batch 1: 0.68 vs 0.88 ms, 64: 60.4 vs 64.9 ms, 256:
272 vs 371 ms; docs/precision.md, "CPU runtimes"). At most MAX_STATIC_SHAPES shapes are compiled; any further batch
size (serve's dynamic batching can make many) runs on one dynamic-batch model, compiled when first needed.

Performance hint per batch size: LATENCY below THROUGHPUT_MIN_BATCH (serve, batch 1), else THROUGHPUT, where the
batch is split across OpenVINO's streams and run as that many requests at once (a single request on a
THROUGHPUT-compiled model would use one stream's threads only). `hint="latency"|"throughput"` forces one.

Threads: the `threads` option or GAN_DEPLOY_THREADS, as onnxruntime's (0: OpenVINO's default, every core).
Compiled models are cached in the user's cache folder (core/usercache.py: $GAN_DEPLOY_CACHE_DIR, else
$XDG_CACHE_HOME/gan-deploy/openvino or ~/.cache/gan-deploy/openvino), so a second start loads instead of
compiling; GAN_DEPLOY_OPENVINO_CACHE=0 turns the cache off.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from gan_deploy.artifacts.onnx import FIXED_BATCH_HINT
from gan_deploy.backends.base import Runner, in_fixed_batches
from gan_deploy.backends.onnxruntime import env_threads
from gan_deploy.core.errors import GanDeployError

THROUGHPUT_MIN_BATCH = 16  # below: one request, LATENCY hint; from here: the batch split across streams
MAX_STATIC_SHAPES = 4  # compiled static shapes kept; further batch sizes share one dynamic-batch model
HINTS = ("latency", "throughput")
INSTALL_HINT = 'pip install openvino (from the clone: pip install -e ".[openvino]")'


def _ov() -> Any:
    import openvino
    return openvino


def openvino_version() -> str:
    return str(_ov().__version__).split("-")[0]


class _Compiled:
    """One compiled model and its requests: `parts` requests of `part` images each (THROUGHPUT), or one (LATENCY).
    `part` is None for the dynamic-batch model."""

    def __init__(self, compiled: Any, parts: int, part: int | None):
        self.compiled, self.parts, self.part = compiled, parts, part
        self.output = compiled.output(0)
        self.requests = [compiled.create_infer_request() for _ in range(parts)]


class OpenVinoRunner(Runner):
    name = "openvino"
    accepts = ("checkpoint", "onnx")
    tolerance = 1e-4

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _ov()
        except ImportError:
            return f"OpenVINO is not installed (Note: {INSTALL_HINT})"
        return None

    @classmethod
    def device_reason(cls, device: str) -> str | None:
        if device.startswith("cuda"):
            return "runs on the CPU (and Intel GPUs/NPUs), not on NVIDIA GPUs"
        return None

    def _load(self) -> None:
        ov = _ov()
        if self.device != "cpu":
            raise GanDeployError("the openvino backend runs on the CPU", f"--device {self.device}", expected="--device cpu",
                                 hint="on an NVIDIA GPU use --backend tensorrt or onnxruntime (onnxruntime-gpu)")
        hint = self.options.get("hint")
        if hint not in (None, *HINTS):
            raise GanDeployError("unknown OpenVINO performance hint", repr(hint), expected=" or ".join(HINTS))
        from gan_deploy.export.onnx import onnx_bytes_of

        self.core = ov.Core()
        cache = _cache_dir()
        if cache is not None:
            self.core.set_property({"CACHE_DIR": str(cache)})
        try:
            self.model = self.core.read_model(onnx_bytes_of(self.artifact))
        except GanDeployError:
            raise
        except Exception as e:  # OpenVINO's own error types, per version
            raise GanDeployError("OpenVINO cannot read the model", f"{self.artifact.path} ({_first_line(e)})",
                                 expected="an ONNX model with standard ops OpenVINO's ONNX frontend supports",
                                 hint="run it with --backend onnxruntime") from None
        self._input = self.model.inputs[0].get_any_name()
        self._threads = self.options.get("threads") or env_threads()
        self._batch = self.spec.fixed_batch
        self._compiled: dict[int | None, _Compiled] = {}
        self._streams: int | None = None
        self._probe()

    def _config(self, hint: str) -> dict[str, Any]:
        props = _ov().properties
        mode = props.hint.PerformanceMode.LATENCY if hint == "latency" else props.hint.PerformanceMode.THROUGHPUT
        config: dict[str, Any] = {props.hint.performance_mode: mode}
        if self._threads:
            config[props.inference_num_threads] = self._threads
        return config

    def _hint_for(self, b: int) -> str:
        return self.options.get("hint") or ("latency" if b < THROUGHPUT_MIN_BATCH else "throughput")

    def _compile(self, shape: int | None, hint: str) -> Any:
        """The model compiled for input [shape, ...] (None: a dynamic batch)."""
        model = self.model.clone()
        model.reshape({self._input: [-1 if shape is None else shape, *self.spec.latent_shape]})
        try:
            return _on_own_thread(lambda: self.core.compile_model(model, "CPU", self._config(hint)))
        except Exception as e:
            raise GanDeployError("OpenVINO cannot compile the model", f"{self.artifact.path} at batch {shape or 'N'} "
                                 f"({_first_line(e)})", expected="a model OpenVINO's CPU plugin supports",
                                 hint="run it with --backend onnxruntime") from None

    def _for_batch(self, b: int) -> _Compiled:
        """The compiled model (and requests) that runs a batch of b images."""
        if b in self._compiled:
            return self._compiled[b]
        if sum(k is not None for k in self._compiled) >= MAX_STATIC_SHAPES and self._batch is None:
            if None not in self._compiled:
                self._compiled[None] = _Compiled(self._compile(None, "latency"), 1, None)
            return self._compiled[None]
        hint = self._hint_for(b)
        whole = None
        if hint == "throughput" and self._streams is None:
            # how many requests OpenVINO runs at once for these threads: read once, from the first THROUGHPUT compile
            whole = self._compile(b, hint)
            self._streams = max(1, int(whole.get_property(_ov().properties.optimal_number_of_infer_requests)))
        parts = min(b, self._streams or 1) if hint == "throughput" else 1
        part = -(-b // parts)
        parts = -(-b // part)
        if parts > 1:
            c = _Compiled(self._compile(part, hint), parts, part)
        else:
            c = _Compiled(whole if whole is not None else self._compile(b, hint), 1, b)
        self._compiled[b] = c
        return c

    def _probe(self) -> None:
        """One inference before any real work, as onnxruntime's: the images must have the declared shape (OpenVINO's
        CPU plugin can compute another: 2026.4 on an AVX2 CPU returned [N, 4, 32, 32] for our onnxruntime-flavour
        INT8 DCGAN, whose graph declares [N, 1, 32, 32], until precision/int8.float_tail left its last Q/DQ pair out) and should fill the declared value range."""
        from gan_deploy.core.latents import latents_range

        b = self._batch or 2
        z = latents_range(0, 0, b, self.spec.latent_dim).reshape(b, *self.spec.latent_shape)
        y = self._run(z)
        want = (b, *self.spec.image_shape)
        if tuple(y.shape) != want:
            raise GanDeployError("OpenVINO computes images of another shape than the model declares",
                                 f"{self.artifact.path}: {list(y.shape)} at batch {b} on OpenVINO {openvino_version()}",
                                 expected=f"{list(want)} (what onnxruntime computes)",
                                 hint="run this model with --backend onnxruntime (or --backend auto)")
        if y.dtype != np.float32:
            raise GanDeployError("ONNX model returns the wrong element type", f"{self.artifact.path}: {y.dtype}", expected="float32")
        self.health.observe(y)
        self.health.check_spread(y)

    def _run(self, z: np.ndarray) -> np.ndarray:
        b = len(z)
        try:
            c = self._for_batch(b)
            if c.part is None or c.parts == 1:
                # infer() returns a copy of the output (share_outputs=False, its default): the array is ours, not copied again
                return np.asarray(c.requests[0].infer({0: z})[c.output], dtype=np.float32)
            return self._run_parts(c, z)
        except GanDeployError:
            raise
        except Exception as e:
            raise GanDeployError("OpenVINO failed to run the model", f"{self.artifact.path} at batch {b} ({_first_line(e)})",
                                 expected="a model that runs on latents [N, Z]",
                                 hint=FIXED_BATCH_HINT if self._batch else "run it with --backend onnxruntime") from None

    def _run_parts(self, c: _Compiled, z: np.ndarray) -> np.ndarray:
        """THROUGHPUT: the batch in `c.parts` slices of `c.part` images (the last one padded with zeros), run at once."""
        b, part = len(z), c.part
        assert part is not None
        out = None
        for k, req in enumerate(c.requests):
            chunk = z[k * part:(k + 1) * part]
            if len(chunk) < part:
                chunk = np.concatenate([chunk, np.zeros((part - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)])
            req.start_async({0: chunk})
        for k, req in enumerate(c.requests):
            req.wait()
            y = req.get_tensor(c.output).data
            if out is None:
                out = np.empty((b, *y.shape[1:]), dtype=np.float32)
            n = min(part, b - k * part)
            out[k * part:k * part + n] = y[:n]
        assert out is not None
        return out

    def infer_impl(self, z: np.ndarray) -> np.ndarray:
        return in_fixed_batches(self._run, z, self._batch, self.spec.image_shape)

    def close(self) -> None:
        self._compiled = {}
        super().close()

    def describe(self) -> str:
        fixed = f"; fixed batch {self._batch}" if getattr(self, "_batch", None) else ""
        threads = getattr(self, "_threads", 0)
        return f"openvino {openvino_version()} (CPU{f', {threads} threads' if threads else ''}{fixed})"


def _on_own_thread(fn: Callable[[], Any]) -> Any:
    """fn() on a thread of its own, which ends with it. OpenVINO's CPU plugin (2026.4) installs a signal alternate
    stack (sigaltstack) on the first thread of the process that compiles a model, and frees that memory when the
    plugin unloads. On a thread that lives on (the main thread), a later signal (SIGTERM, Ctrl-C: CPython installs
    its handlers with SA_ONSTACK) was then delivered onto freed memory: a SIGSEGV from the kernel (si_code
    SI_KERNEL), seen in the test suite. A thread that ends takes its alternate stack with it."""
    import threading

    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller, in the caller's thread
            error.append(e)
    t = threading.Thread(target=run, name="gan-deploy-openvino-compile", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _cache_dir() -> Any:
    """OpenVINO's compiled-model cache folder, or None when GAN_DEPLOY_OPENVINO_CACHE=0 or no safe folder exists."""
    if os.environ.get("GAN_DEPLOY_OPENVINO_CACHE", "").strip() == "0":
        return None
    from gan_deploy.core.usercache import cache_dir

    return cache_dir("openvino")


def _first_line(e: BaseException) -> str:
    """The first line that says something: OpenVINO's messages start with "Exception from <source file>" lines."""
    text = [t.strip() for t in str(e).splitlines() if t.strip() and not t.startswith("Exception from ")]
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 240 else line[:237] + "..."

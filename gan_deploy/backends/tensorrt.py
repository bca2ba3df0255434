"""TensorRT: run an engine built by `gan-deploy build-engine`, with torch CUDA tensors as its I/O buffers.

Input and output live in torch tensors on the GPU; their addresses go to the execution context
(`set_tensor_address`) and the engine is enqueued on torch's current stream (`execute_async_v3`), so it
orders correctly with any torch work around it and no second CUDA library (pycuda, cuda-python) is needed.
The input shape is set per batch (the engine has one optimization profile, min..max batch). With
`cuda_graphs=True` (the default) the enqueue is captured once per batch size in a torch.cuda.CUDAGraph and
replayed, which removes TensorRT's per-launch CPU overhead at small batches.

Two Python modules can run engines; `trt_runtime_module()` picks one for everything that deserializes or runs
an engine: the full `tensorrt` when it imports (it also builds engines), else NVIDIA's lean runtime
(pip `tensorrt-lean-cu12` / `tensorrt-lean-cu13`, about 45 MB; imported as `tensorrt_lean`, which re-exports
its bindings package `tensorrt_lean_bindings`). The lean runtime has the runtime classes only (Runtime,
ICudaEngine, IExecutionContext: no Builder, no ONNX parser) and runs only engines built with
`build-engine --version-compatible`. A module is imported only when an engine is loaded or built:
`import gan_deploy` never needs one. Works with TensorRT 10 and 11 (the name-based tensor API; no bindings,
no implicit batch).
"""
from __future__ import annotations

import collections
import functools
import sys
import threading
from typing import Any

import numpy as np

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.engine import (
    RuntimeInfo,
    check_runtime,
    gpu_info,
    read_sidecar,
)
from gan_deploy.backends.base import Runner
from gan_deploy.core.errors import BackendUnavailable, GanDeployError, StaleArtifact
from gan_deploy.core.fileio import sha256_bytes

INSTALL_HINT = ("`pip install -e '.[gpu]'` (from the clone) on a machine with an NVIDIA GPU and driver, "
                "or run in NVIDIA's TensorRT container (nvcr.io/nvidia/tensorrt)")
FULL_MODULE = "tensorrt"
# the order tried: the full TensorRT, then the lean runtime under its public name and under its bindings'
RUNTIME_MODULES = (FULL_MODULE, "tensorrt_lean", "tensorrt_lean_bindings")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:120]}" if text else type(e).__name__


def _import_runtime_module(name: str) -> Any:
    # one import statement per module (not importlib), so ../shared/trt-api/check sees every `trt.X` used here
    if name == "tensorrt":
        import tensorrt as trt
    elif name == "tensorrt_lean":
        import tensorrt_lean as trt
    elif name == "tensorrt_lean_bindings":
        import tensorrt_lean_bindings as trt
    else:
        raise ValueError(name)
    return trt


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[Any, tuple[str, ...]]:
    """(the first of RUNTIME_MODULES that imports, or None; why each one tried before it failed)."""
    failures: list[str] = []
    for name in RUNTIME_MODULES:
        try:
            return _import_runtime_module(name), tuple(failures)
        except Exception as e:  # ImportError, or OSError/RuntimeError when the wheel is there but its libraries are not
            failures.append(f"{name}: {_first_line(e)}")
    return None, tuple(failures)


def module_name(trt: Any) -> str:
    """`tensorrt`, `tensorrt_lean` or `tensorrt_lean_bindings`: what the module was imported as."""
    return str(getattr(trt, "__name__", "?")).split(".")[0]


def is_lean(trt: Any) -> bool:
    """True for NVIDIA's lean runtime: it runs version-compatible engines only, and cannot build any."""
    return module_name(trt) != FULL_MODULE


def module_description(trt: Any) -> str:
    kind = ("NVIDIA's lean runtime: it runs engines built with `build-engine --version-compatible`; building needs "
            "the full `tensorrt`") if is_lean(trt) else "the full TensorRT"
    return f"{module_name(trt)} {getattr(trt, '__version__', '?')} ({kind})"


def trt_runtime_module() -> Any:
    """The TensorRT module that deserializes and runs engines: `tensorrt` if it imports, else the lean runtime."""
    trt, failures = _probe()
    if trt is None:
        raise BackendUnavailable("TensorRT is not importable", "; ".join(failures), hint=f"install it with {INSTALL_HINT}")
    return trt


def clear_caches() -> None:
    """Forget which module was found (tests that change what imports; a process never needs it)."""
    _probe.cache_clear()
    unavailable_reason.cache_clear()
    _LOGGERS.clear()


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when a TensorRT runtime and a CUDA GPU are both usable; otherwise what is missing, which TensorRT
    module was found (if one was), and how to get the rest."""
    missing = []
    trt, failures = _probe()
    if trt is None:
        missing.append(f"TensorRT is not importable ({'; '.join(failures)}); install it with {INSTALL_HINT}")
    import torch
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible to torch (TensorRT engines run only on NVIDIA GPUs; on this machine use "
                       "--backend onnxruntime, with an INT8 model from `gan-deploy quantize --int8` for speed)")
        if trt is not None:
            found = f"TensorRT found: {module_description(trt)}"
            if is_lean(trt):
                found += f"; install the full TensorRT with {INSTALL_HINT}"
            missing.append(found)
    return "; ".join(missing) or None


class _Log:
    """Methods of the process-wide TensorRT logger (mixed into a subclass of the module's ILogger): warnings and
    errors go to stderr as with trt.Logger(WARNING), and the recent errors are kept so that a failed call can be
    reported with TensorRT's own words (`errors_since(mark)`). TensorRT may log from its own threads."""

    def _setup(self, trt: Any) -> None:
        self._warning = int(trt.ILogger.WARNING)
        self._error = int(trt.ILogger.ERROR)
        self._lock = threading.Lock()
        self._errors: collections.deque[tuple[int, str]] = collections.deque(maxlen=32)
        self._count = 0

    def log(self, severity: Any, msg: str) -> None:
        level = int(severity)
        if level <= self._warning:
            print(f"[TensorRT] {getattr(severity, 'name', severity)}: {msg}", file=sys.stderr, flush=True)
        if level <= self._error:
            with self._lock:
                self._count += 1
                self._errors.append((self._count, " ".join(str(msg).split())))

    def mark(self) -> int:
        with self._lock:
            return self._count

    def errors_since(self, mark: int) -> str:
        """The errors logged after `mark`, on one line ("" when none)."""
        with self._lock:
            return " | ".join(m for n, m in self._errors if n > mark)[:600]


_LOGGERS: dict[str, Any] = {}


def trt_logger():
    """One process-wide logger per module: TensorRT requires it to outlive every builder and runtime made with it."""
    trt = trt_runtime_module()
    key = module_name(trt)
    if key not in _LOGGERS:
        class Logger(_Log, trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)  # pybind11: the C++ base must be initialised explicitly
                self._setup(trt)

        _LOGGERS[key] = Logger()
    return _LOGGERS[key]


def new_runtime(trt: Any | None = None) -> Any:
    """A trt.Runtime, or a one-line error with TensorRT's message. Without a usable CUDA driver (or with one too old
    for the module's CUDA) TensorRT logs the failure and hands back a wrapper of a null runtime that crashes the
    process when used or destroyed (seen with tensorrt_lean 11.4 and no driver), so what it logged decides, and
    that wrapper is kept alive for good."""
    trt = trt or trt_runtime_module()
    log = trt_logger()
    mark = log.mark()
    runtime = trt.Runtime(log)
    why = log.errors_since(mark)
    if why:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(runtime))  # never freed: its destructor would segfault
        del runtime
        raise BackendUnavailable("TensorRT could not create its runtime", why, expected="an NVIDIA driver new enough for this TensorRT's CUDA", hint=f"TensorRT found: {module_description(trt)}")
    return runtime


def runtime_info(device: str = "cuda") -> RuntimeInfo:
    trt = trt_runtime_module()
    name, cc = gpu_info(device)
    return RuntimeInfo(str(trt.__version__), name, cc, module_name(trt))


class TensorRTRunner(Runner):
    name = "tensorrt"
    accepts = ("engine",)
    # FP16/INT8 engines differ from eager FP32 by design; the quality gate (PSNR, FD) is their real check.
    # An FP32 engine may use TF32 (10-bit mantissa): ~1e-3.
    tolerance = 2e-2

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return unavailable_reason()

    @classmethod
    def device_reason(cls, device: str) -> str | None:
        return None if device.startswith("cuda") else "TensorRT engines run on CUDA GPUs only"

    @staticmethod
    def _accepts_hint(artifact: Artifact) -> str:
        return "build an engine first: `gan-deploy build-engine --fp16` (or --int8 / --fp32)"

    def _load(self) -> None:
        import torch

        if not self.device.startswith("cuda"):
            raise GanDeployError("TensorRT engines run on a CUDA GPU", self.device, expected="--device cuda (or auto)")
        trt = trt_runtime_module()
        # build-engine gates an engine before writing it: it passes the plan and how it was built
        version_compatible = bool(self.options.get("version_compatible", False))
        if self.options.get("engine_bytes") is None:
            # describing the engine (artifacts.engine) needed no TensorRT; running it needs this TensorRT and GPU
            side = read_sidecar(self.artifact.path)
            check_runtime(side, runtime_info(self.device))
            version_compatible = side.get("version_compatible") is True
        self._torch = torch
        self._dev = torch.device(self.device)
        self.trt_module = f"{module_name(trt)} {trt.__version__}"
        data: bytes | None = self.options.get("engine_bytes")
        if data is None:
            data = self.artifact.path.read_bytes()
            if sha256_bytes(data) != self.artifact.sha256:  # changed since artifact_from_engine checked it
                raise StaleArtifact("engine file changed while loading", str(self.artifact.path), expected=self.artifact.sha256[:12], hint="rebuild it with `gan-deploy build-engine`")
        with torch.cuda.device(self._dev):
            self._runtime = new_runtime(trt)
            if version_compatible:
                # The plan carries a copy of TensorRT's lean runtime, which deserializing loads and runs (host code):
                # NVIDIA's docs ask to allow it only for trusted plans. This one is the file build-engine wrote and
                # its sidecar vouches for (sha256 checked above), or the plan build-engine has just built.
                self._runtime.engine_host_code_allowed = True
            log = trt_logger()
            mark = log.mark()
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                why = log.errors_since(mark) or "TensorRT logged no reason"
                raise StaleArtifact("TensorRT could not deserialize the engine", f"{self.artifact.path}: {why}", expected=f"an engine built for this GPU by {self.trt_module}, or with --version-compatible by an earlier TensorRT of its major version", hint="rebuild it with `gan-deploy build-engine`")
            mark = log.mark()
            self.context = self.engine.create_execution_context()
            if self.context is None:  # e.g. not enough device memory for its activations
                raise GanDeployError("TensorRT could not create an execution context", f"{self.artifact.path}: {log.errors_since(mark) or 'TensorRT logged no reason'}", hint="free GPU memory, or rebuild with a smaller --max-batch")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != [self.spec.input_name] or outputs != [self.spec.output_name]:
            raise StaleArtifact("engine I/O does not match its sidecar", f"inputs {inputs}, outputs {outputs}", expected=f"[{self.spec.input_name}] -> [{self.spec.output_name}]", hint="rebuild it with `gan-deploy build-engine`")
        for n in names:
            if self.engine.get_tensor_dtype(n) != trt.DataType.FLOAT:
                raise GanDeployError("engine I/O must be float32", f"{n}: {self.engine.get_tensor_dtype(n)}", expected="FP32 input and output (reduced-precision models keep FP32 I/O)")
        self.in_name, self.out_name = inputs[0], outputs[0]
        lo, _, hi = self.engine.get_tensor_profile_shape(self.in_name, 0)  # (min, opt, max) shapes of profile 0
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.cuda_graphs = bool(self.options.get("cuda_graphs", True))
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # batch -> (CUDAGraph, static input, static output)
        self._bound: tuple | None = None

    # -- execution on device tensors ------------------------------------------------------------------
    def _bind(self, z, out) -> None:
        shape = tuple(z.shape)
        if self._bound is None or self._bound[0] != shape:
            if not self.context.set_input_shape(self.in_name, shape):
                raise GanDeployError("batch shape outside the engine's optimization profile", shape, expected=f"batch {self.min_batch}..{self.max_batch}", hint="rebuild with a larger --max-batch")
        if self._bound != (shape, z.data_ptr(), out.data_ptr()):
            self.context.set_tensor_address(self.in_name, z.data_ptr())
            self.context.set_tensor_address(self.out_name, out.data_ptr())
            self._bound = (shape, z.data_ptr(), out.data_ptr())

    def _enqueue(self, stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise GanDeployError("TensorRT execution failed", str(self.artifact.path), hint="TensorRT's log above says why")

    def _capture(self, b: int):
        """Capture one enqueue for batch b with static buffers. The first enqueue after a shape change does
        lazy setup (allocations, shape inference) that a capture must not contain, so it runs once before."""
        torch = self._torch
        zin = torch.zeros((b, *self.spec.latent_shape), device=self._dev, dtype=torch.float32)
        out = torch.empty((b, *self.spec.image_shape), device=self._dev, dtype=torch.float32)
        self._bind(zin, out)
        side = torch.cuda.Stream(self._dev)
        side.wait_stream(torch.cuda.current_stream(self._dev))
        with torch.cuda.stream(side):
            self._enqueue(side)
        torch.cuda.current_stream(self._dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._enqueue(torch.cuda.current_stream(self._dev))
        self._graphs[b] = (graph, zin, out)
        return self._graphs[b]

    def run_device(self, z, copy: bool = True):
        """float32 CUDA tensor [B, *latent_shape] -> float32 CUDA tensor [B, C, H, W], on torch's current stream.

        With CUDA graphs the result lives in a buffer the next call of the same batch size overwrites:
        `copy=False` returns that buffer itself (the caller consumes it first).
        """
        torch = self._torch
        b = int(z.shape[0])
        if b < self.min_batch:  # pad up to the profile's minimum
            pad = torch.zeros((self.min_batch - b, *z.shape[1:]), device=z.device, dtype=z.dtype)
            return self.run_device(torch.cat([z, pad]), copy=True)[:b]
        if b > self.max_batch:
            return torch.cat([self.run_device(z[s:s + self.max_batch], copy=True) for s in range(0, b, self.max_batch)])
        if self.cuda_graphs:
            graph, zin, out = self._graphs.get(b) or self._capture(b)
            zin.copy_(z)
            self._bind(zin, out)  # no-op unless another batch size ran since; keeps the context's shape consistent
            graph.replay()
            return out.clone() if copy else out
        z = z.contiguous()
        out = torch.empty((b, *self.spec.image_shape), device=self._dev, dtype=torch.float32)
        self._bind(z, out)
        self._enqueue(torch.cuda.current_stream(self._dev))
        return out

    def infer_impl(self, z: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.cuda.device(self._dev), torch.inference_mode():
            zd = torch.from_numpy(z).to(self._dev)
            if len(zd) <= self.max_batch:
                return self.run_device(zd, copy=False).cpu().numpy()  # .cpu() waits for the stream, then copies out
            return self.run_device(zd).cpu().numpy()

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self._dev)

    def close(self) -> None:
        # graphs hold the context's memory; the context must go before the engine, the engine before the runtime
        for attr in ("_graphs", "context", "engine", "_runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
        self._bound = None
        super().close()

    def describe(self) -> str:
        graphs = "CUDA graphs" if getattr(self, "cuda_graphs", self.options.get("cuda_graphs", True)) else "no CUDA graphs"
        module = f", {self.trt_module}" if getattr(self, "trt_module", None) else ""
        return f"tensorrt on {self.device} ({self.artifact.precision}, {graphs}{module})"

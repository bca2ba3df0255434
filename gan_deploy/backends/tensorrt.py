"""TensorRT: run an engine built by `gan-deploy build-engine`, with torch CUDA tensors as its I/O buffers.

Input and output live in torch tensors on the GPU; their addresses go to the execution context
(`set_tensor_address`) and the engine is enqueued on torch's current stream (`execute_async_v3`), so it
orders correctly with any torch work around it and no second CUDA library (pycuda, cuda-python) is needed.
The input shape is set per batch (the engine has one optimization profile, min..max batch). With
`cuda_graphs=True` (the default) the enqueue is captured once per batch size in a torch.cuda.CUDAGraph and
replayed, which removes TensorRT's per-launch CPU overhead at small batches.

`tensorrt` is imported only when an engine is loaded or built: `import gan_deploy` never needs it.
Works with TensorRT 10 and 11 (the name-based tensor API; no bindings, no implicit batch).
"""
from __future__ import annotations

import functools
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
from gan_deploy.core.errors import GanDeployError, StaleArtifact
from gan_deploy.core.fileio import sha256_bytes

INSTALL_HINT = ("`pip install gan-deploy[gpu]` on a machine with an NVIDIA GPU and driver, "
                "or run in NVIDIA's TensorRT container (nvcr.io/nvidia/tensorrt)")


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA GPU are both usable; otherwise what is missing and how to get it."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or OSError/RuntimeError when the wheel is there but libnvinfer is not
        missing.append(f"TensorRT is not importable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                       f"install it with {INSTALL_HINT}")
    import torch
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible to torch (TensorRT engines run only on NVIDIA GPUs; on this machine use "
                       "--backend onnxruntime, with an INT8 model from `gan-deploy quantize --int8` for speed)")
    return "; ".join(missing) or None


_LOGGER = None


def trt_logger():
    """One process-wide logger: TensorRT requires it to outlive every builder and runtime made with it."""
    global _LOGGER
    if _LOGGER is None:
        import tensorrt as trt
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def runtime_info(device: str = "cuda") -> RuntimeInfo:
    import tensorrt as trt
    name, cc = gpu_info(device)
    return RuntimeInfo(str(trt.__version__), name, cc)


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
        import tensorrt as trt
        import torch

        if not self.device.startswith("cuda"):
            raise GanDeployError("TensorRT engines run on a CUDA GPU", self.device, expected="--device cuda (or auto)")
        if self.options.get("engine_bytes") is None:
            # describing the engine (artifacts.engine) needed no TensorRT; running it needs this TensorRT and GPU
            check_runtime(read_sidecar(self.artifact.path), runtime_info(self.device))
        self._torch = torch
        self._dev = torch.device(self.device)
        data: bytes | None = self.options.get("engine_bytes")  # build-engine gates an engine before writing it
        if data is None:
            data = self.artifact.path.read_bytes()
            if sha256_bytes(data) != self.artifact.sha256:  # changed since artifact_from_engine checked it
                raise StaleArtifact("engine file changed while loading", str(self.artifact.path), expected=self.artifact.sha256[:12], hint="rebuild it with `gan-deploy build-engine`")
        with torch.cuda.device(self._dev):
            self._runtime = trt.Runtime(trt_logger())
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise StaleArtifact("TensorRT could not deserialize the engine", str(self.artifact.path), expected="an engine built by this TensorRT version for this GPU", hint="rebuild it with `gan-deploy build-engine` (TensorRT's own log above says why)")
            self.context = self.engine.create_execution_context()
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
        return f"tensorrt on {self.device} ({self.artifact.precision}, {graphs})"

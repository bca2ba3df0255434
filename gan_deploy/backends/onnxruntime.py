"""onnxruntime: CPU provider here; CUDA (and TensorRT) providers when onnxruntime-gpu and a GPU are present."""
from __future__ import annotations

import importlib
import os

import numpy as np

from gan_deploy.artifacts.onnx import META_INT8_TARGET
from gan_deploy.backends.base import Runner
from gan_deploy.export.onnx import onnx_bytes_of


def _ort():
    import onnxruntime
    return onnxruntime


def choose_providers(device: str) -> list[str]:
    """CUDA first on a GPU, TensorRT's provider only when its libraries import; CPU always last."""
    available = _ort().get_available_providers()
    chosen: list[str] = []
    if device.startswith("cuda"):
        if "TensorrtExecutionProvider" in available:
            try:
                # the provider fails at session creation without TensorRT's libraries. import_module, not an
                # import statement: TensorRT code lives in backends/tensorrt.py, where ../shared/trt-api/check looks
                importlib.import_module("tensorrt")
                chosen.append("TensorrtExecutionProvider")
            except ImportError:
                pass
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
    chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    accepts = ("checkpoint", "onnx")
    tolerance = 1e-4

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _ort()
        except ImportError:
            return ("onnxruntime is not installed (Note: from the clone, `pip install -e \".[cpu]\"` on CPU machines, "
                    "`pip install -e \".[gpu]\"` on GPU machines; never both)")
        return None

    @classmethod
    def device_reason(cls, device: str) -> str | None:
        if device.startswith("cuda") and "CUDAExecutionProvider" not in _ort().get_available_providers():
            return "no CUDA provider: this onnxruntime is the CPU build; onnxruntime-gpu has it"
        return None

    def _load(self) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._simulate_qdq():
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        threads = self.options.get("threads") or int(os.environ.get("GAN_DEPLOY_THREADS", "0"))
        if threads:
            so.intra_op_num_threads = threads
        if not self.options.get("spin", True):
            # ORT's pool threads spin-wait between and after runs. That is worth ~1.4x at batch 16-256 on a quiet
            # CPU (bench, serve), but in `generate` it takes cycles from the image-writer threads: generate asks
            # for spin=False (end to end 1,566 vs 1,431 images/s, median of 4, 2 cores).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3  # warnings about unused initializers etc. are noise for users
        self.providers = choose_providers(self.device)
        self.session = ort.InferenceSession(onnx_bytes_of(self.artifact), sess_options=so, providers=self.providers)
        self._inputs = self.spec.input_name
        self._outputs = [self.spec.output_name]

    def _simulate_qdq(self) -> bool:
        """Run a TensorRT-flavour INT8 model as plain Q/DQ arithmetic (no fused int8 kernels) on x86 CPUs without
        VNNI: there onnxruntime's fused u8/s8 kernels add pairs of products in int16 and saturate (measured: worst
        image 24 dB instead of 38 dB PSNR on the test generator), while TensorRT on a GPU computes what the
        unfused graph computes. Slower, but the images are the ones the engine will make."""
        from gan_deploy.core.hardware import has_int8_dot_product, is_x86

        meta = self.artifact.metadata
        if meta.get(META_INT8_TARGET) != "tensorrt" or not is_x86() or has_int8_dot_product():
            return False
        return True

    def infer_impl(self, z: np.ndarray) -> np.ndarray:
        return self.session.run(self._outputs, {self._inputs: z})[0]

    def describe(self) -> str:
        return f"onnxruntime ({', '.join(p.replace('ExecutionProvider', '') for p in getattr(self, 'providers', []))})"

"""onnxruntime: CPU provider here; CUDA (and TensorRT) providers when onnxruntime-gpu and a GPU are present."""
from __future__ import annotations

import importlib
import os

import numpy as np

from gan_deploy.artifacts.onnx import FIXED_BATCH_HINT, META_INT8_TARGET
from gan_deploy.backends.base import Runner, in_fixed_batches
from gan_deploy.core.errors import GanDeployError
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
        threads = self.options.get("threads") or env_threads()
        if threads:
            so.intra_op_num_threads = threads
        if not self.options.get("spin", True):
            # ORT's pool threads spin-wait between and after runs. That is worth ~1.4x at batch 16-256 on a quiet
            # CPU (bench, serve), but in `generate` it takes cycles from the image-writer threads: generate asks
            # for spin=False (end to end 1,566 vs 1,431 images/s, median of 4, 2 cores).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3  # warnings about unused initializers etc. are noise for users
        self.providers = choose_providers(self.device)
        try:
            self.session = ort.InferenceSession(onnx_bytes_of(self.artifact), sess_options=so, providers=self.providers)
        except GanDeployError:
            raise
        except Exception as e:  # onnxruntime's own error types (Fail, InvalidGraph, NotImplemented ...), per version
            raise GanDeployError("onnxruntime cannot load the model", f"{self.artifact.path} ({_first_line(e)})",
                                 expected="an ONNX model onnxruntime can run (standard ops, opset it supports, complete weights)",
                                 hint="check the file with `python -c \"import onnx; onnx.checker.check_model('FILE', full_check=True)\"`, "
                                      "or re-export it") from None
        self._inputs = self.spec.input_name
        self._outputs = [self.spec.output_name]
        self._batch = self.spec.fixed_batch
        self._probe()

    def _probe(self) -> None:
        """One inference before any real work: the images must have the shape the graph declares (a graph may
        declare [N, 1, 8, 8] and compute [N, 1, 4, 16]), and should fill the declared value range."""
        from gan_deploy.core.latents import latents_range

        b = self._batch or 2
        z = latents_range(0, 0, b, self.spec.latent_dim).reshape(b, *self.spec.latent_shape)
        y = self._run(z)
        want = (b, *self.spec.image_shape)
        if tuple(y.shape) != want:
            raise GanDeployError("ONNX model returns images of another shape than it declares", f"{self.artifact.path}: "
                                 f"declares {self.spec.output_name} [N, {', '.join(map(str, self.spec.image_shape))}], "
                                 f"returns {list(y.shape)} at batch {b}", expected=f"{list(want)}",
                                 hint="fix the graph's output shape (or its Reshape) and re-export; the declared shape is "
                                      "what every file and config is made for")
        if y.dtype != np.float32:
            raise GanDeployError("ONNX model returns the wrong element type", f"{self.artifact.path}: {y.dtype}", expected="float32")
        self.health.observe(y)
        self.health.check_spread(y)

    def _run(self, z: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(self._outputs, {self._inputs: z})[0]
        except Exception as e:
            raise GanDeployError("onnxruntime failed to run the model", f"{self.artifact.path} at batch {len(z)} ({_first_line(e)})",
                                 expected="a model that runs on latents [N, Z]",
                                 hint=FIXED_BATCH_HINT if self._batch else "check the model with onnxruntime directly; re-export it") from None

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
        return in_fixed_batches(self._run, z, self._batch, self.spec.image_shape)

    def describe(self) -> str:
        fixed = f"; fixed batch {self._batch}" if getattr(self, "_batch", None) else ""
        return f"onnxruntime ({', '.join(p.replace('ExecutionProvider', '') for p in getattr(self, 'providers', []))}{fixed})"


def env_threads() -> int:
    """GAN_DEPLOY_THREADS: onnxruntime's intra-op threads (0 or unset: onnxruntime's default, every core), at most
    core.hardware.compute_threads_bound()."""
    text = os.environ.get("GAN_DEPLOY_THREADS", "").strip()
    if not text:
        return 0
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise GanDeployError("bad GAN_DEPLOY_THREADS", repr(os.environ["GAN_DEPLOY_THREADS"]),
                             expected="an integer >= 0 (0: every core)", hint="unset it, or e.g. export GAN_DEPLOY_THREADS=2")
    from gan_deploy.core.errors import check_at_most
    from gan_deploy.core.hardware import compute_threads_bound

    check_at_most("too many threads", "GAN_DEPLOY_THREADS", n, *compute_threads_bound(), hint="unset it (every core), or e.g. export GAN_DEPLOY_THREADS=2")
    return n


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 240 else line[:237] + "..."

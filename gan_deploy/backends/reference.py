"""onnx's reference evaluator (numpy kernels, any dtype, slow) behind the runner interface the quality gate uses.

It runs what onnxruntime has no CPU kernel for (FP16 operators on some builds), so the FP16 pass can still be
gated on a small batch (`precision/fp16.py`).

Not registered in `BACKENDS`, on purpose: it is a checker, not a deployment runtime. It takes a serialized model
rather than an `Artifact` (the gate runs candidates that are not written yet), has none of a registered backend's
life cycle (activate/close, device, output health), and at ~1 s per 32x32 image it would make `--backend` and the
conformance test (tests/test_backends.py) offer a runtime nobody should deploy.
"""
from __future__ import annotations

import numpy as np

from gan_deploy.artifacts.spec import GeneratorSpec


class ReferenceEvaluatorRunner:
    """onnx.reference.ReferenceEvaluator with `.spec` and `.infer(z)`, what `precision.gate.run_gate` needs."""

    def __init__(self, model_bytes: bytes, spec: GeneratorSpec):
        from onnx.reference import ReferenceEvaluator

        self.spec = spec
        self._ev = ReferenceEvaluator(model_bytes)

    def infer(self, z: np.ndarray) -> np.ndarray:
        z = z.reshape(len(z), *self.spec.latent_shape)
        return np.asarray(self._ev.run(None, {self.spec.input_name: z})[0], dtype=np.float32)  # type: ignore[index]

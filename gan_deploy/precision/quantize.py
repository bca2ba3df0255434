"""Reduced precision on CPU: INT8 Q/DQ and FP16 ONNX models, each accepted only if it passes the quality gate.

`quantize(parent, QuantizeOptions(...))` is what `gan-deploy quantize` runs; the work is in one module per concept:

* `int8.py`: the INT8 builder (graph prepared by `rewrite.py`, ranges from `calibrate.py`, onnxruntime's Q/DQ
  quantizer; onnxruntime and TensorRT flavours), under an `Int8Policy` (`policy.py`);
* `search.py`: the calibration method the gate favours and, when full INT8 fails the gate, the mixed INT8/FP32
  search over the per-unit damage of `sensitivity.py`;
* `fp16.py`: the FP16 pass and its gate;
* `gate.py`: the checks every candidate must pass; `report.py`: what is returned and written; `lineage.py`: the
  child's metadata and file name (gan_deploy.precision = int8 | fp16, gan_deploy.parent_sha256 = sha256 of the
  FP32 ONNX it came from). A rejected artifact is not written.
"""
from __future__ import annotations

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.core.errors import GanDeployError
from gan_deploy.precision.calibrate import CALIB_SEED, DEFAULT_CALIB_SAMPLES
from gan_deploy.precision.fp16 import fp16_child, fp16_onnx_from_onnx
from gan_deploy.precision.int8 import Int8Builder
from gan_deploy.precision.options import QUANTIZE_PRECISIONS, QuantizeOptions
from gan_deploy.precision.policy import Int8Policy
from gan_deploy.precision.report import PrecisionReport
from gan_deploy.precision.search import int8_onnx_from_onnx


def quantize(parent: Artifact, opts: QuantizeOptions, raise_on_reject: bool = False) -> PrecisionReport:
    """What `gan-deploy quantize` runs: an INT8 or FP16 model of `parent`, written only if it passes the gate."""
    from gan_deploy.backends.memory import check_batch_fits

    # the gate keeps the FP32 and the reduced model's images of every gate latent: refused before any work
    check_batch_fits(parent, opts.gate_samples, "cpu", image_copies=2, activation_copies=0, option="--gate-samples")
    if opts.precision == "int8":
        return int8_onnx_from_onnx(parent, opts, raise_on_reject)
    return fp16_onnx_from_onnx(parent, opts, raise_on_reject)


def reduced_precision_model(parent: Artifact, precision: str, *, target: str = "onnxruntime",
                            calib_samples: int = DEFAULT_CALIB_SAMPLES, calib_seed: int = CALIB_SEED,
                            calib_method: str = "minmax", rewrite: bool = True, policy: Int8Policy | None = None):
    """The parent's FP32 ONNX (a checkpoint is exported in memory) as an INT8 Q/DQ or FP16 model, in memory,
    with its metadata, ungated. Returns (model, recipe, FP32 ONNX bytes). `build-engine` builds on it.
    INT8: all of it, or as `policy` says (its calibration method wins over `calib_method`)."""
    if precision == "int8":
        b = Int8Builder.for_parent(parent, target, calib_samples, calib_seed, rewrite)
        m, recipe = b.model(policy or Int8Policy(calib_method))
        return m, recipe, b.parent_bytes
    if precision == "fp16":
        return fp16_child(parent)
    raise GanDeployError("unknown reduced precision", repr(precision), expected=" or ".join(QUANTIZE_PRECISIONS))

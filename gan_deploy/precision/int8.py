"""The INT8 builder: an FP32 ONNX graph, prepared and calibrated once, as Q/DQ INT8 models under any `Int8Policy`.

BatchNorm is folded, DCGAN's transposed convolutions are rewritten exactly into Conv + DepthToSpace (onnxruntime
has no quantized ConvTranspose kernel), biases the exporter shared are untied (`rewrite.prepare_int8`), then
onnxruntime's static quantizer writes a Q/DQ model with per-channel INT8 weights and the activation ranges of
`calibrate.py` (prior latents, no data set). Two flavours, because the fast CPU form is not one TensorRT accepts:

* target onnxruntime: UINT8 asymmetric activations. onnxruntime then drops every ReLU into the preceding
  quantized convolution and runs QLinearConv end to end (U8S8, VNNI where the CPU has it).
* target tensorrt: INT8 symmetric activations (zero point 0) and FP32 biases, the only Q/DQ form TensorRT
  parses (it rejects INT32 bias DequantizeLinear and UINT8 activations). onnxruntime runs it too, correctly
  but slowly (ReLU between Q/DQ pairs stays in FP32), which is how its gate is checked here.

`Int8Builder.for_parent` builds from an artifact: its models then carry the parent's metadata (`lineage.py`).
Gating them, choosing the calibration method and the mixed search are `search.py`'s.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.onnx import INT8_TARGETS, require_dynamic_batch, set_onnx_metadata
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import sha256_bytes
from gan_deploy.precision.calibrate import (
    CALIB_BATCH,
    CALIB_SEED,
    DEFAULT_CALIB_SAMPLES,
    PriorLatents,
    calibrate,
    calibration_recipe,
    check_calib_method,
    check_calib_samples,
)
from gan_deploy.precision.lineage import child_meta, fp32_parent
from gan_deploy.precision.policy import Int8Policy
from gan_deploy.precision.rewrite import OUTPUT_ACTIVATIONS, prepare_int8, unquantize_inputs


def check_int8_target(target: str) -> str:
    if target not in INT8_TARGETS:
        raise GanDeployError("unknown INT8 target", repr(target), expected=f"one of {', '.join(INT8_TARGETS)}")
    return target


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs advice ("consider pre-processing") through the root logger, and its calibrators
    print progress to stdout: not for users."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def quantizable_op_types() -> frozenset[str]:
    """The operator types onnxruntime's static quantizer quantizes by default (its QDQ and QLinear registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


def _default_reduce_range(target: str) -> bool:
    # onnxruntime's u8s8 kernels on x86 without VNNI sum pairs of u8 x s8 products in int16 and saturate:
    # measured on an AVX2 EPYC, the tiny test generator lost 10-20 dB PSNR against the same Q/DQ graph run
    # unfused. 7-bit weights (reduce_range) make the pair sum fit. TensorRT (s8s8 on tensor cores) needs none.
    from gan_deploy.core.hardware import has_int8_dot_product, is_x86

    return target != "tensorrt" and is_x86() and not has_int8_dot_product()


def _ort_has_calibration_cache() -> bool:
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_prepared(prepared, spec: GeneratorSpec, target: str, policy: Int8Policy, calibration,
                      reduce_range: bool | None = None, use_cache: bool | None = None):
    """A prepared FP32 graph (`prepare_int8`) -> Q/DQ INT8 model under `policy`, with the activation ranges of
    `calibration` (`calibrate.calibrate`) for `policy.calib_method`. Returns (model, recipe entries)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    check_int8_target(target)
    names = {n.name for n in prepared.graph.node}
    unknown = [n for n in policy.exclude if n not in names]
    if unknown:
        raise GanDeployError("the INT8 policy names nodes this model does not have", ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else ""),
                             expected="node names of the same generator's prepared graph", hint="make the policy from this model (quantize --int8 --json)")
    trt = target == "tensorrt"
    if reduce_range is None:
        reduce_range = _default_reduce_range(target)
    extra: dict[str, Any] = {
        "WeightSymmetric": True,
        "ActivationSymmetric": trt,  # TensorRT: zero point 0 only
        "QuantizeBias": not trt,  # TensorRT's parser rejects INT32 DequantizeLinear; it quantizes biases itself
    }
    if use_cache is None:
        use_cache = _ort_has_calibration_cache()

    class Reader(PriorLatents, CalibrationDataReader):  # onnxruntime checks the base class
        pass

    tail = float_tail(prepared)
    with tempfile.TemporaryDirectory(prefix="gan-deploy-q-") as d, _quiet_quantizer():
        out = Path(d) / "int8.onnx"
        kw: dict[str, Any] = {}
        if use_cache:  # onnxruntime >= 1.32: our ranges as its calibration cache, no calibration run of its own
            kw["calibration_cache_path"] = calibration.write_ort_cache(policy.calib_method, Path(d) / "calibration.json")
            reader = None
        else:  # older: a token calibration run, overridden tensor by tensor with our ranges
            extra["TensorQuantOverrides"] = calibration.overrides(policy.calib_method)
            reader = Reader(spec, CALIB_BATCH // 4)
        # quantize_static rewrites the tensors of a ModelProto it calibrates on into external data: give it a copy
        quantize_static(onnx.ModelProto.FromString(prepared.SerializeToString()), out, reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=bool(reduce_range),
                        activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(policy.exclude) + [n for n in tail if n not in policy.exclude], calibrate_method=CalibrationMethod.MinMax, extra_options=extra, **kw)
        q = onnx.load(str(out))
    if tail:  # onnxruntime still rounds their input through Q/DQ (its producer's output): float in, float out
        unquantize_inputs(q, tail)
    recipe: dict[str, Any] = {"reduce_range": bool(reduce_range), "target": target, "weights": "int8 symmetric per-channel",
                              "activations": "int8 symmetric per-tensor" if trt else "uint8 asymmetric per-tensor",
                              "bias": "fp32" if trt else "int32"}
    if tail:
        recipe["float_tail"] = tail
    if policy.mixed:
        recipe["kept_fp32"] = list(policy.exclude)
    recipe["policy"] = policy.to_dict()
    return q, recipe


# Data movement that only reorders values (no arithmetic): quantizing it computes nothing in INT8
MOVEMENT_OPS = frozenset({"DepthToSpace", "SpaceToDepth", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})


def float_tail(model) -> list[str]:
    """Data-movement nodes whose every consumer is the model's output activation (Tanh/Sigmoid... producing a graph
    output, which stays FP32): their Q/DQ pair would only requantize values that leave INT8 at once. Left in float:
    no INT8 arithmetic is lost, one rounding step is saved, and OpenVINO 2026.4's CPU plugin, which moves such a
    per-tensor DequantizeLinear through the last DepthToSpace wrongly (images [N, 4, H, W] for [N, 1, H, W]), runs the
    model as declared."""
    outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    tail = []
    for n in model.graph.node:
        users = [u for o in n.output for u in consumers.get(o, [])]
        if (n.op_type in MOVEMENT_OPS and users and not any(o in outputs for o in n.output)
                and all(u.op_type in OUTPUT_ACTIVATIONS and any(o in outputs for o in u.output) for u in users)):
            tail.append(n.name)
    return tail


class Int8Builder:
    """One FP32 graph, prepared (`prepare_int8`) and calibrated once: INT8 Q/DQ models under any policy.

    The only INT8 builder: `quantize`, its search, the sensitivity report and `build-engine` all make their INT8
    models here. Built `for_parent` an artifact, its models carry the parent's gan_deploy.* metadata."""

    def __init__(self, model, spec: GeneratorSpec, target: str = "onnxruntime", calib_samples: int = DEFAULT_CALIB_SAMPLES,
                 calib_seed: int = CALIB_SEED, rewrite: bool = True, reduce_range: bool | None = None):
        check_int8_target(target)
        check_calib_samples(calib_samples)
        self.spec, self.target, self.reduce_range = spec, target, reduce_range
        self.parent: Artifact | None = None
        self.parent_bytes, self.parent_sha = b"", ""
        self.prepared, self.base_recipe = prepare_int8(model, rewrite)
        self.calibration = calibrate(self.prepared, spec, calib_samples, calib_seed)

    @classmethod
    def for_parent(cls, parent: Artifact, target: str = "onnxruntime", calib_samples: int = DEFAULT_CALIB_SAMPLES,
                   calib_seed: int = CALIB_SEED, rewrite: bool = True) -> "Int8Builder":
        """The builder of the parent's FP32 ONNX (a checkpoint is exported in memory)."""
        check_int8_target(target)  # before the export below, not after it
        check_calib_samples(calib_samples)
        require_dynamic_batch(parent, "INT8 calibration")  # it feeds batches of CALIB_BATCH latents
        model, data = fp32_parent(parent)
        b = cls(model, parent.spec, target, calib_samples, calib_seed, rewrite)
        b.parent, b.parent_bytes, b.parent_sha = parent, data, sha256_bytes(data)
        return b

    def model(self, policy: Int8Policy | None = None):
        """(Q/DQ model, recipe) under `policy` (default: all of it, minmax), with the parent's metadata if any."""
        policy = policy or Int8Policy()
        check_calib_method(policy.calib_method)
        q, part = quantize_prepared(self.prepared, self.spec, self.target, policy, self.calibration, self.reduce_range)
        recipe = {**self.base_recipe, "calibration": calibration_recipe(self.calibration, policy.calib_method), **part}
        if self.parent is not None:
            set_onnx_metadata(q, child_meta(self.parent, self.parent_sha, "int8", recipe))
            q.producer_name = "gan-deploy"
        return q, recipe

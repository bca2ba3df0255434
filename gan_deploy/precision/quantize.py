"""Reduced precision on CPU: INT8 Q/DQ and FP16 ONNX models, each accepted only if it passes the quality gate.

INT8 (`int8_onnx_from_onnx`): BatchNorm is folded, DCGAN's transposed convolutions are rewritten exactly into
Conv + DepthToSpace (`rewrite.py`: onnxruntime has no quantized ConvTranspose kernel), then onnxruntime's
static quantizer writes a Q/DQ model with per-channel INT8 weights, calibrated on latents drawn from the
generator's own prior (standard normal, `gan_deploy.core.latents`): a generator needs no data set to calibrate.
Two flavours, because the fast CPU form is not one TensorRT accepts:

* target onnxruntime: UINT8 asymmetric activations. onnxruntime then drops every ReLU into the preceding
  quantized convolution and runs QLinearConv end to end (U8S8, VNNI where the CPU has it).
* target tensorrt: INT8 symmetric activations (zero point 0) and FP32 biases, the only Q/DQ form TensorRT
  parses (it rejects INT32 bias DequantizeLinear and UINT8 activations). onnxruntime runs it too, correctly
  but slowly (ReLU between Q/DQ pairs stays in FP32), which is how its gate is checked here.

FP16 (`fp16_onnx_from_onnx`): our own pass (`fp16_model`), FP32 inputs and outputs kept, overflow-prone
operators kept in FP32 (see `KEEP_FP32_OPS`), checked in onnxruntime on CPU (it has FP16 Conv/ConvTranspose
kernels), or with onnx's reference evaluator on a small batch where it has not.

Every artifact carries its parent's gan_deploy.* metadata with gan_deploy.precision = int8 | fp16 and
gan_deploy.parent_sha256 = sha256 of the FP32 ONNX it came from. A rejected artifact is not written.
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from gan_deploy.artifacts.artifact import META_PRECISION, Artifact
from gan_deploy.artifacts.onnx import (
    META_CHECKPOINT_SHA,
    META_CONFIG,
    META_GATE,
    META_INT8_TARGET,
    META_PARENT_KIND,
    META_PARENT_SHA,
    META_RECIPE,
    META_TOLERANCE,
    META_VALUE_RANGE,
    spec_from_onnx_model,
)
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import atomic_write_bytes, sha256_bytes
from gan_deploy.core.latents import latents_range
from gan_deploy.core.resources import derived_output_dir
from gan_deploy.export.onnx import onnx_bytes_of
from gan_deploy.precision.gate import DEFAULT_GATE_SAMPLES, GateRejected, GateReport, GateThresholds, run_gate, thresholds_for

CALIB_SEED = 7919  # calibration latents; the gate uses gate.GATE_SEED so it never sees them
DEFAULT_CALIB_SAMPLES = 512
CALIB_BATCH = 64
CALIB_METHODS = ("minmax", "percentile", "entropy")
INT8_TARGETS = ("onnxruntime", "tensorrt")

# -- FP16 ------------------------------------------------------------------------------------------

# Operators left in FP32 by the FP16 pass, and why:
KEEP_FP32_OPS = frozenset({
    # normalizations compute a mean and variance: sums of squares overflow FP16's 65504 once |x| > ~16 over 256 values
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization", "LpNormalization",
    "MeanVarianceNormalization",
    # reductions and running sums: the same overflow (StyleGAN's weight demodulation is a ReduceSum + Sqrt)
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd",
    "CumSum",
    # exponentials and powers overflow; divisions and reciprocals blow up on values FP16 flushes to 0 (< 6e-8)
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Div", "Softmax", "LogSoftmax", "Softplus",
    # random sources: their dtype attribute says FP32
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
})
# the generator's final activation stays FP32: the output is cast to FP32 anyway, so casting before tanh instead of
# after costs nothing, and FP16 tanh would round every pixel near the rails to a 2^-11 grid (the saturated background)
OUTPUT_ACTIVATIONS = frozenset({"Tanh", "Sigmoid", "Clip", "HardSigmoid"})
FP32_ONLY_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}  # roi/scales are float32 whatever the data type
PASS_THROUGH_OPS = frozenset({"Shape", "Size"})  # read any type, write int64
FP16_MAX = 65504.0


@dataclass
class Fp16Info:
    fp16_nodes: int = 0
    fp32_nodes: list[str] = field(default_factory=list)  # "name (op)": what stayed FP32
    casts: int = 0


def fp16_model(model, keep_fp32_ops: frozenset[str] = KEEP_FP32_OPS):
    """FP32 ONNX -> FP16 ONNX with FP32 inputs/outputs. Returns (model, Fp16Info). BatchNorm is folded first."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gan_deploy.precision.rewrite import fold_batchnorms

    model, _ = fold_batchnorms(model)
    g = model.graph
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:
        raise GanDeployError("cannot infer the tensor types of the ONNX model", f"{type(e).__name__}: {str(e)[:160]}", expected="a model onnx.shape_inference accepts") from None
    orig: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output):
        orig[vi.name] = vi.type.tensor_type.elem_type
    inits = {i.name: i for i in g.initializer}
    for name, t in inits.items():
        orig[name] = t.data_type
    const_vals: dict[str, np.ndarray] = {n: numpy_helper.to_array(t) for n, t in inits.items() if t.data_type == FLOAT}
    graph_outputs = {o.name for o in g.output}

    info = Fp16Info()
    new_type: dict[str, int] = {i.name: orig.get(i.name, 0) for i in g.input}
    new_type.update({n: t.data_type for n, t in inits.items()})
    nodes: list = []
    new_inits: list = []
    cache: dict[tuple[str, int], str] = {}

    def convert(name: str, to: int) -> str:
        """`name` as type `to`: an FP16 copy of an initializer, or a Cast node (one per tensor and type)."""
        key = (name, to)
        if key not in cache:
            suffix = "_fp16" if to == HALF else "_fp32"
            if name in inits and to == HALF:
                new_inits.append(numpy_helper.from_array(const_vals[name].astype(np.float16), name + suffix))
            else:
                nodes.append(helper.make_node("Cast", [name], [name + suffix], name=name + "_cast" + suffix, to=to))
                info.casts += 1
            cache[key] = name + suffix
        return cache[key]

    def fits_fp16(name: str) -> bool:
        v = const_vals.get(name)
        return v is None or v.size == 0 or float(np.abs(v).max()) <= FP16_MAX

    for node in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise GanDeployError("FP16 conversion does not support control flow", f"{node.op_type} {node.name}", expected="a generator without If/Loop/Scan")
        op = node.op_type
        float_in = [i for i in node.input if i and orig.get(i) == FLOAT]
        float_out = [o for o in node.output if orig.get(o) == FLOAT]
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if op in PASS_THROUGH_OPS or (not float_in and not float_out and op != "Constant"):
            for o in node.output:
                new_type[o] = orig.get(o, 0)
            nodes.append(new)
            continue
        if op == "Cast":  # a cast into float32 now casts into the FP16 region
            to = next(a for a in new.attribute if a.name == "to")
            if to.i == FLOAT:
                to.i = HALF
            new_type[node.output[0]] = to.i
            nodes.append(new)
            continue
        if op in ("Constant", "ConstantOfShape"):
            attr = next((a for a in new.attribute if a.name == "value"), None)
            if attr is not None and attr.t.data_type == FLOAT:
                v = numpy_helper.to_array(attr.t)
                if v.size == 0 or float(np.abs(v).max()) <= FP16_MAX:
                    attr.t.CopyFrom(numpy_helper.from_array(v.astype(np.float16), attr.t.name))
                else:
                    const_vals[node.output[0]] = v  # too large for FP16: its consumers stay FP32
            new_type[node.output[0]] = attr.t.data_type if attr is not None else orig.get(node.output[0], FLOAT)
            if op == "ConstantOfShape" and attr is None:  # default value is float32 0: make it FP16 0
                new.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
                new_type[node.output[0]] = HALF
            nodes.append(new)
            continue
        keep32 = (op in keep_fp32_ops or (op in OUTPUT_ACTIVATIONS and any(o in graph_outputs for o in node.output))
                  or not all(fits_fp16(i) for i in float_in))
        want = FLOAT if keep32 else HALF
        for idx, i in enumerate(node.input):
            if not i or orig.get(i) != FLOAT:
                continue
            target = FLOAT if idx in FP32_ONLY_INPUTS.get(op, ()) else want
            if new_type.get(i, FLOAT) != target:
                new.input[idx] = convert(i, target)
        for o in node.output:
            new_type[o] = want if o in float_out else orig.get(o, 0)
        if keep32:
            info.fp32_nodes.append(f"{node.name or node.output[0]} ({op})")
        else:
            info.fp16_nodes += 1
        nodes.append(new)

    # FP32 outputs: an output produced in FP16 gets a final Cast under its original name
    for out in g.output:
        if new_type.get(out.name) == HALF:
            inner = out.name + "_fp16_out"
            for n in nodes:
                for k, o in enumerate(n.output):
                    if o == out.name:
                        n.output[k] = inner
                for k, i in enumerate(n.input):
                    if i == out.name:
                        n.input[k] = inner
            nodes.append(helper.make_node("Cast", [inner], [out.name], name=out.name + "_cast_fp32", to=FLOAT))
            info.casts += 1

    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    del g.value_info[:]  # types changed; stale entries would contradict them
    from gan_deploy.precision.rewrite import _drop_unused
    _drop_unused(model)
    try:
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)  # catches any type mismatch the pass left
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GanDeployError("FP16 conversion produced an inconsistent graph", str(e).splitlines()[0][:200], hint="report this model; the FP16 pass does not handle one of its operators") from None
    return model, info


# -- INT8 ------------------------------------------------------------------------------------------

class PriorLatents:
    """onnxruntime CalibrationDataReader: batches of latents from the generator's prior (no data set needed)."""

    def __init__(self, spec: GeneratorSpec, samples: int, seed: int = CALIB_SEED, batch: int = CALIB_BATCH):
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


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs advice ("consider pre-processing") through the root logger: not for users."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def int8_model(model, spec: GeneratorSpec, target: str = "onnxruntime", calib_samples: int = DEFAULT_CALIB_SAMPLES,
               calib_seed: int = CALIB_SEED, calib_method: str = "minmax", rewrite: bool = True,
               reduce_range: bool | None = None):
    """FP32 ONNX -> Q/DQ INT8 ONNX (per-channel weights). Returns (model, recipe dict)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from gan_deploy.precision.rewrite import conv_from_conv_transpose, fold_batchnorms

    if target not in INT8_TARGETS:
        raise GanDeployError("unknown INT8 target", repr(target), expected=f"one of {', '.join(INT8_TARGETS)}")
    if calib_method not in CALIB_METHODS:
        raise GanDeployError("unknown calibration method", repr(calib_method), expected=f"one of {', '.join(CALIB_METHODS)}")
    if calib_samples < CALIB_BATCH // 4:
        raise GanDeployError("too few calibration samples", calib_samples, expected=f">= {CALIB_BATCH // 4}", hint="512 is the default")
    model, n_bn = fold_batchnorms(model)
    recipe: dict[str, Any] = {"batchnorm_folded": n_bn, "calibration": {
        "samples": calib_samples, "seed": calib_seed, "method": calib_method,
        "data": "latents from the generator's prior: standard normal, gan_deploy.core.latents"}}
    if rewrite:
        model, rw = conv_from_conv_transpose(model)
        recipe["rewrite"] = {"rewritten": rw.rewritten, "kept": rw.kept}
    class Reader(PriorLatents, CalibrationDataReader):  # onnxruntime checks the base class
        pass

    reader = Reader(spec, calib_samples, calib_seed)
    trt = target == "tensorrt"
    if reduce_range is None:
        # onnxruntime's u8s8 kernels on x86 without VNNI sum pairs of u8 x s8 products in int16 and saturate:
        # measured on an AVX2 EPYC, the tiny test generator lost 10-20 dB PSNR against the same Q/DQ graph run
        # unfused. 7-bit weights (reduce_range) make the pair sum fit. TensorRT (s8s8 on tensor cores) needs none.
        from gan_deploy.core.hardware import has_int8_dot_product, is_x86
        reduce_range = not trt and is_x86() and not has_int8_dot_product()
    recipe["reduce_range"] = bool(reduce_range)
    extra = {
        "WeightSymmetric": True,
        "ActivationSymmetric": trt,  # TensorRT: zero point 0 only
        "QuantizeBias": not trt,  # TensorRT's parser rejects INT32 DequantizeLinear; it quantizes biases itself
    }
    if calib_method == "percentile":
        extra["CalibPercentile"] = 99.999  # type: ignore[assignment]
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calib_method]
    recipe.update(target=target, weights="int8 symmetric per-channel",
                  activations="int8 symmetric per-tensor" if trt else "uint8 asymmetric per-tensor",
                  bias="fp32" if trt else "int32")
    with tempfile.TemporaryDirectory(prefix="gan-deploy-q-") as d, _quiet_quantizer():
        out = Path(d) / "int8.onnx"
        quantize_static(model, out, reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=bool(reduce_range),
                        activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, extra_options=extra)
        q = onnx.load(str(out))
    return q, recipe


# -- the commands' library functions ------------------------------------------------------------------

@dataclass
class PrecisionReport:
    precision: str  # int8 | fp16
    path: Path | None  # None: rejected, nothing written
    parent: str
    parent_sha256: str  # the FP32 ONNX's
    gate: GateReport
    recipe: dict[str, Any]
    size_bytes: int
    parent_size_bytes: int

    @property
    def accepted(self) -> bool:
        return self.gate.accepted

    def summary(self) -> str:
        what = f"{self.precision}" + (f" ({self.recipe['target']} flavour)" if "target" in self.recipe else "")
        head = (f"wrote {self.path} ({what}, {self.size_bytes / 1e6:.2f} MB vs FP32 {self.parent_size_bytes / 1e6:.2f} MB)"
                if self.path else f"{what} model REJECTED: nothing was written")
        lines = [head, f"  from {self.parent} (FP32 ONNX sha256 {self.parent_sha256[:12]})"]
        if "rewrite" in self.recipe:
            rw = self.recipe["rewrite"]
            lines.append(f"  rewrite: {len(rw['rewritten'])} ConvTranspose -> Conv + DepthToSpace"
                         + (f"; kept: {'; '.join(rw['kept'])}" if rw["kept"] else ""))
        if "calibration" in self.recipe:
            c = self.recipe["calibration"]
            lines.append(f"  calibration: {c['samples']} prior latents (seed {c['seed']}), {c['method']}; "
                         f"weights {self.recipe['weights']}, activations {self.recipe['activations']}")
        if "fp32_nodes" in self.recipe:
            kept = self.recipe["fp32_nodes"]
            lines.append(f"  fp16: {self.recipe['fp16_nodes']} nodes FP16, kept FP32: {', '.join(kept) or 'none'}; "
                         f"checked with {self.recipe['checked_with']}")
        lines.append(self.gate.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "path": str(self.path) if self.path else None, "accepted": self.accepted,
                "parent": self.parent, "parent_sha256": self.parent_sha256, "size_bytes": self.size_bytes,
                "parent_size_bytes": self.parent_size_bytes, "recipe": self.recipe, "gate": self.gate.to_dict()}


def default_out(parent: Artifact, precision: str, target: str | None = None) -> Path:
    """models/x.safetensors or x.onnx -> models/x.int8.onnx | x.int8-tensorrt.onnx | x.fp16.onnx."""
    stem = parent.path.name.split(".")[0]
    tag = precision + ("-tensorrt" if precision == "int8" and target == "tensorrt" else "")
    return derived_output_dir(parent.path) / f"{stem}.{tag}.onnx"  # never inside the installed package


def _fp32_parent(parent: Artifact):
    """The parent's FP32 ONNX model and bytes, refusing a reduced-precision one."""
    import onnx

    if parent.kind == "engine":
        raise GanDeployError("cannot quantize a TensorRT engine", str(parent.path), expected="a checkpoint or an FP32 ONNX file")
    if parent.precision != "fp32":
        raise GanDeployError("the input model is already reduced precision", f"{parent.path} ({parent.precision})", expected="an FP32 checkpoint or ONNX file", hint="quantize the FP32 model it came from")
    data = onnx_bytes_of(parent)
    return onnx.load_model_from_string(data), data


def reference_runner(parent: Artifact, device: str = "cpu"):
    """Eager FP32 PyTorch when the parent has weights, else onnxruntime on the FP32 ONNX (itself verified
    against eager at export to 1e-4): the gate's reference."""
    from gan_deploy.backends import make_runner

    return make_runner("eager" if parent.kind == "checkpoint" else "onnxruntime", parent, device).activate()


def _child_meta(parent: Artifact, parent_sha: str, precision: str, recipe: dict[str, Any]) -> dict[str, str]:
    meta = {k: v for k, v in parent.metadata.items() if k.startswith("gan_deploy.") and k != META_TOLERANCE}
    if parent.kind == "checkpoint" and parent.config is not None:
        meta[META_CONFIG] = json.dumps(parent.config.to_dict())
    if parent.metadata.get(META_PARENT_SHA):
        meta[META_CHECKPOINT_SHA] = parent.metadata[META_PARENT_SHA]
    elif parent.kind == "checkpoint":
        meta[META_CHECKPOINT_SHA] = parent.sha256
    meta.update({META_PRECISION: precision, META_PARENT_SHA: parent_sha, META_PARENT_KIND: "onnx",
                 META_RECIPE: json.dumps(recipe),
                 # recorded even when the parent had none (a foreign ONNX given --value-range): the child must not
                 # fall back to the default range the gate did not check it in
                 META_VALUE_RANGE: json.dumps(list(parent.spec.value_range))})
    if "target" in recipe:
        meta[META_INT8_TARGET] = recipe["target"]
    return meta


def _candidate_artifact(parent: Artifact, model, out: Path) -> Artifact:
    data = model.SerializeToString()
    spec, meta = spec_from_onnx_model(model, out)
    art = Artifact("onnx", out, spec, sha256_bytes(data), parent.config, meta)
    art._onnx_bytes = data
    return art


def _finish(parent: Artifact, parent_bytes: bytes, model, precision: str, recipe: dict[str, Any], out: Path,
            gate: GateReport, raise_on_reject: bool) -> PrecisionReport:
    from gan_deploy.export.onnx import _set_meta

    if gate.accepted:
        _set_meta(model, {META_GATE: json.dumps(gate.to_dict()["figures"])})
    data = model.SerializeToString()
    report = PrecisionReport(precision, None, parent.describe(), sha256_bytes(parent_bytes), gate, recipe, len(data),
                             len(parent_bytes))
    if not gate.accepted:
        if raise_on_reject:
            raise GateRejected(gate, f"the {precision} model", "nothing was written; see the thresholds in `gan-deploy quantize --help`")
        return report
    atomic_write_bytes(out, data)
    report.path = out
    return report


def _check_out(out: Path, parent: Artifact) -> Path:
    out = Path(out)
    if out.is_dir():
        raise GanDeployError("output path is a folder", str(out), expected="a file name ending in .onnx")
    if out.resolve() == parent.path.resolve():
        raise GanDeployError("output would overwrite the input model", str(out), expected="a different file")
    return out


def reduced_precision_model(parent: Artifact, precision: str, *, target: str = "onnxruntime",
                            calib_samples: int = DEFAULT_CALIB_SAMPLES, calib_seed: int = CALIB_SEED,
                            calib_method: str = "minmax", rewrite: bool = True):
    """The parent's FP32 ONNX (a checkpoint is exported in memory) as an INT8 Q/DQ or FP16 model, in memory,
    with its metadata. Returns (model, recipe, FP32 ONNX bytes). `quantize` and `build-engine` share it."""
    from gan_deploy.export.onnx import _set_meta

    model, data = _fp32_parent(parent)
    if precision == "int8":
        m, recipe = int8_model(model, parent.spec, target, calib_samples, calib_seed, calib_method, rewrite)
    elif precision == "fp16":
        m, info = fp16_model(model)
        recipe = {"fp16_nodes": info.fp16_nodes, "fp32_nodes": info.fp32_nodes, "casts": info.casts, "io": "fp32"}
    else:
        raise GanDeployError("unknown reduced precision", repr(precision), expected="int8 or fp16")
    _set_meta(m, _child_meta(parent, sha256_bytes(data), precision, recipe))
    m.producer_name = "gan-deploy"
    return m, recipe, data


def int8_onnx_from_onnx(parent: Artifact, out: str | Path | None = None, *, target: str = "onnxruntime",
                        calib_samples: int = DEFAULT_CALIB_SAMPLES, calib_seed: int = CALIB_SEED,
                        calib_method: str = "minmax", rewrite: bool = True, thresholds: GateThresholds | None = None,
                        gate_samples: int = DEFAULT_GATE_SAMPLES, raise_on_reject: bool = True) -> PrecisionReport:
    """Quantize the parent's FP32 ONNX (a checkpoint is exported in memory) to Q/DQ INT8, gate it, write it."""
    from gan_deploy.backends import make_runner

    out = _check_out(Path(out) if out else default_out(parent, "int8", target), parent)
    q, recipe, data = reduced_precision_model(parent, "int8", target=target, calib_samples=calib_samples,
                                              calib_seed=calib_seed, calib_method=calib_method, rewrite=rewrite)
    with make_runner("onnxruntime", _candidate_artifact(parent, q, out), "cpu") as runner:
        gate = run_gate(runner, reference_runner(parent), thresholds or thresholds_for("int8"), "int8", gate_samples)
    return _finish(parent, data, q, "int8", recipe, out, gate, raise_on_reject)


def fp16_onnx_from_onnx(parent: Artifact, out: str | Path | None = None, *, thresholds: GateThresholds | None = None,
                        gate_samples: int = DEFAULT_GATE_SAMPLES, raise_on_reject: bool = True,
                        evaluator: str = "auto") -> PrecisionReport:
    """Convert the parent's FP32 ONNX to FP16 (FP32 I/O), gate it, write it.

    evaluator: auto (onnxruntime if it has FP16 kernels here, else the ONNX reference evaluator on at most
    `REFERENCE_EVALUATOR_SAMPLES` latents), onnxruntime, or reference.
    """
    from gan_deploy.export.onnx import _set_meta

    out = _check_out(Path(out) if out else default_out(parent, "fp16"), parent)
    h, recipe, data = reduced_precision_model(parent, "fp16")
    candidate, checked_with = _fp16_candidate(_candidate_artifact(parent, h, out), evaluator)
    n = gate_samples if checked_with == "onnxruntime" else min(gate_samples, REFERENCE_EVALUATOR_SAMPLES)
    recipe["checked_with"] = checked_with + ("" if n == gate_samples else f" on {n} latents")
    _set_meta(h, {META_RECIPE: json.dumps(recipe)})
    gate = run_gate(candidate, reference_runner(parent), thresholds or thresholds_for("fp16"), "fp16", n,
                    batch_size=256 if checked_with == "onnxruntime" else 8)
    return _finish(parent, data, h, "fp16", recipe, out, gate, raise_on_reject)


REFERENCE_EVALUATOR_SAMPLES = 64  # numpy reference kernels take ~1 s per 32x32 image; the quality score needs >= 32


def _fp16_candidate(cand: Artifact, evaluator: str):
    """A runner for the FP16 model: onnxruntime when it can run it on this CPU, else onnx's reference evaluator."""
    from gan_deploy.backends import make_runner

    if evaluator not in ("auto", "onnxruntime", "reference"):
        raise GanDeployError("unknown FP16 evaluator", repr(evaluator), expected="auto, onnxruntime or reference")
    if evaluator in ("auto", "onnxruntime"):
        try:
            return make_runner("onnxruntime", cand, "cpu").activate(), "onnxruntime"
        except Exception as e:  # onnxruntime raises its own NOT_IMPLEMENTED types when a kernel is missing
            if evaluator == "onnxruntime" or "NOT_IMPLEMENTED" not in str(e).upper().replace(" ", "_"):
                raise
    return ReferenceEvaluatorRunner(onnx_bytes_of(cand), cand.spec), "onnx.reference"


class ReferenceEvaluatorRunner:
    """onnx.reference.ReferenceEvaluator behind the runner interface the gate uses (numpy, any dtype, slow)."""

    def __init__(self, model_bytes: bytes, spec: GeneratorSpec):
        from onnx.reference import ReferenceEvaluator

        self.spec = spec
        self._ev = ReferenceEvaluator(model_bytes)

    def infer(self, z: np.ndarray) -> np.ndarray:
        z = z.reshape(len(z), *self.spec.latent_shape)
        return np.asarray(self._ev.run(None, {self.spec.input_name: z})[0], dtype=np.float32)  # type: ignore[index]


QUANTIZE_PRECISIONS = ("int8", "fp16")
FP16_EVALUATORS = ("auto", "onnxruntime", "reference")


@dataclass
class QuantizeOptions:
    """Everything `gan-deploy quantize` decides, as one object."""

    precision: str = "int8"  # one of QUANTIZE_PRECISIONS
    out: str | Path | None = None  # default: default_out(parent, precision, target)
    target: str = "onnxruntime"  # int8 flavour: INT8_TARGETS
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_seed: int = CALIB_SEED
    calib_method: str = "minmax"  # CALIB_METHODS
    rewrite: bool = True  # ConvTranspose -> Conv + DepthToSpace before INT8
    evaluator: str = "auto"  # fp16: FP16_EVALUATORS
    gate_samples: int = DEFAULT_GATE_SAMPLES
    thresholds: GateThresholds | None = None  # None: gate.THRESHOLDS[precision]


def quantize(parent: Artifact, opts: QuantizeOptions, raise_on_reject: bool = False) -> PrecisionReport:
    """What `gan-deploy quantize` runs: an INT8 or FP16 model of `parent`, written only if it passes the gate."""
    if opts.precision == "int8":
        return int8_onnx_from_onnx(parent, opts.out, target=opts.target, calib_samples=opts.calib_samples,
                                   calib_seed=opts.calib_seed, calib_method=opts.calib_method, rewrite=opts.rewrite,
                                   thresholds=opts.thresholds, gate_samples=opts.gate_samples, raise_on_reject=raise_on_reject)
    if opts.precision == "fp16":
        return fp16_onnx_from_onnx(parent, opts.out, thresholds=opts.thresholds, gate_samples=opts.gate_samples,
                                   evaluator=opts.evaluator, raise_on_reject=raise_on_reject)
    raise GanDeployError("unknown reduced precision", repr(opts.precision), expected=" or ".join(QUANTIZE_PRECISIONS))

"""Reduced precision on CPU: INT8 Q/DQ and FP16 ONNX models, each accepted only if it passes the quality gate.

INT8 (`int8_onnx_from_onnx`): BatchNorm is folded, DCGAN's transposed convolutions are rewritten exactly into
Conv + DepthToSpace (`rewrite.py`: onnxruntime has no quantized ConvTranspose kernel), biases the exporter shared
are untied (`untie_biases`), then onnxruntime's static quantizer writes a Q/DQ model with per-channel INT8 weights,
calibrated on latents drawn from the generator's own prior (standard normal, `gan_deploy.core.latents`): a
generator needs no data set to calibrate. Activation ranges come from `calibrate.py` (minmax, percentile or
entropy from one calibration run; "auto" lets the gate choose). What is quantized is an `Int8Policy`: all of it,
or all but the nodes a mixed precision search (`sensitivity.py`) keeps in FP32 when full INT8 fails the gate.
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
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

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
    require_dynamic_batch,
    spec_from_onnx_model,
)
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import atomic_write_bytes, sha256_bytes
from gan_deploy.core.latents import latents_range
from gan_deploy.core.outputs import refuse_inputs_as_outputs
from gan_deploy.core.resources import derived_output_dir
from gan_deploy.export.onnx import onnx_bytes_of
from gan_deploy.precision.calibrate import CALIB_METHODS
from gan_deploy.precision.gate import DEFAULT_GATE_SAMPLES, GateRejected, GateReport, GateThresholds, run_gate, thresholds_for

CALIB_SEED = 7919  # calibration latents; the gate uses gate.GATE_SEED so it never sees them
DEFAULT_CALIB_SAMPLES = 512
CALIB_BATCH = 64
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

KEEP_PRECISIONS = ("fp32",)  # what nodes kept out of INT8 run in (FP16 islands inside a Q/DQ model: not done)


@dataclass
class Int8Policy:
    """What an INT8 model quantizes, whatever the flavour: the calibration method and the nodes kept out of INT8.

    `exclude` names nodes of the graph the quantizer sees (after BatchNorm folding and the ConvTranspose rewrite,
    see `prepare_int8`): onnxruntime's quantizer (`nodes_to_exclude`) then leaves them in FP32 with FP32 weights, and
    puts no Q/DQ pair on their inputs or outputs for their sake (a tensor they share with a quantized node is still
    quantized for that node). The same policy gives the onnxruntime flavour and the TensorRT flavour, so a search run
    for one can be applied to the other (`quantize --policy`). `reasons` says why each node was kept.
    """

    calib_method: str = "minmax"  # CALIB_METHODS
    exclude: tuple[str, ...] = ()
    keep: str = "fp32"  # KEEP_PRECISIONS
    reasons: dict[str, str] = field(default_factory=dict)
    source: str = "default"  # default | search | the file it was read from

    @property
    def mixed(self) -> bool:
        return bool(self.exclude)

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "calib_method": self.calib_method, "keep": self.keep, "exclude": list(self.exclude),
                "reasons": dict(self.reasons), "source": self.source}

    @classmethod
    def from_dict(cls, d: Any, where: str = "<policy>") -> "Int8Policy":
        if isinstance(d, dict) and "recipe" in d and isinstance(d["recipe"], dict) and "policy" in d["recipe"]:
            d = d["recipe"]["policy"]  # a `quantize --json` report: its model's policy
        if not isinstance(d, dict) or not isinstance(d.get("exclude", []), list):
            raise GanDeployError("not an INT8 policy", where, expected='a JSON object {"calib_method": ..., "exclude": [node names]}',
                                 hint="use the JSON that `quantize --int8 --json FILE` wrote")
        method, keep = d.get("calib_method", "minmax"), d.get("keep", "fp32")
        if method not in CALIB_METHODS:
            raise GanDeployError("INT8 policy has an unknown calibration method", f"{where}: {method!r}", expected=" or ".join(CALIB_METHODS))
        if keep not in KEEP_PRECISIONS:
            raise GanDeployError("INT8 policy keeps nodes in an unsupported precision", f"{where}: {keep!r}", expected=" or ".join(KEEP_PRECISIONS))
        if not all(isinstance(n, str) for n in d.get("exclude", [])):
            raise GanDeployError("INT8 policy: exclude must list node names", where, expected="strings")
        return cls(method, tuple(d.get("exclude", [])), keep, {str(k): str(v) for k, v in dict(d.get("reasons", {})).items()},
                   str(d.get("source", where)))

    @classmethod
    def load(cls, path: str | Path) -> "Int8Policy":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise GanDeployError("policy file not found", str(p)) from None
        except (OSError, ValueError) as e:
            raise GanDeployError("cannot read the policy file", f"{p} ({type(e).__name__}: {str(e)[:120]})", expected="JSON") from None
        pol = cls.from_dict(d, str(p))
        pol.source = str(p)
        return pol


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


def prepare_int8(model, rewrite: bool = True):
    """The graph the quantizer sees: BatchNorm folded, ConvTranspose rewritten (`rewrite.py`), every node named
    (policies and the sensitivity report refer to nodes by name). Returns (model, recipe entries)."""
    from gan_deploy.precision.rewrite import conv_from_conv_transpose, fold_batchnorms

    model, n_bn = fold_batchnorms(model)
    recipe: dict[str, Any] = {"batchnorm_folded": n_bn}
    if rewrite:
        model, rw = conv_from_conv_transpose(model)
        recipe["rewrite"] = {"rewritten": rw.rewritten, "kept": rw.kept}
    n_untied = untie_biases(model)
    if n_untied:
        recipe["untied_biases"] = n_untied
    seen: set[str] = set()
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{k}_{node.output[0] if node.output else ''}"
        seen.add(node.name)
    return model, recipe


BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def untie_biases(model) -> int:
    """Give every Conv/ConvTranspose/Gemm its own bias initializer, in place. Returns how many were untied.

    The PyTorch exporter stores equal tensors once (later uses read it through Identity nodes): biases that are
    still at their initial value (StyleGAN's style affines all start at 1, mapping layers at 0) end up shared.
    onnxruntime's quantizer then quantizes the shared bias once, to INT32 with the *first* layer's scale
    (input scale x weight scale), and every other quantized layer's fused kernel reads those integers with its
    own scale: measured on the tiny variant of the StyleGAN2-style example, two style affines quantized together gave 23.6 dB worst
    PSNR where each alone gave 41 dB (the unfused Q/DQ graph, which dequantizes the bias with the right scale,
    was fine). A private copy per layer costs a few hundred bytes per layer and makes each bias scale its own.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    ident = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input and n.output}

    def source(name: str) -> str:
        seen = 0
        while name in ident and seen < 16:
            name, seen = ident[name], seen + 1
        return name

    uses: dict[str, int] = {}
    for n in g.node:
        if n.op_type == "Identity":
            continue
        for i in n.input:
            if i:
                s = source(i)
                uses[s] = uses.get(s, 0) + 1
    untied = 0
    for n in g.node:
        k = BIAS_INPUT.get(n.op_type)
        if k is None or len(n.input) <= k or not n.input[k]:
            continue
        src = source(n.input[k])
        if src not in inits:
            continue
        if uses.get(src, 0) > 1:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[src]).copy(), f"{src}__untied_{untied}")
            g.initializer.append(copy)
            n.input[k] = copy.name
            untied += 1
        elif n.input[k] != src:
            n.input[k] = src  # the only user: read the initializer itself, not an Identity of it
    if untied:
        from gan_deploy.precision.rewrite import _drop_unused

        _drop_unused(model)
    return untied


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

    if target not in INT8_TARGETS:
        raise GanDeployError("unknown INT8 target", repr(target), expected=f"one of {', '.join(INT8_TARGETS)}")
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
                        nodes_to_exclude=list(policy.exclude), calibrate_method=CalibrationMethod.MinMax, extra_options=extra, **kw)
        q = onnx.load(str(out))
    recipe: dict[str, Any] = {"reduce_range": bool(reduce_range), "target": target, "weights": "int8 symmetric per-channel",
                              "activations": "int8 symmetric per-tensor" if trt else "uint8 asymmetric per-tensor",
                              "bias": "fp32" if trt else "int32"}
    if policy.mixed:
        recipe["kept_fp32"] = list(policy.exclude)
    recipe["policy"] = policy.to_dict()
    return q, recipe


def calibration_recipe(calibration, method: str) -> dict[str, Any]:
    from gan_deploy.precision.calibrate import summary_of

    return {"samples": calibration.samples, "seed": calibration.seed, "method": method,
            "data": "latents from the generator's prior: standard normal, gan_deploy.core.latents", **summary_of(calibration)}


def int8_model(model, spec: GeneratorSpec, target: str = "onnxruntime", calib_samples: int = DEFAULT_CALIB_SAMPLES,
               calib_seed: int = CALIB_SEED, calib_method: str = "minmax", rewrite: bool = True,
               reduce_range: bool | None = None, policy: Int8Policy | None = None):
    """FP32 ONNX -> Q/DQ INT8 ONNX (per-channel weights), all of it or as `policy` says. Returns (model, recipe)."""
    from gan_deploy.precision.calibrate import calibrate

    if target not in INT8_TARGETS:
        raise GanDeployError("unknown INT8 target", repr(target), expected=f"one of {', '.join(INT8_TARGETS)}")
    policy = policy or Int8Policy(calib_method)
    if policy.calib_method not in CALIB_METHODS:
        raise GanDeployError("unknown calibration method", repr(policy.calib_method), expected=f"one of {', '.join(CALIB_METHODS)}",
                             hint="'auto' chooses by the quality gate: only `quantize` (int8_onnx_from_onnx) does that")
    if calib_samples < CALIB_BATCH // 4:
        raise GanDeployError("too few calibration samples", calib_samples, expected=f">= {CALIB_BATCH // 4}", hint="512 is the default")
    prepared, recipe = prepare_int8(model, rewrite)
    cal = calibrate(prepared, spec, calib_samples, calib_seed)
    q, part = quantize_prepared(prepared, spec, target, policy, cal, reduce_range)
    recipe["calibration"] = calibration_recipe(cal, policy.calib_method)
    recipe.update(part)
    return q, recipe


# -- the commands' library functions ------------------------------------------------------------------

@dataclass
class PrecisionReport:
    precision: str  # int8 | fp16
    path: Path | None  # None: nothing written (rejected by the gate, or `note` says why)
    parent: str
    parent_sha256: str  # the FP32 ONNX's
    gate: GateReport
    recipe: dict[str, Any]
    size_bytes: int
    parent_size_bytes: int
    attempts: dict[str, GateReport] = field(default_factory=dict)  # int8: full INT8 per calibration method tried
    sensitivity: Any = None  # int8 mixed search: sensitivity.SensitivityReport
    search: Any = None  # int8 mixed search: sensitivity.SearchResult
    speed: dict[str, Any] | None = None  # int8 mixed: sensitivity.speed_vs_fp32
    note: str | None = None  # why nothing was written when the gate accepted, or what the search concluded

    @property
    def accepted(self) -> bool:
        return self.gate.accepted

    def summary(self) -> str:
        what = f"{self.precision}" + (f" ({self.recipe['target']} flavour)" if "target" in self.recipe else "")
        kept = self.recipe.get("kept_fp32") or []
        if kept:
            what += f", mixed: {len(kept)} node(s) kept FP32"
        if self.path:
            head = f"wrote {self.path} ({what}, {self.size_bytes / 1e6:.2f} MB vs FP32 {self.parent_size_bytes / 1e6:.2f} MB)"
        elif self.gate.accepted:
            head = f"{what} model passes the gate but was NOT written: {self.note}"
        else:
            head = f"{what} model REJECTED: nothing was written"
        lines = [head, f"  from {self.parent} (FP32 ONNX sha256 {self.parent_sha256[:12]})"]
        if "rewrite" in self.recipe:
            rw = self.recipe["rewrite"]
            lines.append(f"  rewrite: {len(rw['rewritten'])} ConvTranspose -> Conv + DepthToSpace"
                         + (f"; kept: {'; '.join(rw['kept'])}" if rw["kept"] else ""))
        if "calibration" in self.recipe:
            c = self.recipe["calibration"]
            lines.append(f"  calibration: {c['samples']} prior latents (seed {c['seed']}), {c['method']}; "
                         f"weights {self.recipe['weights']}, activations {self.recipe['activations']}")
            if c.get("chosen_by"):
                lines.append(f"  calibration chosen by the gate's figures ({c['chosen_by']['rule']}):")
                for m, d in c["chosen_by"]["methods"].items():
                    lines.append(f"    {m:<10} full INT8 {'ACCEPTED' if d['accepted'] else 'REJECTED'}, damage {d['damage']}: {d['figures']}")
        if "fp32_nodes" in self.recipe:
            fkept = self.recipe["fp32_nodes"]
            lines.append(f"  fp16: {self.recipe['fp16_nodes']} nodes FP16, kept FP32: {', '.join(fkept) or 'none'}; "
                         f"checked with {self.recipe['checked_with']}")
        if self.sensitivity is not None:
            sens = self.sensitivity
            lines.append(f"  full INT8 failed the gate: mixed precision search over {len(sens.rows)} units "
                         f"({sens.quantizable_nodes} quantizable nodes), damage of each alone on {sens.n_images} gate latents "
                         f"in {sens.seconds:.0f} s")
        if self.search is not None:
            steps = ", ".join(f"{st.kept_units} -> {'ok' if st.accepted else 'fail'}" for st in self.search.steps)
            lines.append(f"  search (units kept FP32 -> gate on {self.gate.n_images} latents): {steps}")
        mixed = self.recipe.get("mixed")
        if mixed:
            lines.append(f"  kept in FP32 ({len(mixed['units'])} unit(s), most damaging first; damage = share of a gate "
                         "limit the unit uses alone in INT8):")
            for u in mixed["units"]:
                lines.append(f"    {u['unit']} ({u['op_type']}{', ' + str(len(u['nodes'])) + ' nodes' if len(u['nodes']) > 1 else ''}): "
                             f"{u['reason']}")
        if self.speed:
            sp = self.speed
            lines.append(f"  speed vs FP32 (onnxruntime CPU, batch {sp['batch']}, {sp['rounds']} interleaved rounds, median of "
                         f"p50): FP32 {sp['fp32_ms']:.1f} ms, INT8 {sp['int8_ms']:.1f} ms: {sp['speedup']:.2f}x")
        if self.note and (self.path or not self.gate.accepted):
            lines.append(f"  note: {self.note}")
        lines.append(self.gate.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {"precision": self.precision, "path": str(self.path) if self.path else None, "accepted": self.accepted,
             "parent": self.parent, "parent_sha256": self.parent_sha256, "size_bytes": self.size_bytes,
             "parent_size_bytes": self.parent_size_bytes, "recipe": self.recipe, "gate": self.gate.to_dict(), "note": self.note}
        if self.attempts:
            d["full_int8"] = {m: g.to_dict() for m, g in self.attempts.items()}
        if self.sensitivity is not None:
            d["sensitivity"] = self.sensitivity.to_dict()
        if self.search is not None:
            d["search"] = self.search.to_dict()
        if self.speed is not None:
            d["speed"] = self.speed
        return d


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
    refuse_inputs_as_outputs([out], parent.files(), option="-o/--out")  # the checkpoint's sidecar too
    return out


def reduced_precision_model(parent: Artifact, precision: str, *, target: str = "onnxruntime",
                            calib_samples: int = DEFAULT_CALIB_SAMPLES, calib_seed: int = CALIB_SEED,
                            calib_method: str = "minmax", rewrite: bool = True, policy: Int8Policy | None = None):
    """The parent's FP32 ONNX (a checkpoint is exported in memory) as an INT8 Q/DQ or FP16 model, in memory,
    with its metadata. Returns (model, recipe, FP32 ONNX bytes). `quantize` and `build-engine` share it.
    INT8: all of it, or as `policy` says (its calibration method wins over `calib_method`)."""
    from gan_deploy.export.onnx import _set_meta

    if precision == "int8":
        require_dynamic_batch(parent, "INT8 calibration")  # it feeds batches of CALIB_BATCH latents
    model, data = _fp32_parent(parent)
    if precision == "int8":
        m, recipe = int8_model(model, parent.spec, target, calib_samples, calib_seed, calib_method, rewrite, policy=policy)
    elif precision == "fp16":
        m, info = fp16_model(model)
        recipe = {"fp16_nodes": info.fp16_nodes, "fp32_nodes": info.fp32_nodes, "casts": info.casts, "io": "fp32"}
    else:
        raise GanDeployError("unknown reduced precision", repr(precision), expected="int8 or fp16")
    _set_meta(m, _child_meta(parent, sha256_bytes(data), precision, recipe))
    m.producer_name = "gan-deploy"
    return m, recipe, data


class _Int8Maker:
    """One parent, prepared and calibrated once: INT8 candidates under any policy, with their metadata, and runners."""

    def __init__(self, parent: Artifact, target: str, calib_samples: int, calib_seed: int, rewrite: bool, out: Path):
        from gan_deploy.precision.calibrate import calibrate

        if target not in INT8_TARGETS:
            raise GanDeployError("unknown INT8 target", repr(target), expected=f"one of {', '.join(INT8_TARGETS)}")
        if calib_samples < CALIB_BATCH // 4:
            raise GanDeployError("too few calibration samples", calib_samples, expected=f">= {CALIB_BATCH // 4}", hint="512 is the default")
        require_dynamic_batch(parent, "INT8 calibration")  # it feeds batches of CALIB_BATCH latents
        self.parent, self.target, self.out = parent, target, out
        model, self.data = _fp32_parent(parent)
        self.parent_sha = sha256_bytes(self.data)
        self.prepared, self.base_recipe = prepare_int8(model, rewrite)
        self.calibration = calibrate(self.prepared, parent.spec, calib_samples, calib_seed)

    def model(self, policy: Int8Policy, extra_recipe: dict[str, Any] | None = None):
        """(Q/DQ model with gan_deploy metadata, recipe)."""
        from gan_deploy.export.onnx import _set_meta

        q, part = quantize_prepared(self.prepared, self.parent.spec, self.target, policy, self.calibration)
        recipe = {**self.base_recipe, "calibration": calibration_recipe(self.calibration, policy.calib_method), **part,
                  **(extra_recipe or {})}
        _set_meta(q, _child_meta(self.parent, self.parent_sha, "int8", recipe))
        q.producer_name = "gan-deploy"
        return q, recipe

    def runner(self, model):
        from gan_deploy.backends import make_runner

        return make_runner("onnxruntime", _candidate_artifact(self.parent, model, self.out), "cpu").activate()

    def check(self, bench, model) -> GateReport:
        r = self.runner(model)
        try:
            return bench.check(r)
        finally:
            r.close()

    def fp32_runner(self):
        """The FP32 model the INT8 one replaces, in onnxruntime: what its speed is compared with."""
        from gan_deploy.backends import make_runner

        if self.parent.kind == "onnx":
            return make_runner("onnxruntime", self.parent, "cpu").activate()
        art = Artifact("onnx", self.out.with_suffix(".fp32.onnx"), self.parent.spec, self.parent_sha, self.parent.config,
                       dict(self.parent.metadata))
        art._onnx_bytes = self.data
        return make_runner("onnxruntime", art, "cpu").activate()


def _damage(report: GateReport) -> float:
    from gan_deploy.precision.sensitivity import shares

    v = shares(report, report.thresholds).values()
    return max(v) if v else 0.0


def _fmt_damage(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.3g}"


def int8_onnx_from_onnx(parent: Artifact, out: str | Path | None = None, *, target: str = "onnxruntime",
                        calib_samples: int = DEFAULT_CALIB_SAMPLES, calib_seed: int = CALIB_SEED,
                        calib_method: str = "auto", rewrite: bool = True, thresholds: GateThresholds | None = None,
                        gate_samples: int = DEFAULT_GATE_SAMPLES, raise_on_reject: bool = True, mixed: bool = True,
                        policy: Int8Policy | None = None, sensitivity_samples: int | None = None,
                        speed_rounds: int | None = None, min_speedup: float = 1.0,
                        progress: Callable[[str], None] | None = None) -> PrecisionReport:
    """Quantize the parent's FP32 ONNX (a checkpoint is exported in memory) to Q/DQ INT8, gate it, write it.

    1. Full INT8, calibrated with `calib_method`; "auto": minmax, and only if that fails the gate percentile and
       entropy too (compared on the first `sensitivity_samples` gate latents, confirmed on all of them if they
       pass there); the method the gate's figures favour (passing, then lowest damage) is kept, and the figures
       of each are recorded in the recipe.
    2. If no full INT8 model passes and `mixed`: the per-unit sensitivity analysis (`sensitivity.py`) ranks what
       INT8 damages, and the search keeps the most damaging units in FP32 until the gate passes. For the
       onnxruntime flavour the result is timed against FP32 (`speed_vs_fp32`) and written only if it is at least
       `min_speedup` times as fast; the TensorRT flavour runs unfused on CPU, so its speed is TensorRT's to show.
    `policy` (e.g. `Int8Policy.load` of an earlier run's JSON) skips both: that calibration, those nodes kept FP32.
    """
    from gan_deploy.precision import sensitivity as sn

    if calib_method != "auto" and calib_method not in CALIB_METHODS:
        raise GanDeployError("unknown calibration method", repr(calib_method), expected=f"auto or one of {', '.join(CALIB_METHODS)}")
    out = _check_out(Path(out) if out else default_out(parent, "int8", target), parent)
    say = progress or (lambda _msg: None)
    t = thresholds or thresholds_for("int8")
    maker = _Int8Maker(parent, target, calib_samples, calib_seed, rewrite, out)
    reference = reference_runner(parent)
    bench = sn.GateBench(reference, t, gate_samples)

    if policy is not None:  # a given policy: no choice, no search
        q, recipe = maker.model(policy)
        gate = maker.check(bench, q)
        if not policy.mixed or not gate.accepted:
            return _finish(parent, maker.data, q, "int8", recipe, out, gate, raise_on_reject)
        return _mixed_finish(maker, q, recipe, gate, {}, None, None, speed_rounds, min_speedup, raise_on_reject, say)

    methods = CALIB_METHODS if calib_method == "auto" else (calib_method,)
    n_sens = sensitivity_samples or sn.DEFAULT_SENSITIVITY_SAMPLES
    sbench = sn.GateBench(reference, t, n_sens) if mixed or len(methods) > 1 else None
    # full INT8 per method: the first on the gate's latents (today's model when it passes); the others, tried only
    # when it fails, are compared on the first n_sens gate latents and confirmed on all of them if they pass there
    attempts: dict[str, tuple[Any, dict[str, Any], GateReport]] = {}
    small: dict[str, GateReport] = {}
    for i, m in enumerate(methods):
        q, recipe = maker.model(Int8Policy(m))
        if i == 0:
            attempts[m] = (q, recipe, maker.check(bench, q))
            if attempts[m][2].accepted:
                break
            say(f"full INT8, {m} calibration: REJECTED on {gate_samples} gate latents - {sn.brief(attempts[m][2])}")
            if len(methods) == 1:
                break
            small[m] = maker.check(sbench, q)
            continue
        small[m] = maker.check(sbench, q)
        say(f"full INT8, {m} calibration, first {n_sens} gate latents: "
            f"{'ACCEPTED' if small[m].accepted else 'REJECTED'} - {sn.brief(small[m])}")
        attempts[m] = (q, recipe, maker.check(bench, q) if small[m].accepted else small[m])
    passing = [m for m in attempts if attempts[m][2].accepted]
    if passing:
        best = min(passing, key=lambda m: (_damage(attempts[m][2]), methods.index(m)))
    else:
        best = min(small or attempts, key=lambda m: (_damage((small or {m: attempts[m][2]})[m]), methods.index(m)))
    if calib_method == "auto" and len(attempts) > 1:
        chosen = {"rule": f"auto: a method whose full INT8 model passes the gate, else the lowest damage (largest share of a "
                          f"gate limit) on the first {n_sens} gate latents",
                  "methods": {m: {"accepted": attempts[m][2].accepted, "n_images": g.n_images,
                                  "damage": _fmt_damage(_damage(g)), "figures": sn.brief(g)}
                              for m, g in (small or {k: v[2] for k, v in attempts.items()}).items()}}
    elif calib_method == "auto":
        chosen = {"rule": "auto: minmax passed the gate", "methods": {}}
    else:
        chosen = None
    q, recipe, gate = attempts[best]
    if chosen is not None:
        recipe["calibration"]["chosen_by"] = chosen
        from gan_deploy.export.onnx import _set_meta
        _set_meta(q, {META_RECIPE: json.dumps(recipe)})
    full_reports = {m: g for m, (_, _, g) in attempts.items()}
    if gate.accepted or not mixed:
        rep = _finish(parent, maker.data, q, "int8", recipe, out, gate, raise_on_reject)
        rep.attempts = full_reports
        return rep

    # -- mixed precision: what does INT8 damage, and how much of it must stay FP32? --
    assert sbench is not None
    method = best
    base = maker.check(sbench, maker.prepared)  # nothing quantized: if FP32 itself fails these thresholds, nothing can pass
    if not base.accepted:
        return _mixed_fail(parent, maker, q, recipe, gate, full_reports, raise_on_reject,
                           f"no mixed model can pass: the FP32 model itself fails these thresholds ({', '.join(base.failed)})")
    units = sn.units_of(maker.prepared)
    all_nodes = [n for u in units for n in u.nodes]
    say(f"mixed precision: damage of {len(units)} units ({len(all_nodes)} quantizable nodes) alone in INT8, "
        f"{method} calibration, first {n_sens} gate latents ...")

    def alone(nodes: tuple[str, ...]) -> GateReport | None:
        keep = set(nodes)
        m_, _ = maker.model(Int8Policy(method, tuple(n for n in all_nodes if n not in keep)))
        if not any(n.op_type == "QuantizeLinear" for n in m_.graph.node):
            return None
        return maker.check(sbench, m_)

    sens = sn.analyse(units, alone, small.get(method) or maker.check(sbench, q), t, calib_method=method, target=target,  # type: ignore[arg-type]
                      n_images=n_sens, progress=say)
    models: dict[int, tuple[Any, dict[str, Any]]] = {}

    def policy_for(k: int) -> Int8Policy:
        rows = sens.rows[:k]
        reasons = {n: f"{r.unit.name}: {r.reason()}" for r in rows for n in r.unit.nodes}
        return Int8Policy(method, tuple(n for r in rows for n in r.unit.nodes), "fp32", reasons, "search")

    def keep_k(k: int) -> GateReport:
        models[k] = maker.model(policy_for(k))
        pre = maker.check(sbench, models[k][0])  # the first gate latents: an image that fails there fails the gate too
        return maker.check(bench, models[k][0]) if pre.accepted else pre

    say(f"search: keeping the most damaging units in FP32 until the gate passes on {gate_samples} latents ...")
    found = sn.search(sens, keep_k, progress=say)
    if found.kept_units is None:
        rep = _mixed_fail(parent, maker, q, recipe, gate, full_reports, raise_on_reject,
                          f"no mixed model passed: kept up to {max(s.kept_units for s in found.steps)} of {len(sens.rows)} units in FP32")
        rep.sensitivity, rep.search = sens, found
        return rep
    k = found.kept_units
    mq, mrecipe = models[k]
    mrecipe["calibration"]["chosen_by"] = chosen
    mrecipe["mixed"] = {"units": [{"unit": r.unit.name, "op_type": r.unit.op_type, "nodes": list(r.unit.nodes),
                                   "damage": _fmt_damage(r.damage), "check": r.worst_check, "reason": r.reason()}
                                  for r in sens.rows[:k]],
                        "sensitivity": {"units": len(sens.rows), "n_images": sens.n_images, "seconds": round(sens.seconds, 1)},
                        "search": found.to_dict()}
    return _mixed_finish(maker, mq, mrecipe, found.report, full_reports, sens, found, speed_rounds, min_speedup,  # type: ignore[arg-type]
                         raise_on_reject, say)


def _mixed_finish(maker: "_Int8Maker", mq, mrecipe: dict[str, Any], gate: GateReport, attempts: dict[str, GateReport], sens,
                  found, speed_rounds: int | None, min_speedup: float, raise_on_reject: bool,
                  say: Callable[[str], None]) -> PrecisionReport:
    """A gate-passing mixed model: timed against FP32 (onnxruntime flavour) and written only if fast enough."""
    from gan_deploy.export.onnx import _set_meta
    from gan_deploy.precision.sensitivity import SPEED_BATCH

    parent, target = maker.parent, maker.target
    speed, note = None, None
    if target == "onnxruntime":
        say(f"speed: FP32 vs mixed INT8, onnxruntime batch {SPEED_BATCH} ...")
        speed = _speed(maker, mq, speed_rounds)
        mrecipe["speed"] = speed
        if speed["speedup"] < min_speedup:
            note = (f"the gate-passing mixed model runs at {speed['speedup']:.2f}x FP32 (< {min_speedup:g}x): no mixed model "
                    "found is faster than FP32")
    else:
        note = ("speed not measured: the TensorRT flavour runs unfused on this CPU; build the engine on the GPU "
                f"(gan-deploy build-engine --int8 --onnx {maker.out}) and bench it there")
    _set_meta(mq, {META_RECIPE: json.dumps(mrecipe)})
    if note and target == "onnxruntime":  # passes the gate, but not faster: not written
        data = mq.SerializeToString()
        rep = PrecisionReport("int8", None, parent.describe(), maker.parent_sha, gate, mrecipe, len(data), len(maker.data),
                              attempts, sens, found, speed, note)
        if raise_on_reject:
            raise GanDeployError("no mixed-precision INT8 model is faster than FP32", f"{speed['speedup']:.2f}x",  # type: ignore[index]
                                 expected=f">= {min_speedup:g}x", hint="nothing was written; FP16 or FP32 it is")
        return rep
    rep = _finish(parent, maker.data, mq, "int8", mrecipe, maker.out, gate, raise_on_reject)
    rep.attempts, rep.sensitivity, rep.search, rep.speed, rep.note = attempts, sens, found, speed, note
    return rep


def _speed(maker: _Int8Maker, q, rounds: int | None) -> dict[str, Any]:
    from gan_deploy.precision.sensitivity import SPEED_ROUNDS, speed_vs_fp32

    f, c = maker.fp32_runner(), maker.runner(q)
    try:
        return speed_vs_fp32(f, c, rounds=rounds or SPEED_ROUNDS)
    finally:
        f.close()
        c.close()


def _mixed_fail(parent: Artifact, maker: _Int8Maker, q, recipe: dict[str, Any], gate: GateReport,
                attempts: dict[str, GateReport], raise_on_reject: bool, note: str) -> PrecisionReport:
    if raise_on_reject:
        raise GateRejected(gate, "the int8 model", f"{note}; nothing was written")
    rep = _finish(parent, maker.data, q, "int8", recipe, maker.out, gate, False)
    rep.attempts, rep.note = attempts, note
    return rep


def int8_sensitivity(parent: Artifact, *, target: str = "onnxruntime", calib_samples: int = DEFAULT_CALIB_SAMPLES,
                     calib_seed: int = CALIB_SEED, calib_method: str = "auto", rewrite: bool = True,
                     thresholds: GateThresholds | None = None, samples: int | None = None, plot: str | Path | None = None,
                     progress: Callable[[str], None] | None = None):
    """The sensitivity report on its own (`quantize --int8 --report`): every unit's damage alone in INT8 on the gate's
    figures, a table, and a PNG bar chart at `plot`. "auto" calibration: the method whose full INT8 model has the
    lowest damage on the same latents. Writes no model. Returns sensitivity.SensitivityReport."""
    from gan_deploy.precision import sensitivity as sn

    if calib_method != "auto" and calib_method not in CALIB_METHODS:
        raise GanDeployError("unknown calibration method", repr(calib_method), expected=f"auto or one of {', '.join(CALIB_METHODS)}")
    say = progress or (lambda _msg: None)
    t = thresholds or thresholds_for("int8")
    maker = _Int8Maker(parent, target, calib_samples, calib_seed, rewrite, default_out(parent, "int8", target))
    n = samples or sn.DEFAULT_SENSITIVITY_SAMPLES
    bench = sn.GateBench(reference_runner(parent), t, n)
    fulls = {}
    for m in (CALIB_METHODS if calib_method == "auto" else (calib_method,)):
        fulls[m] = maker.check(bench, maker.model(Int8Policy(m))[0])
        say(f"full INT8, {m} calibration: {sn.brief(fulls[m])}")
    method = min(fulls, key=lambda m: (_damage(fulls[m]), CALIB_METHODS.index(m)))
    units = sn.units_of(maker.prepared)
    all_nodes = [x for u in units for x in u.nodes]

    def alone(nodes: tuple[str, ...]) -> GateReport | None:
        keep = set(nodes)
        m_ = maker.model(Int8Policy(method, tuple(x for x in all_nodes if x not in keep)))[0]
        return maker.check(bench, m_) if any(x.op_type == "QuantizeLinear" for x in m_.graph.node) else None

    say(f"damage of {len(units)} units alone in INT8 ({method} calibration, {n} gate latents) ...")
    sens = sn.analyse(units, alone, fulls[method], t, calib_method=method, target=target, n_images=n, progress=say)  # type: ignore[arg-type]
    sens.methods = {m: {"damage": _fmt_damage(_damage(g)), "figures": sn.brief(g), "accepted": g.accepted} for m, g in fulls.items()}
    if plot:
        sens.plot_path = sens.plot(plot)
    return sens


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
    calib_method: str = "auto"  # "auto" or one of CALIB_METHODS
    rewrite: bool = True  # ConvTranspose -> Conv + DepthToSpace before INT8
    evaluator: str = "auto"  # fp16: FP16_EVALUATORS
    gate_samples: int = DEFAULT_GATE_SAMPLES
    thresholds: GateThresholds | None = None  # None: gate.THRESHOLDS[precision]
    mixed: bool = True  # int8: when full INT8 fails the gate, search for a mixed INT8/FP32 model
    policy: str | Path | Int8Policy | None = None  # int8: use this policy (calibration, nodes kept FP32); no search
    sensitivity_samples: int | None = None  # gate latents per unit in the sensitivity analysis (default 128)
    speed_rounds: int | None = None  # interleaved FP32/INT8 timing rounds for a mixed model (default 5)
    min_speedup: float = 1.0  # a mixed model slower than this x FP32 is not written
    progress: Callable[[str], None] | None = None  # receives progress lines of the longer INT8 steps


def quantize(parent: Artifact, opts: QuantizeOptions, raise_on_reject: bool = False) -> PrecisionReport:
    """What `gan-deploy quantize` runs: an INT8 or FP16 model of `parent`, written only if it passes the gate."""
    if opts.precision == "int8":
        policy = Int8Policy.load(opts.policy) if isinstance(opts.policy, (str, Path)) else opts.policy
        return int8_onnx_from_onnx(parent, opts.out, target=opts.target, calib_samples=opts.calib_samples,
                                   calib_seed=opts.calib_seed, calib_method=opts.calib_method, rewrite=opts.rewrite,
                                   thresholds=opts.thresholds, gate_samples=opts.gate_samples, raise_on_reject=raise_on_reject,
                                   mixed=opts.mixed, policy=policy, sensitivity_samples=opts.sensitivity_samples,
                                   speed_rounds=opts.speed_rounds, min_speedup=opts.min_speedup, progress=opts.progress)
    if opts.precision == "fp16":
        return fp16_onnx_from_onnx(parent, opts.out, thresholds=opts.thresholds, gate_samples=opts.gate_samples,
                                   evaluator=opts.evaluator, raise_on_reject=raise_on_reject)
    raise GanDeployError("unknown reduced precision", repr(opts.precision), expected=" or ".join(QUANTIZE_PRECISIONS))

"""FP16: our own pass (`fp16_model`), FP32 inputs and outputs kept, overflow-prone operators kept in FP32 (see
`KEEP_FP32_OPS`), checked in onnxruntime on CPU (it has FP16 Conv/ConvTranspose kernels), or with onnx's reference
evaluator (`backends/reference.py`) on a small batch where it has not.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.onnx import META_RECIPE, set_onnx_metadata
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import sha256_bytes
from gan_deploy.export.onnx import onnx_bytes_of
from gan_deploy.precision.gate import run_gate, thresholds_for
from gan_deploy.precision.lineage import candidate_artifact, check_out, child_meta, fp32_parent, reference_runner
from gan_deploy.precision.options import QuantizeOptions
from gan_deploy.precision.report import PrecisionReport, finish
from gan_deploy.precision.rewrite import OUTPUT_ACTIVATIONS, drop_unused, fold_batchnorms

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
FP32_ONLY_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}  # roi/scales are float32 whatever the data type
PASS_THROUGH_OPS = frozenset({"Shape", "Size"})  # read any type, write int64
FP16_MAX = 65504.0


@dataclass
class Fp16Info:
    fp16_nodes: int = 0
    fp32_nodes: list[str] = field(default_factory=list)  # "name (op)": what stayed FP32
    casts: int = 0


# over 80 lines: one pass over the graph whose cases (pass-through, Cast, constants, every other operator) share
# the type map and the cast cache; split into functions they would pass those around and read no better
def fp16_model(model, keep_fp32_ops: frozenset[str] = KEEP_FP32_OPS):
    """FP32 ONNX -> FP16 ONNX with FP32 inputs/outputs. Returns (model, Fp16Info). BatchNorm is folded first."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

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
    drop_unused(model)
    try:
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)  # catches any type mismatch the pass left
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GanDeployError("FP16 conversion produced an inconsistent graph", str(e).splitlines()[0][:200], hint="report this model; the FP16 pass does not handle one of its operators") from None
    return model, info


def fp16_child(parent: Artifact):
    """The parent's FP32 ONNX (a checkpoint is exported in memory) as an FP16 model with its metadata, in memory.
    Returns (model, recipe, FP32 ONNX bytes)."""
    model, data = fp32_parent(parent)
    m, info = fp16_model(model)
    recipe = {"fp16_nodes": info.fp16_nodes, "fp32_nodes": info.fp32_nodes, "casts": info.casts, "io": "fp32"}
    set_onnx_metadata(m, child_meta(parent, sha256_bytes(data), "fp16", recipe))
    m.producer_name = "gan-deploy"
    return m, recipe, data


def fp16_onnx_from_onnx(parent: Artifact, opts: QuantizeOptions, raise_on_reject: bool = True) -> PrecisionReport:
    """Convert the parent's FP32 ONNX to FP16 (FP32 I/O), gate it, write it (`opts.precision` is not read).

    opts.evaluator: auto (onnxruntime if it has FP16 kernels here, else the ONNX reference evaluator on at most
    `REFERENCE_EVALUATOR_SAMPLES` latents), onnxruntime, or reference.
    """
    out = check_out(Path(opts.out) if opts.out else None, parent, "fp16")
    h, recipe, data = fp16_child(parent)
    candidate, checked_with = _fp16_candidate(candidate_artifact(parent, h, out), opts.evaluator)
    gate_samples = opts.gate_samples
    n = gate_samples if checked_with == "onnxruntime" else min(gate_samples, REFERENCE_EVALUATOR_SAMPLES)
    recipe["checked_with"] = checked_with + ("" if n == gate_samples else f" on {n} latents")
    set_onnx_metadata(h, {META_RECIPE: json.dumps(recipe)})
    gate = run_gate(candidate, reference_runner(parent), opts.thresholds or thresholds_for("fp16"), "fp16", n,
                    batch_size=256 if checked_with == "onnxruntime" else 8)
    return finish(parent, data, h, "fp16", recipe, out, gate, raise_on_reject)


REFERENCE_EVALUATOR_SAMPLES = 64  # numpy reference kernels take ~1 s per 32x32 image; the quality score needs >= 32


def _fp16_candidate(cand: Artifact, evaluator: str):
    """A runner for the FP16 model: onnxruntime when it can run it on this CPU, else onnx's reference evaluator."""
    from gan_deploy.backends import make_runner
    from gan_deploy.backends.reference import ReferenceEvaluatorRunner

    if evaluator in ("auto", "onnxruntime"):
        try:
            return make_runner("onnxruntime", cand, "cpu").activate(), "onnxruntime"
        except Exception as e:  # onnxruntime raises its own NOT_IMPLEMENTED types when a kernel is missing
            if evaluator == "onnxruntime" or "NOT_IMPLEMENTED" not in str(e).upper().replace(" ", "_"):
                raise
    return ReferenceEvaluatorRunner(onnx_bytes_of(cand), cand.spec), "onnx.reference"

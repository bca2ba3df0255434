"""INT8 and FP16 on CPU: the exact ConvTranspose rewrite, Q/DQ structure and accuracy, FP16 parity, the CLI."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from gan_deploy.artifacts.artifact import META_PRECISION
from gan_deploy.artifacts.load import load_artifact
from gan_deploy.artifacts.onnx import META_CHECKPOINT_SHA, META_INT8_TARGET, META_PARENT_SHA
from gan_deploy.backends import make_runner
from gan_deploy.backends.reference import ReferenceEvaluatorRunner
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import sha256_bytes
from gan_deploy.core.latents import latents_range
from gan_deploy.export.onnx import onnx_bytes_of
from gan_deploy.precision.fp16 import fp16_model
from gan_deploy.precision.options import QuantizeOptions
from gan_deploy.precision.quantize import reduced_precision_model
from gan_deploy.precision.rewrite import conv_from_conv_transpose, fold_batchnorms
from gan_deploy.precision.search import int8_onnx_from_onnx


def _sess(model):
    from gan_deploy.core.hardware import has_int8_dot_product, is_x86

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("gan_deploy.int8_target") == "tensorrt" and is_x86() and not has_int8_dot_product():
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # as the onnxruntime backend does
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _conv_transpose_model(w, b, stride, pad, in_hw, out_pad=0):
    """One ConvTranspose as an ONNX model with a dynamic batch: x [N, Cin, H, W] -> y."""
    cin, cout, k, _ = w.shape
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    if out_pad:
        attrs["output_padding"] = [out_pad, out_pad]
    node = helper.make_node("ConvTranspose", inputs, ["y"], name="ct", **attrs)
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, *in_hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", cout, "h", "w"])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _torch_conv_transpose(x, w, b, stride, pad, out_pad=0):
    with torch.no_grad():
        return torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w),
                                                    None if b is None else torch.from_numpy(b), stride, pad, out_pad).numpy()


@pytest.mark.parametrize("cin,cout,hw", [(1, 1, 1), (3, 5, 4), (16, 8, 8), (8, 3, 5), (64, 1, 3)])
@pytest.mark.parametrize("bias", [False, True])
def test_stride2_rewrite_is_exact(cin, cout, hw, bias):
    """4 x Conv 2x2 + DepthToSpace == ConvTranspose(k4, s2, p1), for random weights and channel counts."""
    rng = np.random.default_rng(cin * 100 + cout + hw)
    w = rng.standard_normal((cin, cout, 4, 4)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    x = rng.standard_normal((3, cin, hw, hw)).astype(np.float32)
    original = _conv_transpose_model(w, b, 2, 1, (hw, hw))
    rewritten, report = conv_from_conv_transpose(original)
    assert [n.op_type for n in rewritten.graph.node].count("ConvTranspose") == 0
    assert len(report.rewritten) == 1 and not report.kept
    want = _torch_conv_transpose(x, w, b, 2, 1)
    got = _sess(rewritten).run(None, {"x": x})[0]
    assert got.shape == want.shape == (3, cout, 2 * hw, 2 * hw)
    # same sums in a different order: float32 rounding only (values here are O(10))
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("cin,cout", [(8, 16), (64, 32), (3, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_first_layer_rewrite_is_exact(cin, cout, bias):
    """ConvTranspose(k4, s1, p0) on a 1x1 latent == Conv 1x1 with 16*Cout outputs + DepthToSpace(4)."""
    rng = np.random.default_rng(cin + cout)
    w = rng.standard_normal((cin, cout, 4, 4)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    x = rng.standard_normal((5, cin, 1, 1)).astype(np.float32)
    rewritten, report = conv_from_conv_transpose(_conv_transpose_model(w, b, 1, 0, (1, 1)))
    assert "Conv 1x1 + DepthToSpace(4)" in report.rewritten[0]
    want = _torch_conv_transpose(x, w, b, 1, 0)
    got = _sess(rewritten).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_rewrite_leaves_other_transposed_convolutions_alone():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    model = _conv_transpose_model(w, None, 2, 1, (5, 5), out_pad=1)
    rewritten, report = conv_from_conv_transpose(model)
    assert not report.rewritten and len(report.kept) == 1 and "output_padding" in report.kept[0]
    assert np.array_equal(_sess(rewritten).run(None, {"x": x})[0], _sess(model).run(None, {"x": x})[0])


@pytest.mark.parametrize("hoist", [True, False])
def test_fold_and_rewrite_whole_generator_is_exact(tiny_checkpoint, hoist):
    art = load_artifact(tiny_checkpoint)
    model = onnx.load_model_from_string(onnx_bytes_of(art))
    folded, n_bn = fold_batchnorms(model)
    assert n_bn == 2 and "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    rewritten, report = conv_from_conv_transpose(folded, hoist_activation=hoist)
    ops = [n.op_type for n in rewritten.graph.node]
    assert len(report.rewritten) == 3 and "ConvTranspose" not in ops
    # ReLU after the 1x1 layer and after the stride-2 layer: once each, or applied per convolution (1 + 4)
    assert ops.count("Relu") == (5 if hoist else 2)
    z = latents_range(5, 0, 16, art.spec.latent_dim)
    eager = make_runner("eager", art, "cpu").infer(z)
    assert np.abs(_sess(rewritten).run(None, {"z": z})[0] - eager).max() < 1e-5


@pytest.fixture(scope="module")
def int8_models(tiny_checkpoint):
    art = load_artifact(tiny_checkpoint)
    return {t: reduced_precision_model(art, "int8", target=t, calib_samples=128) for t in ("onnxruntime", "tensorrt")}


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_int8_qdq_structure(int8_models, tiny_checkpoint):
    art = load_artifact(tiny_checkpoint)
    model, recipe, fp32_bytes = int8_models["onnxruntime"]
    ops = [n.op_type for n in model.graph.node]
    assert "ConvTranspose" not in ops and ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    inits = {i.name: i for i in model.graph.initializer}
    prod = _producers(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 + 4 + 4  # first layer 1x1, two stride-2 layers as four phases each
    for conv in convs:
        dq = prod[conv.input[1]]  # weights come through a per-channel DequantizeLinear of INT8 data
        assert dq.op_type == "DequantizeLinear"
        q_w, scale = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        assert q_w.data_type == TensorProto.INT8
        assert scale.shape == (q_w.dims[0],)  # one scale per output channel, along axis 0
        if q_w.dims[0] > 1:
            assert len(set(scale.tolist())) > 1 and next(a.i for a in dq.attribute if a.name == "axis") == 0
        assert prod[conv.input[0]].op_type == "DequantizeLinear"  # activations are quantized too
    act_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[n.input[2]].data_type == TensorProto.UINT8 for n in act_q)
    io_types = {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io_types == {TensorProto.FLOAT}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META_PRECISION] == "int8" and meta[META_INT8_TARGET] == "onnxruntime"
    assert meta[META_PARENT_SHA] == sha256_bytes(fp32_bytes) and meta[META_CHECKPOINT_SHA] == art.sha256
    assert recipe["calibration"]["data"].startswith("latents from the generator's prior")


def test_int8_tensorrt_flavour_is_what_tensorrt_parses(int8_models):
    model, recipe, _ = int8_models["tensorrt"]
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":  # symmetric INT8 activations: zero point 0
            zp = inits[n.input[2]]
            assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # no INT32 (bias) DequantizeLinear: TensorRT rejects it
            assert inits[n.input[0]].data_type == TensorProto.INT8
        if n.op_type == "Conv" and len(n.input) > 2:
            assert n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.FLOAT
    assert recipe["bias"] == "fp32"


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_int8_accuracy_in_onnxruntime(int8_models, tiny_checkpoint, target):
    model, _, _ = int8_models[target]
    art = load_artifact(tiny_checkpoint)
    z = latents_range(11, 0, 64, art.spec.latent_dim)
    ref = make_runner("eager", art, "cpu").infer(z)
    got = _sess(model).run(None, {"z": z})[0]
    mse = ((got - ref) ** 2).reshape(64, -1).mean(axis=1)
    psnr = 10 * np.log10(4.0 / mse)
    assert np.isfinite(got).all() and np.median(psnr) > 30 and psnr.min() > 25


def test_int8_without_rewrite_keeps_conv_transpose(tiny_checkpoint):
    model, recipe, _ = reduced_precision_model(load_artifact(tiny_checkpoint), "int8", calib_samples=64, rewrite=False)
    assert "rewrite" not in recipe and "ConvTranspose" in {n.op_type for n in model.graph.node}


def test_quantize_writes_an_accepted_model_that_loads(tiny_checkpoint, tmp_path):
    art = load_artifact(tiny_checkpoint)
    out = tmp_path / "tiny.int8.onnx"
    report = int8_onnx_from_onnx(art, QuantizeOptions(out=out, calib_samples=128, gate_samples=64))
    assert report.accepted and report.path == out and out.exists()
    q = load_artifact(onnx=out)
    assert q.precision == "int8" and q.spec == art.spec and q.config == art.config
    with pytest.raises(GanDeployError, match="already reduced precision"):
        int8_onnx_from_onnx(q, QuantizeOptions(out=tmp_path / "again.onnx"))


def test_fp16_model_types_and_parity(tiny_checkpoint):
    art = load_artifact(tiny_checkpoint)
    h, recipe, _ = reduced_precision_model(art, "fp16")
    for v in list(h.graph.input) + list(h.graph.output):
        assert v.type.tensor_type.elem_type == TensorProto.FLOAT  # FP32 I/O kept
    inits = {i.name: i for i in h.graph.initializer}
    cts = [n for n in h.graph.node if n.op_type == "ConvTranspose"]
    assert cts and all(inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in cts)
    tanh = next(n for n in h.graph.node if n.op_type == "Tanh")
    assert _producers(h)[tanh.input[0]].op_type == "Cast"  # the output activation runs in FP32
    assert any("Tanh" in s for s in recipe["fp32_nodes"])
    z = latents_range(2, 0, 32, art.spec.latent_dim)
    ref = make_runner("eager", art, "cpu").infer(z)
    got = _sess(h).run(None, {"z": z})[0]  # onnxruntime has FP16 ConvTranspose kernels on CPU
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 1e-2
    # the ONNX reference evaluator (numpy kernels) is the check where onnxruntime has none: same answer
    small = ReferenceEvaluatorRunner(h.SerializeToString(), art.spec).infer(z[:4])
    assert np.abs(small - ref[:4]).max() < 1e-2 and np.abs(small - got[:4]).max() < 5e-3


def test_fp16_keeps_overflow_prone_reductions_in_fp32():
    """sqrt(sum(x^2)) over 1024 values of 300: 9.2e7 overflows FP16 (max 65504) unless the reduction stays FP32."""
    nodes = [helper.make_node("Mul", ["x", "one"], ["y"]),
             helper.make_node("ReduceSumSquare", ["y"], ["s"], keepdims=1, axes=[1]),
             helper.make_node("Sqrt", ["s"], ["r"]),
             helper.make_node("Mul", ["y", "r"], ["out"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1024])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 1024])],
                          [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    h, info = fp16_model(model)
    kept = " ".join(info.fp32_nodes)
    assert "ReduceSumSquare" in kept and "Sqrt" in kept and info.fp16_nodes == 2
    x = np.full((2, 1024), 0.25, np.float32)
    x[:, 0] = 300.0
    want = _sess(model).run(None, {"x": x})[0]
    got = _sess(h).run(None, {"x": x})[0]
    assert np.isfinite(got).all()  # an all-FP16 graph gives inf here
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()


def test_cli_quantize_int8_and_fp16(cli, tiny_checkpoint, tmp_path):
    r = cli("quantize", "--int8", "-c", tiny_checkpoint, "-o", tmp_path / "q.onnx", "--calib-samples", 128,
            "--gate-samples", 64, "--json", tmp_path / "q.json")
    assert r.exit_code == 0, r.output
    assert "ACCEPTED" in r.output and "4 x Conv" not in r.output and "rewrite: 3 ConvTranspose" in r.output
    assert (tmp_path / "q.onnx").exists() and json.loads((tmp_path / "q.json").read_text())["gate"]["accepted"]
    r = cli("quantize", "--fp16", "-c", tiny_checkpoint, "-o", tmp_path / "h.onnx", "--gate-samples", 64)
    assert r.exit_code == 0, r.output
    assert "checked with onnxruntime" in r.output and (tmp_path / "h.onnx").exists()


def test_cli_rejected_model_is_not_written(cli, tiny_checkpoint, tmp_path):
    r = cli("quantize", "--int8", "-c", tiny_checkpoint, "-o", tmp_path / "q.onnx", "--calib-samples", 64,
            "--gate-samples", 64, "--min-psnr-median", 150)
    assert r.exit_code == 2
    assert "REJECTED (psnr_median_db)" in r.output and "failed the quality gate: psnr_median_db" in r.output
    assert not (tmp_path / "q.onnx").exists() and not list(tmp_path.iterdir())


def test_cli_quantize_needs_one_precision(cli, tiny_checkpoint):
    r = cli("quantize", "--int8", "--fp16", "-c", tiny_checkpoint)
    assert r.exit_code == 2 and "choose exactly one precision: --int8 --fp16" in r.output


def test_foreign_onnx_value_range_is_kept(tiny_onnx, tmp_path):
    """A foreign ONNX (no gan-deploy metadata) quantized with --value-range 0,1 records that range."""
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    # make it a sigmoid-range generator: (tanh + 1) / 2, written as a final Mul/Add after the graph's output
    out = model.graph.output[0].name
    model.graph.node[-1].output[0] = "t"
    model.graph.node.extend([helper.make_node("Add", ["t", "one"], ["u"]), helper.make_node("Mul", ["u", "half"], [out])])
    model.graph.initializer.extend([numpy_helper.from_array(np.ones(1, np.float32), "one"),
                                    numpy_helper.from_array(np.full(1, 0.5, np.float32), "half")])
    src = tmp_path / "foreign.onnx"
    onnx.save(model, str(src))
    parent = load_artifact(onnx=src, value_range=(0.0, 1.0))
    report = int8_onnx_from_onnx(parent, QuantizeOptions(out=tmp_path / "foreign.int8.onnx", calib_samples=64, gate_samples=64))
    assert report.accepted
    assert load_artifact(onnx=report.path).spec.value_range == (0.0, 1.0)


def test_int8_auto_calibration_keeps_minmax_when_it_passes(tiny_checkpoint, tmp_path):
    """The default path is today's: min/max passes the gate, so nothing else is tried and nothing is kept FP32."""
    opts = QuantizeOptions(out=tmp_path / "q.onnx", calib_samples=128, gate_samples=64)
    report = int8_onnx_from_onnx(load_artifact(tiny_checkpoint), opts)
    assert report.accepted and list(report.attempts) == ["minmax"] and report.sensitivity is None
    recipe = json.loads({p.key: p.value for p in onnx.load(str(report.path)).metadata_props}["gan_deploy.recipe"])
    assert recipe["calibration"]["method"] == "minmax" and recipe["calibration"]["chosen_by"]["rule"] == "auto: minmax passed the gate"
    assert "kept_fp32" not in recipe and recipe["policy"]["exclude"] == []


def test_cli_no_mixed_stops_at_the_rejection(cli, tiny_checkpoint, tmp_path):
    r = cli("quantize", "--int8", "-c", tiny_checkpoint, "-o", tmp_path / "q.onnx", "--calib-samples", 64,
            "--gate-samples", 64, "--min-psnr-median", 60, "--no-mixed", "--calib-method", "percentile")
    assert r.exit_code == 2 and "REJECTED (psnr_median_db)" in r.output and "mixed precision" not in r.output
    assert "percentile" in r.output and not (tmp_path / "q.onnx").exists()


def test_mixed_speed_reference_is_the_fp32_onnx_of_a_checkpoint(tiny_checkpoint, tmp_path):
    """A mixed model of a checkpoint is timed against the checkpoint's FP32 ONNX in onnxruntime (not eager)."""
    from gan_deploy.precision.int8 import Int8Builder
    from gan_deploy.precision.search import _Candidates

    art = load_artifact(tiny_checkpoint)
    cands = _Candidates(Int8Builder.for_parent(art, "onnxruntime", 64, 1, True), tmp_path / "q.onnx")
    with cands.fp32_runner() as fp32:
        assert fp32.name == "onnxruntime"
        z = latents_range(3, 0, 8, art.spec.latent_dim)
        assert np.abs(fp32.infer(z) - make_runner("eager", art, "cpu").infer(z)).max() < 1e-4
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("kw, what", [
    ({"precision": "int4"}, "unknown reduced precision"),
    ({"target": "openvino"}, "unknown INT8 target"),
    ({"calib_method": "kl"}, "unknown calibration method"),
    ({"calib_samples": 8}, "too few calibration samples"),
    ({"evaluator": "numpy"}, "unknown FP16 evaluator"),
    ({"gate_samples": 0}, "bad number of gate samples"),
    ({"sensitivity_samples": 0}, "bad number of sensitivity samples"),
    ({"speed_rounds": -1}, "bad number of speed rounds"),
    ({"min_speedup": -0.5}, "bad minimum speedup"),
    ({"precision": "fp16", "policy": "p.json"}, "an INT8 policy only applies to int8"),
])
def test_quantize_options_check_themselves(kw, what):
    """Bad options fail when the object is made, with one line naming the value, before any work."""
    from gan_deploy.precision.options import QuantizeOptions

    with pytest.raises(GanDeployError, match=what) as e:
        QuantizeOptions(**kw)
    assert "\n" not in str(e.value)
    assert QuantizeOptions(calib_method="auto").calib_method == "auto"  # auto: the gate chooses

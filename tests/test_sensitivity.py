"""INT8 on a modern generator: the StyleGAN2-style example, per-unit sensitivity, the mixed INT8/FP32 search, the
policy shared by both flavours, calibration methods, and the shared-bias fix. Tiny variant, small gate counts."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.artifacts.onnx import META_RECIPE
from gan_deploy.backends import make_runner
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import latents_range
from gan_deploy.export.onnx import onnx_bytes_of, onnx_from_factory
from gan_deploy.precision import search as se
from gan_deploy.precision import sensitivity as sn
from gan_deploy.precision.calibrate import BINS, Calibration, calibrate
from gan_deploy.precision.gate import GateReport, run_gate, thresholds_for
from gan_deploy.precision.int8 import Int8Builder, quantize_prepared
from gan_deploy.precision.options import QuantizeOptions
from gan_deploy.precision.policy import Int8Policy
from gan_deploy.precision.quantize import reduced_precision_model
from gan_deploy.precision.rewrite import prepare_int8, untie_biases
from gan_deploy.precision.search import int8_onnx_from_onnx

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "stylegan2_tiny.py"
GATE_N, SENS_N, CALIB_N = 64, 32, 64


def _example():
    spec = importlib.util.spec_from_file_location("stylegan2_tiny_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sg_onnx(tmp_path_factory) -> Path:
    """The tiny StyleGAN2-style generator, deterministic weights, exported with the bring-your-own path."""
    ex = _example()
    d = tmp_path_factory.mktemp("sg")
    ex.make_weights(d / "w.safetensors", **ex.tiny_kwargs())
    return onnx_from_factory(f"{EXAMPLE}:Generator", d / "sg.onnx", ex.tiny_kwargs(), d / "w.safetensors").path


@pytest.fixture(scope="module")
def mixed(sg_onnx, tmp_path_factory):
    """One mixed search on the tiny example (written whatever its speed: min_speedup 0)."""
    out = tmp_path_factory.mktemp("mixed") / "sg.int8.onnx"
    opts = QuantizeOptions(out=out, calib_samples=CALIB_N, gate_samples=GATE_N, sensitivity_samples=SENS_N, speed_rounds=1,
                           min_speedup=0.0)
    rep = int8_onnx_from_onnx(load_artifact(onnx=sg_onnx), opts, raise_on_reject=False)
    return rep


def _meta(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _weight_is_quantized(model, node_name: str) -> bool:
    prod = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    src = prod.get(node.input[1])
    return src is not None and src.op_type == "DequantizeLinear"


# -- the example -----------------------------------------------------------------------------------

def test_example_is_a_stylegan2_style_generator_with_deterministic_weights(tmp_path):
    import torch

    ex = _example()
    g = ex.make_weights(**ex.tiny_kwargs())
    again = ex.make_weights(**ex.tiny_kwargs())
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), again.state_dict().values()))
    z = torch.from_numpy(latents_range(0, 0, 8, g.latent_dim))
    with torch.no_grad():
        y = g(z)
    assert y.shape == (8, 3, 16, 16) and y.abs().max() <= 1 and y.std() > 0.2  # images use the range
    # the outlier dimensions of w change the internals, not the images
    plain = ex.make_weights(outliers=False, **ex.tiny_kwargs())
    with torch.no_grad():
        assert (plain(z) - y).abs().max() < 1e-4
        assert g.mapping(z).abs().max() > 5 * plain.mapping(z).abs().max()
    full = ex.Generator()
    n = sum(p.numel() for p in full.parameters())
    assert 1.2e6 < n < 1.5e6
    ops = {node.op_type for node in onnx.load(str(_export(ex, tmp_path))).graph.node}
    assert {"Gemm", "Conv", "MatMul", "Resize", "LeakyRelu", "Tanh"} <= ops  # mapping, modulated convs, demod, bilinear


def _export(ex, d: Path) -> Path:
    ex.make_weights(d / "w.safetensors", **ex.tiny_kwargs())
    return onnx_from_factory(f"{EXAMPLE}:Generator", d / "x.onnx", ex.tiny_kwargs(), d / "w.safetensors").path


def test_full_int8_fails_the_gate_on_the_example(mixed):
    assert set(mixed.attempts) == {"minmax", "percentile", "entropy"}
    assert not any(g.accepted for g in mixed.attempts.values())
    chosen = mixed.recipe["calibration"]["chosen_by"]
    assert set(chosen["methods"]) == {"minmax", "percentile", "entropy"} and "lowest damage" in chosen["rule"]
    assert mixed.recipe["calibration"]["method"] in ("minmax", "percentile", "entropy")


# -- the mixed search ------------------------------------------------------------------------------

def test_mixed_search_writes_a_gate_passing_model(mixed, sg_onnx):
    assert mixed.accepted and mixed.path.exists()
    q = onnx.load(str(mixed.path))
    meta = _meta(mixed.path)
    recipe = json.loads(meta[META_RECIPE])
    kept = recipe["kept_fp32"]
    assert kept and recipe["policy"]["exclude"] == kept and recipe["policy"]["source"] == "search"
    assert set(recipe["policy"]["reasons"]) == set(kept) and all("budget" in r for r in recipe["policy"]["reasons"].values())
    assert recipe["mixed"]["units"] and all(u["reason"] for u in recipe["mixed"]["units"])
    assert recipe["calibration"]["method"] == recipe["policy"]["calib_method"]
    assert "speed" in recipe and recipe["speed"]["batch"] == 64
    # the kept nodes are FP32 in the file; every convolution (where the time goes) stayed INT8
    convs = [n.name for n in q.graph.node if n.op_type == "Conv"]
    assert convs and all(_weight_is_quantized(q, c) for c in convs) and not set(convs) & set(kept)
    for name in kept:
        node = next(n for n in q.graph.node if n.name == name)
        if node.op_type in ("Gemm", "Conv"):
            assert not _weight_is_quantized(q, name)
    # the file passes the gate again on its own, against the same reference
    parent = load_artifact(onnx=sg_onnx)
    again = run_gate(make_runner("onnxruntime", load_artifact(onnx=mixed.path), "cpu"),
                     make_runner("onnxruntime", parent, "cpu"), thresholds_for("int8"), "int8", GATE_N)
    assert again.accepted and again.figures["psnr_median_db"] == pytest.approx(mixed.gate.figures["psnr_median_db"], abs=1e-6)
    s = mixed.summary()
    assert "kept in FP32" in s and "speed vs FP32" in s and "search (units kept FP32" in s


def test_sensitivity_ranks_the_mapping_path_and_plots(mixed, tmp_path):
    sens = mixed.sensitivity
    dmg = [r.damage for r in sens.rows]
    assert dmg == sorted(dmg, reverse=True)
    top = [r.unit for r in sens.rows[:4]]
    # the outlier dimensions live in w: what reads w (affines) or writes it (mapping, truncation) is most damaged
    assert all("affine" in u.name or "mapping" in u.name or "top level" in u.name for u in top), [u.name for u in top]
    assert all(r.unit.op_type != "Conv" for r in sens.rows[:4])
    assert any(not r.quantizes for r in sens.rows)  # Reshape/Transpose/... quantize nothing alone: not gated
    assert any(" in " in r.unit.name for r in sens.rows)  # a damaging block was split by module
    assert {n for r in sens.rows for n in r.unit.nodes} and sens.quantizable_nodes >= len(sens.rows)
    table = sens.table()
    assert "damage" in table.splitlines()[0] and sens.rows[0].unit.name in table
    png = sens.plot(tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    steps = mixed.search.steps
    assert steps[-1].accepted or any(s.accepted for s in steps)
    assert mixed.search.kept_units == min(s.kept_units for s in steps if s.accepted)
    json.dumps(mixed.to_dict(), allow_nan=False)


def _check_tensorrt_form(q, excluded):
    inits = {i.name: i for i in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":  # symmetric INT8 activations
            zp = inits[n.input[2]]
            assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
    for name in excluded:  # kept out of INT8 in this flavour too
        node = next(n for n in q.graph.node if n.name == name)
        if node.op_type in ("Gemm", "Conv"):
            assert not _weight_is_quantized(q, name)
    assert all(_weight_is_quantized(q, n.name) for n in q.graph.node if n.op_type == "Conv" and n.name not in excluded)


def test_the_policy_of_one_flavour_makes_the_other(mixed, sg_onnx, tmp_path):
    (tmp_path / "q.json").write_text(json.dumps(mixed.to_dict()))
    policy = Int8Policy.load(tmp_path / "q.json")  # a quantize --json report holds its model's policy
    assert policy.exclude == tuple(mixed.recipe["kept_fp32"]) and policy.source.endswith("q.json")
    q, recipe, _ = reduced_precision_model(load_artifact(onnx=sg_onnx), "int8", target="tensorrt", calib_samples=CALIB_N,
                                           policy=policy)
    _check_tensorrt_form(q, policy.exclude)
    assert recipe["policy"]["exclude"] == list(policy.exclude) and recipe["kept_fp32"] == list(policy.exclude)


def test_tensorrt_flavour_mixed_search(sg_onnx, tmp_path):
    """--target tensorrt: the same search, gated on the TensorRT form (run unfused on CPU), no speed claim."""
    opts = QuantizeOptions(out=tmp_path / "sg.int8-tensorrt.onnx", target="tensorrt", calib_samples=CALIB_N, gate_samples=GATE_N,
                           sensitivity_samples=SENS_N)
    rep = int8_onnx_from_onnx(load_artifact(onnx=sg_onnx), opts, raise_on_reject=False)
    assert rep.accepted and rep.path.exists() and "TensorRT flavour runs unfused" in rep.note and rep.speed is None
    kept = rep.recipe["kept_fp32"]
    assert kept and json.loads(_meta(rep.path)[META_RECIPE])["policy"]["exclude"] == kept
    _check_tensorrt_form(onnx.load(str(rep.path)), kept)


def test_a_mixed_model_slower_than_asked_is_not_written(mixed, sg_onnx, tmp_path):
    policy = Int8Policy.from_dict(mixed.recipe["policy"])
    out = tmp_path / "slow.onnx"
    opts = QuantizeOptions(out=out, policy=policy, calib_samples=CALIB_N, gate_samples=GATE_N, speed_rounds=1, min_speedup=1e6)
    rep = int8_onnx_from_onnx(load_artifact(onnx=sg_onnx), opts, raise_on_reject=False)
    assert rep.accepted and rep.path is None and not out.exists() and "faster than FP32" in rep.note
    assert rep.speed["speedup"] > 0 and "NOT written" in rep.summary()
    with pytest.raises(GanDeployError, match="no mixed-precision INT8 model is faster than FP32"):
        int8_onnx_from_onnx(load_artifact(onnx=sg_onnx), opts)
    assert not out.exists()


def test_policy_checks(tmp_path, sg_onnx):
    p = Int8Policy("percentile", ("a", "b"), "fp32", {"a": "why"}, "search")
    assert Int8Policy.from_dict(json.loads(json.dumps(p.to_dict()))).to_dict() == p.to_dict()
    with pytest.raises(GanDeployError, match="unknown calibration method"):
        Int8Policy.from_dict({"calib_method": "kl", "exclude": []})
    with pytest.raises(GanDeployError, match="unsupported precision"):
        Int8Policy.from_dict({"keep": "fp16", "exclude": []})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(GanDeployError, match="not an INT8 policy"):
        Int8Policy.load(tmp_path / "bad.json")
    with pytest.raises(GanDeployError, match="names nodes this model does not have: nowhere"):
        int8_onnx_from_onnx(load_artifact(onnx=sg_onnx), QuantizeOptions(out=tmp_path / "x.onnx", policy=Int8Policy("minmax", ("nowhere",)),
                                                                         calib_samples=CALIB_N, gate_samples=GATE_N))


# -- the search and the budget arithmetic ------------------------------------------------------------

def _fake_report(n_units: int) -> sn.SensitivityReport:
    t = thresholds_for("int8")
    fig = {"psnr_worst_db": 40.0, "psnr_median_db": 45.0, "fd_ratio": 0.01, "saturated_rate": 0.0, "reference_saturated_rate": 0.0,
           "nonfinite": 0}
    rows = [sn.UnitDamage(sn.Unit(f"u{k}", "Gemm", (f"n{k}",)), {"psnr_median": 1.0 / (k + 1)}, fig) for k in range(n_units)]
    full = GateReport("int8", 64, dict(fig, psnr_worst_db=10.0), [], t)
    return sn.SensitivityReport("minmax", "onnxruntime", 64, t, full, rows, 0.0, n_units)


def _fake_gate(passed: bool) -> GateReport:
    from gan_deploy.precision.gate import GateCheck

    fig = {"psnr_worst_db": 30.0, "psnr_median_db": 35.0, "fd_ratio": 0.01, "saturated_rate": 0.0,
           "reference_saturated_rate": 0.0, "nonfinite": 0}
    return GateReport("int8", 1000, fig, [GateCheck("psnr_median_db", 35.0, 30.0, ">=", passed)], thresholds_for("int8"))


@pytest.mark.parametrize("needed", [1, 3, 7, 12, 20])
def test_search_finds_the_fewest_units_that_pass(needed):
    sens = _fake_report(20)
    calls = []

    def evaluate(k):
        calls.append(k)
        return _fake_gate(k >= needed)

    res = se.search(sens, evaluate)
    assert res.kept_units == needed and res.report.accepted
    assert len(calls) <= se.MAX_SEARCH_TRIES and len(set(calls)) == len(calls)


def test_search_gives_up_when_nothing_passes():
    res = se.search(_fake_report(6), lambda k: _fake_gate(False))
    assert res.kept_units is None and res.steps[-1].kept_units == 6


def test_search_starts_where_the_shares_predict():
    sens = _fake_report(20)  # shares 1, 1/2, 1/3, ...: the sum of the rest falls below SAFETY late
    pred = [sum(1.0 / (k + 1) for k in range(j, 20)) for j in range(21)]
    start = next(j for j in range(21) if pred[j] < se.SAFETY)
    res = se.search(sens, lambda k: _fake_gate(True))
    assert res.start == start and res.steps[0].kept_units == start


def test_shares_are_fractions_of_the_limits():
    t = thresholds_for("int8")
    fig = {"psnr_worst_db": 20.0, "psnr_median_db": 33.0, "fd_ratio": 0.125, "saturated_rate": 0.02,
           "reference_saturated_rate": 0.015, "nonfinite": 0}
    s = sn.shares(GateReport("int8", 64, fig, [], t), t)
    assert s["psnr_worst"] == pytest.approx(1.0) and s["psnr_median"] == pytest.approx(10 ** -0.3)
    assert s["fd_ratio"] == pytest.approx(0.5) and s["saturation"] == pytest.approx(0.5) and s["nonfinite"] == 0
    s = sn.shares(GateReport("int8", 64, dict(fig, nonfinite=3, psnr_worst_db=-math.inf, fd_ratio=None), [], t), t)
    assert s["nonfinite"] == s["psnr_worst"] == s["fd_ratio"] == math.inf


# -- calibration -----------------------------------------------------------------------------------

def test_calibration_methods_on_known_data():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(400_000), [60.0, -45.0]])  # N(0, 1) and two outliers
    a = np.abs(x).max()
    hist = np.bincount(np.clip(((x + a) * (BINS / (2 * a))).astype(np.int64), 0, BINS - 1), minlength=BINS)
    cal = Calibration(1, 0, {"t": float(x.min())}, {"t": float(x.max())}, _hist={"t": hist})
    assert cal.ranges("minmax")["t"] == (-45.0, 60.0)
    lo, hi = cal.ranges("percentile")["t"]
    assert -5.5 < lo < -3 and 3 < hi < 5.5  # the 99.99% interval of N(0, 1) is +-3.9
    lo, hi = cal.ranges("entropy")["t"]
    assert -12 < lo < -2 and 2 < hi < 12 and lo == -hi
    assert cal.clipped("percentile") == cal.clipped("entropy") == 1
    with pytest.raises(GanDeployError, match="unknown calibration method"):
        cal.ranges("kl")


def test_minmax_calibration_gives_onnxruntimes_model(tiny_checkpoint):
    """Our calibration feeds onnxruntime's quantizer the ranges its own MinMax calibrator finds: same model, bit for bit."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from gan_deploy.precision.calibrate import PriorLatents

    art = load_artifact(tiny_checkpoint)
    model = onnx.load_model_from_string(onnx_bytes_of(art))
    ours, _ = Int8Builder(model, art.spec, calib_samples=128).model(Int8Policy())
    prepared, _ = prepare_int8(model)
    from gan_deploy.precision.int8 import float_tail
    from gan_deploy.precision.rewrite import unquantize_inputs
    tail = float_tail(prepared)  # the last DepthToSpace, left in float by Int8Builder (see float_tail)
    assert tail

    class Reader(PriorLatents, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as d:
        quantize_static(prepared, Path(d) / "q.onnx", Reader(art.spec, 128), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=_reduce_range(), activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=tail,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "QuantizeBias": True})
        theirs = onnx.load(str(Path(d) / "q.onnx"))
        unquantize_inputs(theirs, tail)
    a = {i.name: numpy_helper.to_array(i) for i in ours.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in theirs.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _reduce_range() -> bool:
    from gan_deploy.precision.int8 import _default_reduce_range

    return _default_reduce_range("onnxruntime")


def test_calibration_is_deterministic(sg_onnx):
    art = load_artifact(onnx=sg_onnx)
    prepared, _ = prepare_int8(onnx.load(str(sg_onnx)))
    a, b = calibrate(prepared, art.spec, 64, 1), calibrate(prepared, art.spec, 64, 1)
    assert a.ranges("percentile") == b.ranges("percentile") and a.ranges("entropy") == b.ranges("entropy")
    assert a.clipped("percentile") > 0


def test_quantizing_without_the_calibration_cache_gives_the_same_model(sg_onnx):
    """Older onnxruntime has no calibration cache: our ranges then go in as TensorQuantOverrides."""
    art = load_artifact(onnx=sg_onnx)
    prepared, _ = prepare_int8(onnx.load(str(sg_onnx)))
    cal = calibrate(prepared, art.spec, 64, 1)
    pol = Int8Policy("percentile", ("/layers.0.0/conv/affine/Gemm",))
    a, _ = quantize_prepared(prepared, art.spec, "onnxruntime", pol, cal, use_cache=True)
    b, _ = quantize_prepared(prepared, art.spec, "onnxruntime", pol, cal, use_cache=False)
    ia = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    assert ia.keys() == ib.keys() and all(np.allclose(ia[k], ib[k]) for k in ia)


# -- the shared-bias fix -----------------------------------------------------------------------------

def _two_gemms_one_bias():
    """x [N, 16] -> Gemm(W1, b) + Gemm(W2, b'), b' an Identity of b (what the exporter writes for equal biases)."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((16, 16)).astype(np.float32) * 3.0  # a different weight scale: a different bias scale
    b = np.ones(16, np.float32)
    nodes = [helper.make_node("Identity", ["b"], ["b2"], name="id"),
             helper.make_node("Gemm", ["x", "w1", "b"], ["y1"], name="g1", transB=1),
             helper.make_node("Gemm", ["x", "w2", "b2"], ["y2"], name="g2", transB=1),
             helper.make_node("Add", ["y1", "y2"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_shared_biases_are_untied_before_quantizing():
    from gan_deploy.artifacts.spec import GeneratorSpec

    model = _two_gemms_one_bias()
    m = onnx.ModelProto.FromString(model.SerializeToString())
    assert untie_biases(m) == 2
    biases = [n.input[2] for n in m.graph.node if n.op_type == "Gemm"]
    assert len(set(biases)) == 2 and all(b in {i.name for i in m.graph.initializer} for b in biases)
    assert "Identity" not in {n.op_type for n in m.graph.node}
    spec = GeneratorSpec(16, 1, 4, 4, (-1.0, 1.0), 2)
    x = latents_range(0, 0, 256, 16)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    want = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model.graph.input[0].name = "z"  # the generator contract's input name
    for n in model.graph.node:
        n.input[:] = ["z" if i == "x" else i for i in n.input]
    q, recipe = Int8Builder(model, spec, calib_samples=256).model(Int8Policy())
    assert recipe["untied_biases"] == 2
    got = ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"z": x})[0]
    rel = float(np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()))
    assert rel < 0.05, rel  # INT8 rounding: ~0.02. With the bias shared: ~0.76 (the second Gemm read it with the first's scale)


# -- the CLI ---------------------------------------------------------------------------------------

def test_cli_report_writes_a_table_and_a_chart_and_no_model(cli, sg_onnx, tmp_path):
    png = tmp_path / "chart.png"
    r = cli("quantize", "--int8", "--onnx", sg_onnx, "--report", "--plot", png, "--sensitivity-samples", SENS_N,
            "--calib-method", "minmax", "--calib-samples", CALIB_N, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    assert "INT8 sensitivity" in r.output and "damage" in r.output and f"bar chart: {png}" in r.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["calib_method"] == "minmax" and d["units"] and d["units"][0]["damage"] >= d["units"][-1]["damage"]
    assert not list(Path(sg_onnx).parent.glob("*.int8*.onnx")) and not list(tmp_path.glob("*.onnx"))


def test_cli_options_that_need_int8(cli, tiny_checkpoint, tmp_path):
    r = cli("quantize", "--fp16", "-c", tiny_checkpoint, "--report")
    assert r.exit_code == 2 and "option only applies to --int8: --report" in r.output
    r = cli("quantize", "--int8", "-c", tiny_checkpoint, "--plot", tmp_path / "x.png")
    assert r.exit_code == 2 and "--plot is the bar chart of --report" in r.output

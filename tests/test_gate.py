"""The quality gate: its figures, and that it rejects damaged models and accepts the good quantized one."""
import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.artifacts.onnx import artifact_from_onnx
from gan_deploy.backends import make_runner
from gan_deploy.core.errors import GanDeployError
from gan_deploy.precision.gate import GateRejected, check_artifact, gate_figures, gate_latents, image_figures, run_gate, thresholds_for
from gan_deploy.precision.options import QuantizeOptions
from gan_deploy.precision.search import int8_onnx_from_onnx


def _digits_like(n: int, seed: int) -> np.ndarray:
    """Blobs on a -1 background: a stand-in for generated digits (saturated background, varied strokes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16]
    cy, cx = rng.uniform(4, 12, (2, n, 1, 1))
    r = rng.uniform(2, 5, (n, 1, 1))
    img = np.tanh(3 * (r - np.hypot(yy - cy, xx - cx))) + rng.normal(0, 0.02, (n, 16, 16))
    return np.clip(img, -1, 1).astype(np.float32)[:, None]


@pytest.fixture(scope="module")
def sets():
    return _digits_like(64, 0), _digits_like(64, 1)  # reference images, and FP32 images of fresh latents


def test_identical_images_pass(sets):
    ref, noise = sets
    rep = check_artifact(ref.copy(), ref, thresholds_for("int8"), "int8", noise_reference=noise)
    assert rep.accepted and not rep.failed
    assert rep.figures["psnr_worst_db"] == 200.0 and rep.figures["nonfinite"] == 0
    assert rep.figures["fd_ratio"] < 1e-6 and rep.figures["fd_noise"] > 0


def test_psnr_known_value(sets):
    ref, _ = sets
    f = image_figures(ref + np.float32(0.02), ref)  # MSE 4e-4 on span 2: 10 log10(4 / 4e-4) = 40 dB
    assert f["psnr_worst_db"] == pytest.approx(40.0, abs=1e-3) and f["psnr_median_db"] == pytest.approx(40.0, abs=1e-3)
    assert f["max_abs_err"] == pytest.approx(0.02, abs=1e-6)
    # PSNR is span-relative: the same error on a [0, 1] image is 6 dB worse
    f01 = image_figures((ref + 1) / 2 + np.float32(0.02), (ref + 1) / 2, (0.0, 1.0))
    assert f01["psnr_median_db"] == pytest.approx(40.0 - 20 * np.log10(2), abs=1e-3)


def test_nan_is_rejected_and_named(sets):
    ref, noise = sets
    bad = ref.copy()
    bad[3, 0, 5, 5] = np.nan
    bad[7, 0, 0, 0] = np.inf
    rep = check_artifact(bad, ref, thresholds_for("fp16"), "fp16", noise_reference=noise)
    assert not rep.accepted and "nonfinite" in rep.failed and "psnr_worst_db" in rep.failed
    assert rep.figures["nonfinite"] == 2 and rep.figures["nonfinite_images"] == 2
    fd = next(c for c in rep.checks if c.name == "fd_ratio")
    assert fd.value is None and not fd.passed and "NaN" in fd.note  # the score is not computed on NaN images
    assert "FAIL nonfinite 2 > 0" in rep.summary()
    json.dumps(rep.to_dict(), allow_nan=False)  # JSON-safe even with -inf PSNR


def test_solid_colour_is_rejected(sets):
    ref, noise = sets
    solid = np.full_like(ref, -1.0)
    rep = check_artifact(solid, ref, thresholds_for("int8"), "int8", noise_reference=noise)
    assert {"saturation_increase", "psnr_worst_db", "psnr_median_db", "fd_ratio"} <= set(rep.failed)
    assert rep.figures["saturated_rate"] == 1.0


def test_fd_ratio_catches_a_distribution_shift_psnr_alone_would_pass(sets):
    """Mildly blurred strokes: every image within 20 dB, but the set no longer looks like the reference."""
    ref, noise = sets
    t = thresholds_for("int8", min_psnr_worst=0.0, min_psnr_median=0.0, max_saturation_increase=1.0)
    shifted = np.clip(ref * 0.6 - 0.4, -1, 1)
    rep = check_artifact(shifted, ref, t, "int8", noise_reference=noise)
    assert rep.failed == ["fd_ratio"]


def test_thresholds_and_bad_input(sets):
    ref, noise = sets
    assert thresholds_for("int8", min_psnr_worst=None).min_psnr_worst == 20.0
    assert thresholds_for("fp16", min_psnr_worst=33).min_psnr_worst == 33
    with pytest.raises(GanDeployError, match="unknown precision: 'int4'"):
        thresholds_for("int4")
    with pytest.raises(GanDeployError, match="differ in shape"):
        image_figures(ref[:10], ref)
    with pytest.raises(GanDeployError, match="needs FP32 images of fresh latents"):
        check_artifact(ref, ref, thresholds_for("int8"))
    assert gate_figures(ref, ref, quality=False)["fd"] is None


def _damaged(onnx_path, tmp_path, name: str, how):
    """A copy of the FP32 ONNX with one weight tensor changed by `how`."""
    model = onnx.load(str(onnx_path))
    ct = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    target = ct[1].input[1]  # the middle layer's weights
    init = next(i for i in model.graph.initializer if i.name == target)
    init.CopyFrom(numpy_helper.from_array(how(numpy_helper.to_array(init).copy()), target))
    out = tmp_path / f"{name}.onnx"
    onnx.save(model, str(out))
    return artifact_from_onnx(out)


def test_gate_rejects_damaged_models_and_accepts_the_good_int8(tiny_checkpoint, tiny_onnx, tmp_path):
    parent = load_artifact(tiny_checkpoint)
    reference = make_runner("eager", parent, "cpu")
    t = thresholds_for("int8")

    good = int8_onnx_from_onnx(parent, QuantizeOptions(out=tmp_path / "good.int8.onnx", calib_samples=128, gate_samples=64))
    assert good.accepted and good.path.exists()

    def scaled(w):
        w[: w.shape[0] // 2] *= 3.0  # half the input channels of one layer 3x too strong
        return w

    def nan(w):
        w[0, 0, 1, 1] = np.nan
        return w

    def zeroed(w):
        w[:] = 0.0  # a layer that outputs nothing: every image collapses towards one
        return w

    for name, how, must_fail in [("scaled", scaled, "psnr_worst_db"), ("nan", nan, "nonfinite"), ("zeroed", zeroed, "psnr_median_db")]:
        bad = make_runner("onnxruntime", _damaged(tiny_onnx, tmp_path, name, how), "cpu")
        rep = run_gate(bad, reference, t, "int8", n=64)
        assert not rep.accepted and must_fail in rep.failed, (name, rep.summary())
        with pytest.raises(GateRejected, match=f"failed the quality gate: .*{must_fail}"):
            raise GateRejected(rep, f"the {name} model")
    # the untouched FP32 model passes even the FP16 thresholds
    assert run_gate(make_runner("onnxruntime", artifact_from_onnx(tiny_onnx), "cpu"), reference, thresholds_for("fp16"),
                    "fp32", n=64).accepted


def test_check_artifact_runs_a_runner_on_the_gate_latents(tiny_checkpoint, tiny_onnx):
    parent = load_artifact(tiny_checkpoint)
    eager = make_runner("eager", parent, "cpu")
    ref = eager.infer(gate_latents(40, parent.spec.latent_dim))
    rep = check_artifact(make_runner("onnxruntime", artifact_from_onnx(tiny_onnx), "cpu"), ref,
                         replace(thresholds_for("fp16"), max_fd_ratio=None), "fp32")
    assert rep.accepted and rep.n_images == 40 and "fd_ratio" not in [c.name for c in rep.checks]
    assert rep.figures["psnr_worst_db"] > 80  # FP32 ONNX vs eager: rounding only


def test_gate_bench_gives_run_gates_figures(tiny_checkpoint, tiny_onnx):
    """The sensitivity analysis gates many candidates against one set of reference images: same figures as run_gate."""
    from gan_deploy.precision.sensitivity import GateBench

    parent = load_artifact(tiny_checkpoint)
    t = thresholds_for("int8")
    cand = make_runner("onnxruntime", artifact_from_onnx(tiny_onnx), "cpu")
    bench = GateBench(make_runner("eager", parent, "cpu"), t, 48)
    a = bench.check(cand)
    b = run_gate(cand, make_runner("eager", parent, "cpu"), t, "int8", n=48)
    assert a.accepted == b.accepted and a.figures == b.figures
    with pytest.raises(GanDeployError, match="too few gate images"):
        GateBench(make_runner("eager", parent, "cpu"), t, 16)

"""OpenVINO beside onnxruntime: `auto`'s measured choice (with injected timings: no timed test), its cache, the
quality gate re-run on OpenVINO for reduced-precision models, and the user cache folder's safety."""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings

import numpy as np
import pytest

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import autoprobe, choose_backend, make_runner, unavailable_reason
from gan_deploy.core.errors import GanDeployError, GanDeployWarning
from gan_deploy.core.latents import latents_range

needs_openvino = pytest.mark.skipif(unavailable_reason("openvino") is not None, reason="openvino is not installed")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh user cache folder, and no choice remembered in this process."""
    monkeypatch.setenv("GAN_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GAN_DEPLOY_AUTO_MEASURE", "1")
    from gan_deploy import backends
    monkeypatch.setattr(backends, "_CHOSEN", {})
    monkeypatch.setattr(autoprobe, "machine_load", lambda: 0.0)  # the suite's own load must not decide what is recorded
    return tmp_path / "cache"


# -- the decision, from figures ---------------------------------------------------------------------------------------

def test_decide_needs_more_than_the_noise_margin():
    assert autoprobe.decide({"onnxruntime": 10.0, "openvino": 9.6}, "onnxruntime")[0] == "onnxruntime"  # 4%: noise
    name, why = autoprobe.decide({"onnxruntime": 10.0, "openvino": 6.0}, "onnxruntime")
    assert name == "openvino" and "1.67x onnxruntime" in why
    assert autoprobe.decide({"onnxruntime": 10.0, "openvino": 14.0}, "onnxruntime")[0] == "onnxruntime"
    assert autoprobe.decide({"onnxruntime": 10.0, "openvino": 9.6}, "onnxruntime", margin=0.01)[0] == "openvino"
    # never slower than the incumbent by more than noise, whatever the figures
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.uniform(0.1, 100, 2)
        name, _ = autoprobe.decide({"onnxruntime": a, "openvino": b}, "onnxruntime")
        assert name == "onnxruntime" or b * 1.05 < a


def _fake(times):
    calls = []

    def measure(runners, batch_size):
        calls.append((sorted(runners), batch_size))
        return {n: [t / 1e3] * 3 for n, t in times.items() if n in runners}
    return measure, calls


@needs_openvino
def test_auto_takes_the_faster_runtime_and_caches_the_choice(tiny_onnx, cache, monkeypatch):
    art = load_artifact(onnx=tiny_onnx)
    fast_ov, calls = _fake({"onnxruntime": 10.0, "openvino": 5.0})
    monkeypatch.setattr(autoprobe, "measure", fast_ov)
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, fast_ov))
    name, why = choose_backend(art, "cpu", batch_size=64)
    assert name == "openvino" and "measured at batch 64" in why and "2.00x onnxruntime" in why
    assert calls == [(["onnxruntime", "openvino"], 64)]
    files = list((cache / "auto").glob("*.json"))
    assert len(files) == 1 and oct(os.stat(cache / "auto").st_mode & 0o777) == "0o700"
    doc = json.loads(files[0].read_text())
    assert doc["choice"] == "openvino" and doc["key"]["batch_size"] == 64 and doc["key"]["sha256"] == art.sha256
    # a second start (a new process: nothing remembered in memory) reads the choice back: no probe
    from gan_deploy import backends
    monkeypatch.setattr(backends, "_CHOSEN", {})
    name, why = choose_backend(art, "cpu", batch_size=64)
    assert name == "openvino" and "measured before" in why and len(calls) == 1
    # another batch size is another question
    slow_ov, calls2 = _fake({"onnxruntime": 1.0, "openvino": 1.5})
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, slow_ov))
    assert choose_backend(art, "cpu", batch_size=1)[0] == "onnxruntime" and len(calls2) == 1
    # no batch size (serve, eval): onnxruntime, unmeasured, as before
    assert choose_backend(art, "cpu") == ("onnxruntime", "auto on cpu: onnxruntime")
    # make_runner and the runner's reason
    r = make_runner("auto", art, "cpu", batch_size=64)
    assert r.name == "openvino" and "measured" in r.auto_reason


@needs_openvino
@pytest.mark.parametrize("damage", ["not json {", '{"format": "gan-deploy-auto-choice", "format_version": 1}',
                                    "choice", "median", "version"])
def test_a_damaged_choice_file_is_measured_again(tiny_onnx, cache, monkeypatch, damage):
    art = load_artifact(onnx=tiny_onnx)
    fake, calls = _fake({"onnxruntime": 10.0, "openvino": 5.0})
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, fake))
    choose_backend(art, "cpu", batch_size=8)
    (path,) = (cache / "auto").glob("*.json")
    doc = json.loads(path.read_text())
    if damage == "choice":
        doc["choice"] = "tensorrt"  # not a candidate: never trusted
        text = json.dumps(doc)
    elif damage == "median":
        doc["median_ms"]["openvino"] = -1
        text = json.dumps(doc)
    elif damage == "version":
        doc["format_version"] = 99
        text = json.dumps(doc)
    else:
        text = damage
    path.write_text(text)
    from gan_deploy import backends
    monkeypatch.setattr(backends, "_CHOSEN", {})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert choose_backend(art, "cpu", batch_size=8)[0] == "openvino"
    assert len(calls) == 2  # measured again
    assert any(issubclass(w.category, GanDeployWarning) and "damaged cache file" in str(w.message) for w in seen)
    assert json.loads(path.read_text())["choice"] == "openvino"  # and rewritten whole


@needs_openvino
def test_measurement_can_be_turned_off(tiny_onnx, cache, monkeypatch):
    fake, calls = _fake({"onnxruntime": 10.0, "openvino": 1.0})
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, fake))
    monkeypatch.setenv("GAN_DEPLOY_AUTO_MEASURE", "0")
    assert choose_backend(load_artifact(onnx=tiny_onnx), "cpu", batch_size=64) == ("onnxruntime", "auto on cpu: onnxruntime")
    assert not calls


@needs_openvino
@pytest.mark.parametrize("age_days, measured_again", [(1, False), (autoprobe.MAX_AGE_DAYS + 1, True), (-1, True)])
def test_an_old_choice_is_measured_again(tiny_onnx, cache, monkeypatch, age_days, measured_again):
    # a probe on a busy machine must not decide for good; a time ahead of the clock is not trusted either
    art = load_artifact(onnx=tiny_onnx)
    fake, calls = _fake({"onnxruntime": 10.0, "openvino": 5.0})
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, fake))
    key = autoprobe.probe_key(art, ["onnxruntime", "openvino"], 8, 1)
    path = autoprobe.cache_file(key)
    autoprobe.write_choice(path, key, "onnxruntime", "measured on a busy day", {"onnxruntime": 1.0, "openvino": 2.0})
    doc = json.loads(path.read_text())
    doc["measured_at"] = time.strftime(autoprobe.TIME_FORMAT, time.gmtime(time.time() - age_days * 86400))
    path.write_text(json.dumps(doc))
    name, why = choose_backend(art, "cpu", batch_size=8)
    assert (len(calls) == 1) == measured_again
    if measured_again:
        assert name == "openvino" and json.loads(path.read_text())["choice"] == "openvino"  # recorded anew
    else:
        assert name == "onnxruntime" and f"measured before, at {doc['measured_at']}" in why


@needs_openvino
@pytest.mark.parametrize("load, rounds, why", [(9.0, [10.0, 10.0, 10.0], "load average 9.0"),
                                                (0.0, [10.0, 10.0, 31.0], "spread p90/p50 3.1")])
def test_a_probe_on_a_busy_machine_decides_this_run_only(tiny_onnx, cache, monkeypatch, load, rounds, why):
    """Found by a new user's trial: a probe while another job ran took onnxruntime (OpenVINO suffers more from a busy
    machine) and recorded it for a week. Busy (other jobs' load above the cores, or rounds spread as bench warns):
    the choice holds for this run, nothing is recorded, the next start measures again."""
    art = load_artifact(onnx=tiny_onnx)
    calls = []

    def measure(runners, batch_size):
        calls.append(1)
        return {"onnxruntime": [t / 1e3 for t in rounds], "openvino": [5e-3] * 3}
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, measure))
    monkeypatch.setattr(autoprobe, "machine_load", lambda: load)
    name, reason = choose_backend(art, "cpu", batch_size=8)
    assert name == "openvino" and "the machine was busy" in reason and why in reason and "for this run only" in reason
    assert not list((cache / "auto").glob("*.json")) if (cache / "auto").exists() else True
    from gan_deploy import backends
    monkeypatch.setattr(backends, "_CHOSEN", {})
    monkeypatch.setattr(autoprobe, "machine_load", lambda: 0.0)
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, _fake({"onnxruntime": 10.0, "openvino": 5.0})[0]))
    name, reason = choose_backend(art, "cpu", batch_size=8)  # quiet now: measured again, and recorded
    assert len(calls) == 1 and "busy" not in reason and len(list((cache / "auto").glob("*.json"))) == 1


@needs_openvino
def test_a_choice_for_another_key_is_not_used(tiny_onnx, cache, monkeypatch):
    art = load_artifact(onnx=tiny_onnx)
    fake, calls = _fake({"onnxruntime": 10.0, "openvino": 5.0})
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, fake))
    key = autoprobe.probe_key(art, ["onnxruntime", "openvino"], 8, 1)
    path = autoprobe.cache_file(key)
    autoprobe.write_choice(path, {**key, "cpu": "another CPU"}, "onnxruntime", "measured elsewhere", {"onnxruntime": 1.0})
    assert choose_backend(art, "cpu", batch_size=8)[0] == "openvino" and len(calls) == 1


@needs_openvino
def test_a_challenger_that_refuses_the_model_is_out(tiny_onnx, cache, monkeypatch):
    art = load_artifact(onnx=tiny_onnx)
    fake, calls = _fake({"onnxruntime": 10.0, "openvino": 1.0})
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, fake))

    def vet(runner):
        raise GanDeployError("INT8 model failed the quality gate", "psnr_worst_db 12 < 20")
    name, why = choose_backend(art, "cpu", batch_size=8, vet=vet)
    assert name == "onnxruntime" and "openvino refused this model (INT8 model failed the quality gate" in why and not calls


# -- the quality gate on OpenVINO ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized(tiny_onnx, tmp_path_factory):
    """tiny.onnx with its INT8 (both flavours) and FP16 children beside it, as quantize writes them."""
    from gan_deploy.precision.fp16 import fp16_onnx_from_onnx
    from gan_deploy.precision.options import QuantizeOptions
    from gan_deploy.precision.search import int8_onnx_from_onnx

    d = tmp_path_factory.mktemp("q")
    shutil.copy(tiny_onnx, d / "tiny.onnx")
    parent = load_artifact(onnx=d / "tiny.onnx")
    int8_onnx_from_onnx(parent, QuantizeOptions(out=d / "tiny.int8.onnx", target="onnxruntime", calib_samples=64, gate_samples=64))
    int8_onnx_from_onnx(parent, QuantizeOptions(out=d / "tiny.int8-tensorrt.onnx", target="tensorrt", calib_samples=64, gate_samples=64))
    fp16_onnx_from_onnx(parent, QuantizeOptions(precision="fp16", out=d / "tiny.fp16.onnx", gate_samples=64))
    return d


@needs_openvino
def test_reduced_precision_models_run_on_openvino(quantized):
    """Every flavour quantize writes runs on OpenVINO with the declared shape: the onnxruntime INT8 flavour too, since
    the Q/DQ pair before its last DepthToSpace is left out (int8.float_tail; with it OpenVINO 2026.4 computed
    [N, 4, H, W] for [N, 1, H, W])."""
    z = latents_range(0, 0, 9, 8)
    ref = make_runner("onnxruntime", load_artifact(onnx=quantized / "tiny.onnx"), "cpu").infer(z)
    for name in ("tiny.fp16.onnx", "tiny.int8-tensorrt.onnx", "tiny.int8.onnx"):
        y = make_runner("openvino", load_artifact(onnx=quantized / name), "cpu").infer(z)
        assert y.shape == ref.shape and np.abs(y - ref).max() < 0.5, name


def test_a_runtime_that_computes_another_shape_is_refused_in_one_line(quantized, monkeypatch):
    """The shape check at activation (what OpenVINO's wrong [N, 4, H, W] met): one line naming both shapes."""
    from gan_deploy.backends import openvino as ov_backend
    if unavailable_reason("openvino"):
        pytest.skip("openvino is not installed")
    runner = make_runner("openvino", load_artifact(onnx=quantized / "tiny.int8.onnx"), "cpu")
    real = runner._run

    def wrong(z):
        y = real(z)
        return np.concatenate([y] * 4, axis=1)  # [N, 4, H, W]
    monkeypatch.setattr(runner, "_run", wrong)
    with pytest.raises(GanDeployError, match="another shape than the model declares"):
        runner.activate()
    assert ov_backend  # the module under test


@needs_openvino
def test_gate_runs_on_openvino_once_per_machine(quantized, cache):
    from gan_deploy.precision.runtime_gate import require_runtime_gate

    art = load_artifact(onnx=quantized / "tiny.int8-tensorrt.onnx")
    report = require_runtime_gate(make_runner("openvino", art, "cpu"))
    assert report is not None and report.accepted and report.n_images == 64  # quantize's count, from the model
    assert len(list((cache / "gate").glob("*.json"))) == 1
    assert require_runtime_gate(make_runner("openvino", art, "cpu")) is None  # the pass recorded: not run again
    # onnxruntime is what quantize gated it on: nothing to re-run; FP32 models have no gate
    assert require_runtime_gate(make_runner("onnxruntime", art, "cpu")) is None
    assert require_runtime_gate(make_runner("openvino", load_artifact(onnx=quantized / "tiny.onnx"), "cpu")) is None


@needs_openvino
def test_a_model_that_fails_the_gate_on_openvino_is_refused_with_the_figures(quantized, cache, monkeypatch, cli, tmp_path):
    """The gate's thresholds are raised beyond what OpenVINO's INT8 arithmetic reaches (no real model is known to
    pass on onnxruntime and fail on OpenVINO): the refusal path is the real one, run on OpenVINO's images."""
    from gan_deploy.precision import gate, runtime_gate
    from gan_deploy.precision.gate import GateRejected

    strict = gate.GateThresholds(0, 0.01, 200.0, 30.0, 0.25)
    monkeypatch.setattr(runtime_gate, "thresholds_for", lambda precision: strict)
    art = load_artifact(onnx=quantized / "tiny.int8-tensorrt.onnx")
    with pytest.raises(GateRejected, match=r"INT8 model .*tiny.int8-tensorrt.onnx on openvino .*failed the quality gate: "
                                           r"psnr_worst_db [0-9.]+ < 200.*PSNR worst") as e:
        runtime_gate.require_runtime_gate(make_runner("openvino", art, "cpu"))
    assert not e.value.report.accepted and not list((cache / "gate").glob("*.json"))  # a failure is not recorded
    # generate refuses it in one line, before writing anything; onnxruntime still runs it
    r = cli("generate", "--onnx", quantized / "tiny.int8-tensorrt.onnx", "--backend", "openvino", "-n", 4, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "failed the quality gate" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))
    r = cli("generate", "--onnx", quantized / "tiny.int8-tensorrt.onnx", "--backend", "onnxruntime", "-n", 4, "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    # auto leaves OpenVINO out, saying why, even when it measures faster
    fake, _ = _fake({"onnxruntime": 10.0, "openvino": 1.0})
    monkeypatch.setattr(autoprobe.measured_choice, "__defaults__", (None, fake))
    name, why = choose_backend(art, "cpu", batch_size=8, vet=runtime_gate.require_runtime_gate)
    assert name == "onnxruntime" and "openvino refused this model" in why and "quality gate" in why


@needs_openvino
def test_without_its_parent_the_model_runs_with_a_warning(quantized, cache, tmp_path):
    from gan_deploy.precision.runtime_gate import require_runtime_gate

    shutil.copy(quantized / "tiny.int8-tensorrt.onnx", tmp_path / "tiny.int8-tensorrt.onnx")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert require_runtime_gate(make_runner("openvino", load_artifact(onnx=tmp_path / "tiny.int8-tensorrt.onnx"), "cpu")) is None
    assert any("not re-run on openvino" in str(w.message) and "FP32 parent" in str(w.message) for w in seen)


@needs_openvino
def test_bench_shows_the_gate_verdict_of_the_openvino_row(quantized, cli):
    r = cli("bench", "--onnx", quantized / "tiny.onnx", "--backends", "onnxruntime,openvino", "--variant",
            quantized / "tiny.int8-tensorrt.onnx", "--batch-sizes", "4", "--iters", 3, "--warmup", 0, "--min-time", 0,
            "--rounds", 1, "--gate-samples", 64)
    assert r.exit_code == 0, r.output
    gate_rows = r.output.split("quality-gate figures")[1].splitlines()
    assert any(line.startswith("openvino:int8") and ("pass" in line or "FAIL" in line) for line in gate_rows), r.output
    assert any(line.startswith("onnxruntime:int8") for line in gate_rows)


# -- the user cache folder -----------------------------------------------------------------------------------------

def test_cache_folder_is_private_and_never_a_symlink(tmp_path, monkeypatch):
    from gan_deploy.core import usercache

    monkeypatch.setattr(usercache, "_warned", set())
    monkeypatch.setenv("GAN_DEPLOY_CACHE_DIR", str(tmp_path / "c"))
    d = usercache.cache_dir("openvino")
    assert d == tmp_path / "c" / "openvino" and os.stat(d).st_mode & 0o777 == 0o700
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", tmp_path / "c" / "auto")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert usercache.cache_dir("auto") is None
    assert "symbolic link" in str(seen[0].message)
    (tmp_path / "c" / "gate").mkdir(mode=0o700)
    os.chmod(tmp_path / "c" / "gate", 0o777)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert usercache.cache_dir("gate") is None
    assert "others can write" in str(seen[0].message)
    monkeypatch.delenv("GAN_DEPLOY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert usercache.cache_root() == tmp_path / "xdg" / "gan-deploy"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert usercache.cache_root() == usercache.Path.home() / ".cache" / "gan-deploy"


@needs_openvino
def test_second_start_loads_compiled_models_from_the_cache(tiny_onnx, cache):
    make_runner("openvino", load_artifact(onnx=tiny_onnx), "cpu").infer(latents_range(0, 0, 3, 8))
    blobs = list((cache / "openvino").iterdir())
    assert blobs, "OpenVINO wrote no compiled model"
    make_runner("openvino", load_artifact(onnx=tiny_onnx), "cpu").infer(latents_range(0, 0, 3, 8))
    assert sorted(blobs) == sorted((cache / "openvino").iterdir())  # the same blobs, loaded, none added

"""TensorRT: the sidecar checks (pure, run everywhere), the errors without TensorRT, and real engine tests
(marked tensorrt + gpu, skipped with the reason where the library or the GPU is missing)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from gan_deploy.artifacts.engine import (
    RuntimeInfo,
    check_engine_file,
    check_runtime,
    check_source,
    make_sidecar,
    parse_sidecar,
    read_sidecar,
    sidecar_path,
    spec_from_sidecar,
)
from gan_deploy.artifacts.load import load_artifact
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.backends import BACKENDS, pick_backend
from gan_deploy.backends.tensorrt import unavailable_reason
from gan_deploy.core.errors import BackendUnavailable, GanDeployError, StaleArtifact
from gan_deploy.core.fileio import sha256_file
from gan_deploy.engine.build import builder_unavailable_reason

H100 = RuntimeInfo("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")
SPEC = GeneratorSpec(8, 1, 16, 16, (-1.0, 1.0), 2, "z", "image")
TRT_MISSING = unavailable_reason()
BUILD_MISSING = builder_unavailable_reason()  # building also needs the full tensorrt (not the lean runtime)


@pytest.fixture
def engine(tmp_path):
    """A fake engine file with a sidecar as build-engine writes it, for an ONNX source in tmp_path (its bytes
    only: the checks hash it, none parses it, so these tests do not depend on the exporter)."""
    src = tmp_path / "g.onnx"
    src.write_bytes(b"stands for the ONNX the engine was built from")
    eng = tmp_path / "g.fp16.engine"
    eng.write_bytes(b"serialized engine bytes")
    side = make_sidecar(engine_sha256=sha256_file(eng), precision="fp16", runtime=H100, profile=(1, 64, 256),
                        onnx_sha256="a" * 64, source={"kind": "onnx", "path": str(src), "sha256": sha256_file(src)},
                        spec=SPEC, generator=None, workspace_mib=1024,
                        rebuild=f"gan-deploy build-engine --fp16 --onnx {src} --out {eng}")
    sidecar_path(eng).write_text(json.dumps(side, indent=2))
    return eng


def _edit(eng, **changes):
    side = json.loads(sidecar_path(eng).read_text())
    for k, v in changes.items():
        if v is None:
            del side[k]
        else:
            side[k] = v
    sidecar_path(eng).write_text(json.dumps(side))


def test_sidecar_round_trip(engine):
    d = read_sidecar(engine)
    assert d["precision"] == "fp16" and d["profile"] == {"min": 1, "opt": 64, "max": 256}
    assert spec_from_sidecar(d) == SPEC
    check_engine_file(d, sha256_file(engine), engine)
    check_source(d)
    check_runtime(d, H100)  # same TensorRT, same GPU: accepted


def test_other_tensorrt_version_or_gpu_is_refused_with_the_rebuild_command(engine):
    d = read_sidecar(engine)
    with pytest.raises(StaleArtifact, match=r"TensorRT 10\.13\.0\.35 \(this machine has 11\.4\.0\.1\).*gan-deploy build-engine --fp16 --onnx"):
        check_runtime(d, RuntimeInfo("11.4.0.1", H100.gpu_name, "9.0"))
    with pytest.raises(StaleArtifact, match=r"compute capability 9\.0 NVIDIA H100 .*this GPU is 8\.6 NVIDIA A10G"):
        check_runtime(d, RuntimeInfo(H100.tensorrt_version, "NVIDIA A10G", "8.6"))
    with pytest.raises(StaleArtifact, match=r"GPU NVIDIA H100 80GB HBM3 \(this GPU is NVIDIA H100 PCIe, same compute capability\)"):
        check_runtime(d, RuntimeInfo(H100.tensorrt_version, "NVIDIA H100 PCIe", "9.0"))
    with pytest.raises(StaleArtifact) as e:  # every difference at once
        check_runtime(d, RuntimeInfo("10.8.0.43", "NVIDIA L4", "8.9"))
    assert "TensorRT 10.13.0.35" in str(e.value) and "compute capability 9.0" in str(e.value)


def test_version_compatible_engine_runs_on_this_or_a_later_tensorrt_of_its_major_version(engine):
    _edit(engine, version_compatible=True, tensorrt_version="11.1.0.5")
    d = read_sidecar(engine)
    for module in ("tensorrt", "tensorrt_lean"):  # the full TensorRT and the lean runtime alike
        for later in ("11.1.0.5", "11.1.1.0", "11.4.0.106", "11.10.0.1", "11.2"):
            check_runtime(d, RuntimeInfo(later, H100.gpu_name, "9.0", module))
    for other, why in [("11.1.0.4", "earlier"), ("11.0.0.1", "earlier"), ("10.13.0.35", "earlier major"), ("12.0.0.1", "next major")]:
        with pytest.raises(StaleArtifact, match=rf"TensorRT 11\.1\.0\.5 with --version-compatible \(this machine has {re.escape(other)}; "
                                                r"such an engine runs on the version that built it and later ones of the same major version\)"):
            check_runtime(d, RuntimeInfo(other, H100.gpu_name, "9.0"))
    with pytest.raises(StaleArtifact, match=r"compute capability 9\.0 .*this GPU is 8\.6 NVIDIA A10G"):  # the GPU still counts
        check_runtime(d, RuntimeInfo("11.4.0.106", "NVIDIA A10G", "8.6"))
    _edit(engine, tensorrt_version="11.1.0.5-rc")  # not all numbers: only the same string
    check_runtime(read_sidecar(engine), RuntimeInfo("11.1.0.5-rc", H100.gpu_name, "9.0"))
    with pytest.raises(StaleArtifact, match="with --version-compatible"):
        check_runtime(read_sidecar(engine), RuntimeInfo("11.4.0.106", H100.gpu_name, "9.0"))


def test_version_compatible_field_is_optional_and_checked(engine):
    d = read_sidecar(engine)
    assert d["version_compatible"] is False
    with pytest.raises(StaleArtifact, match=r"TensorRT 10\.13\.0\.35 \(this machine has 10\.13\.1\.2\)"):  # not one: exact version
        check_runtime(d, RuntimeInfo("10.13.1.2", H100.gpu_name, "9.0"))
    _edit(engine, version_compatible=None)  # written before the field existed: read as false
    assert "version_compatible" not in read_sidecar(engine)
    check_runtime(read_sidecar(engine), H100)
    for bad in ("yes", 1, "true"):
        _edit(engine, version_compatible=bad)
        with pytest.raises(GanDeployError, match=r"field has the wrong type: .*version_compatible=.*expected true or false"):
            read_sidecar(engine)


def test_the_lean_runtime_runs_only_version_compatible_engines(engine):
    d = read_sidecar(engine)
    lean = RuntimeInfo(H100.tensorrt_version, H100.gpu_name, "9.0", "tensorrt_lean")
    with pytest.raises(StaleArtifact, match=r"no --version-compatible \(this machine has only TensorRT's lean runtime, tensorrt_lean, "
                                            r"which runs version-compatible engines only\).*the lean runtime cannot build engines; where the "
                                            r"full TensorRT is installed: gan-deploy build-engine --fp16 --onnx .* --version-compatible"):
        check_runtime(d, lean)
    _edit(engine, version_compatible=True)
    check_runtime(read_sidecar(engine), lean)


def test_hand_edited_sidecar_is_checked(engine):
    original = sidecar_path(engine).read_text()
    # edited to claim another GPU: refused, naming both
    _edit(engine, gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    with pytest.raises(StaleArtifact, match="compute capability 8.0 NVIDIA A100-SXM4-80GB .*this GPU is 9.0 NVIDIA H100"):
        check_runtime(read_sidecar(engine), H100)
    for changes, message in [
        ({"tensorrt_version": None}, "lacks a field: .*'tensorrt_version'"),
        ({"precision": "int4"}, "field is invalid: .*precision='int4'"),
        ({"compute_capability": "sm90"}, "field is invalid: .*compute_capability='sm90'"),
        ({"profile": {"min": 64, "opt": 8, "max": 256}}, "profile is invalid"),
        ({"profile": [1, 64, 256]}, "wrong type: .*profile="),
        ({"engine_sha256": "xyz"}, "field is invalid: .*engine_sha256"),
        ({"spec": {"latent_dim": 8}}, "spec is incomplete"),
        ({"format_version": 99}, "written by a newer gan-deploy"),
        ({"format": "something-else"}, "not a gan-deploy engine sidecar"),
    ]:
        sidecar_path(engine).write_text(original)
        _edit(engine, **changes)
        with pytest.raises(GanDeployError, match=message):
            read_sidecar(engine)
    sidecar_path(engine).write_text(original)
    sidecar_path(engine).write_text(sidecar_path(engine).read_text()[:50])  # truncated
    with pytest.raises(GanDeployError, match="not valid JSON"):
        read_sidecar(engine)
    sidecar_path(engine).unlink()
    with pytest.raises(GanDeployError, match="engine has no sidecar JSON"):
        read_sidecar(engine)


def test_replaced_engine_file_is_refused(engine):
    d = read_sidecar(engine)
    engine.write_bytes(b"another engine")
    with pytest.raises(StaleArtifact, match="engine file does not match its sidecar.*rebuild it here: gan-deploy build-engine"):
        check_engine_file(d, sha256_file(engine), engine)


def test_changed_onnx_is_refused_and_missing_one_is_not(engine):
    d = read_sidecar(engine)
    src = engine.parent / "g.onnx"
    src.write_bytes(src.read_bytes() + b"\0")  # re-exported / edited since the build
    with pytest.raises(StaleArtifact, match=r"the onnx this engine was built from has changed: .*g\.onnx sha256.*"
                                            r"rebuild it here: gan-deploy build-engine --fp16 --onnx"):
        check_source(d)
    src.unlink()  # moved away: nothing to compare, the engine itself is still consistent
    check_source(d)


def test_parse_sidecar_reports_json_position():
    with pytest.raises(GanDeployError, match=r"not valid JSON: x\.json \(Expecting .* at line 1\)"):
        parse_sidecar("{", "x.json")


def test_backend_is_registered_first_and_lazily():
    assert list(BACKENDS)[0] == "tensorrt"  # `auto` prefers it where it can run
    code = ("import sys, gan_deploy.backends.tensorrt, gan_deploy.engine.build, gan_deploy.artifacts.engine, gan_deploy.cli.precision; "
            "sys.exit('tensorrt' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT and a GPU are available here")
def test_without_tensorrt_auto_falls_back_and_errors_say_how_to_install(engine, tiny_checkpoint, cli):
    assert pick_backend("auto", load_artifact(tiny_checkpoint)) == "onnxruntime"
    # describing an engine needs no TensorRT (a CPU-only Ray head can plan GPU work); running it does
    art = load_artifact(engine=engine)
    assert art.kind == "engine" and art.spec.latent_dim == 8 and art.precision == "fp16"
    from gan_deploy.backends import make_runner
    with pytest.raises(BackendUnavailable, match=r"backend 'tensorrt' is not available here: .*pip install -e '\.\[gpu\]'"):
        make_runner("tensorrt", art)
    with pytest.raises(BackendUnavailable, match="no backend can run this artifact here"):
        make_runner("auto", art)
    _edit(engine, engine_sha256="b" * 64)  # consistency checks come first: they need no TensorRT
    with pytest.raises(StaleArtifact, match="does not match its sidecar"):
        load_artifact(engine=engine)
    r = cli("build-engine", "--fp16", "-c", tiny_checkpoint, "--out", engine.parent / "x.engine")
    assert r.exit_code == 2
    assert "cannot build a TensorRT engine here" in r.output and "pip install -e '.[gpu]'" in r.output
    assert not (engine.parent / "x.engine").exists()
    r = cli("build-engine", "--int8", "--fp32", "-c", tiny_checkpoint)
    assert r.exit_code == 2 and "choose exactly one precision" in r.output


# -- real TensorRT (GPU machines) -------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(BUILD_MISSING is not None, reason=f"cannot build TensorRT engines here: {BUILD_MISSING}")
def test_build_load_and_run_engine(precision, tiny_checkpoint, tmp_path):
    from gan_deploy.backends import make_runner
    from gan_deploy.core.latents import latents_range
    from gan_deploy.engine.build import EngineOptions, engine_from_artifact

    parent = load_artifact(tiny_checkpoint)
    out = tmp_path / f"tiny.{precision}.engine"
    rep = engine_from_artifact(parent, EngineOptions(precision, out, profile=(1, 8, 32), gate_samples=64, calib_samples=128,
                                                     timing_cache=tmp_path / "timing.cache"))
    assert rep.gate.accepted and out.exists() and sidecar_path(out).exists()
    side = read_sidecar(out)
    assert side["precision"] == precision and side["profile"] == {"min": 1, "opt": 8, "max": 32}
    art = load_artifact(engine=out)
    z = latents_range(1, 0, 40, art.spec.latent_dim)  # 40 > max batch 32: split in two
    ref = make_runner("eager", parent, "cpu").infer(z)
    with make_runner("tensorrt", art, "cuda") as graphs, make_runner("tensorrt", art, "cuda", cuda_graphs=False) as plain:
        for b in (1, 7, 40):
            y = graphs.infer(z[:b])
            assert y.shape == (b, 1, 16, 16) and np.abs(y - ref[:b]).max() < graphs.tolerance
            assert np.array_equal(y, plain.infer(z[:b]))  # graph replay == direct enqueue
        assert np.array_equal(graphs.infer(z[:7]), graphs.infer(z[:7]))
    again = engine_from_artifact(parent, EngineOptions(precision, tmp_path / "again.engine", profile=(1, 8, 32), gate_samples=64,
                                                       calib_samples=128, timing_cache=tmp_path / "timing.cache"))
    assert "reused" in again.timing_cache


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(BUILD_MISSING is not None, reason=f"cannot build TensorRT engines here: {BUILD_MISSING}")
def test_real_engine_with_edited_sidecar_is_refused(tiny_checkpoint, tmp_path):
    from gan_deploy.engine.build import EngineOptions, engine_from_artifact

    out = tmp_path / "tiny.fp16.engine"
    engine_from_artifact(load_artifact(tiny_checkpoint), EngineOptions("fp16", out, profile=(1, 8, 32), gate_samples=64))
    _edit(out, tensorrt_version="9.9.9.9")
    with pytest.raises(StaleArtifact, match=r"TensorRT 9\.9\.9\.9 \(this machine has"):
        load_artifact(engine=out)

"""One conformance test for every registered backend: a new backend gets these checks for free."""
import numpy as np
import pytest

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import BACKENDS, make_runner, pick_backend, runner_class, unavailable_reason
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import latents_range


def _artifact_for(name, tiny_checkpoint, tiny_onnx):
    accepts = runner_class(name).accepts
    if "checkpoint" in accepts:
        return load_artifact(tiny_checkpoint)
    if "onnx" in accepts:
        return load_artifact(onnx=tiny_onnx)
    pytest.skip(f"{name} runs only {accepts}; built artifacts need its library")


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    runner = make_runner("eager", load_artifact(tiny_checkpoint), "cpu")
    return lambda z: runner.infer(z)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "compile" else n for n in BACKENDS])
def test_backend_conformance(name, tiny_checkpoint, tiny_onnx, reference):
    reason = unavailable_reason(name)
    if reason:
        pytest.skip(f"{name} unavailable here: {reason}")
    art = _artifact_for(name, tiny_checkpoint, tiny_onnx)
    runner = make_runner(name, art, "cpu")
    z = latents_range(3, 0, 6, art.spec.latent_dim)
    y = runner.infer(z)
    assert y.dtype == np.float32 and y.shape == (6, 1, 16, 16)
    assert np.isfinite(y).all() and y.min() >= -1 and y.max() <= 1
    # parity with eager FP32 within the backend's declared tolerance
    assert np.abs(y - reference(z)).max() <= runner.tolerance
    # an image does not depend on the rest of its batch
    y2 = runner.infer(z[2:5])
    assert np.abs(y2 - y[2:5]).max() <= runner.tolerance
    # uint8 pixels straight from the backend are the host conversion of its float images
    from gan_deploy.core.images import to_uint8
    assert np.array_equal(runner.infer_pixels(z), to_uint8(y, art.spec.value_range))
    # the same call twice gives the same images
    assert np.array_equal(runner.infer(z[:2]), runner.infer(z[:2]))
    with pytest.raises(GanDeployError, match="bad latent batch"):
        runner.infer(z.astype(np.float64))
    with pytest.raises(GanDeployError, match="bad latent batch"):
        runner.infer(z[:, :3])
    runner.close()


ONNX_RUNNERS = [n for n in BACKENDS if runner_class(n).accepts == ("onnx",) or "onnx" in runner_class(n).accepts
                and n != "tensorrt"]


def _available(name):
    reason = unavailable_reason(name)
    if reason:
        pytest.skip(f"{name} unavailable here: {reason}")


@pytest.mark.parametrize("name", ONNX_RUNNERS)
@pytest.mark.parametrize("batch", [1, 3])
def test_fixed_batch_onnx_runs_in_chunks(name, batch, tiny_onnx, tmp_path):
    """A graph pinned to one batch size runs any number of images: whole chunks, the last one padded."""
    import onnx
    _available(name)
    m = onnx.load(tiny_onnx)
    for vi in (m.graph.input[0], m.graph.output[0]):
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.Clear()
        d0.dim_value = batch
    onnx.save(m, tmp_path / "f.onnx")
    fixed = load_artifact(onnx=tmp_path / "f.onnx")
    runner, dynamic = make_runner(name, fixed, "cpu"), make_runner(name, load_artifact(onnx=tiny_onnx), "cpu")
    for n in (1, 2, 4, 7):
        z = latents_range(0, 0, n, 8)
        assert np.abs(runner.infer(z) - dynamic.infer(z)).max() <= runner.tolerance
    assert f"fixed batch {batch}" in runner.describe()


@pytest.mark.parametrize("name", ONNX_RUNNERS)
def test_output_health_is_counted(name, tiny_onnx, tmp_path):
    """Images outside the declared value range are counted by every runner (a tanh model declared [0, 1])."""
    import warnings

    import onnx

    from gan_deploy.core.errors import GanDeployWarning
    _available(name)
    m = onnx.load(tiny_onnx)
    del m.metadata_props[:]  # a foreign ONNX: the range comes from --value-range
    onnx.save(m, tmp_path / "foreign.onnx")
    runner = make_runner(name, load_artifact(onnx=tmp_path / "foreign.onnx", value_range=(0.0, 1.0)), "cpu")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        runner.infer(latents_range(0, 0, 8, 8))
    assert runner.health.values >= 8 * 256 and runner.health.out_of_range > 0
    assert any(issubclass(w.category, GanDeployWarning) and "outside the declared value range" in str(w.message) for w in seen)


@pytest.mark.parametrize("name", ONNX_RUNNERS)
def test_batch_invariance_across_many_sizes(name, tiny_onnx):
    """An image does not depend on the batch it is computed in, whatever shapes the runtime compiles for."""
    _available(name)
    runner = make_runner(name, load_artifact(onnx=tiny_onnx), "cpu")
    z = latents_range(5, 0, 40, 8)
    whole = runner.infer(z)
    for b in (1, 2, 5, 16, 17, 33):  # more sizes than openvino keeps static shapes: the dynamic model too
        parts = np.concatenate([runner.infer(z[s:s + b]) for s in range(0, len(z), b)])
        assert np.abs(parts - whole).max() <= runner.tolerance, b


def test_openvino_runs_a_checkpoint_as_its_onnx_export_and_refuses_what_it_cannot_run(tiny_checkpoint, tiny_onnx):
    _available("openvino")
    # a checkpoint goes through the same in-memory export as onnxruntime's: the same images as the exported file
    z = latents_range(3, 0, 5, 8)
    from_checkpoint = make_runner("openvino", load_artifact(tiny_checkpoint), "cpu").infer(z)
    from_file = make_runner("openvino", load_artifact(onnx=tiny_onnx), "cpu").infer(z)
    assert np.abs(from_checkpoint - from_file).max() <= 1e-5
    with pytest.raises(GanDeployError, match="unknown OpenVINO performance hint"):
        make_runner("openvino", load_artifact(onnx=tiny_onnx), "cpu", hint="fastest").activate()
    from gan_deploy.backends.openvino import OpenVinoRunner
    assert OpenVinoRunner.device_reason("cuda") and OpenVinoRunner.device_reason("cpu") is None


def test_openvino_hints_give_the_same_images(tiny_onnx):
    _available("openvino")
    art = load_artifact(onnx=tiny_onnx)
    z = latents_range(1, 0, 37, 8)
    lat = make_runner("openvino", art, "cpu", hint="latency", threads=2).infer(z)
    thr = make_runner("openvino", art, "cpu", hint="throughput", threads=2)
    assert np.abs(thr.infer(z) - lat).max() <= thr.tolerance
    assert "2 threads" in thr.describe()


def test_unavailable_openvino_says_how_to_install(monkeypatch):
    import builtins

    from gan_deploy.backends.openvino import OpenVinoRunner
    real = builtins.__import__

    def no_openvino(name, *a, **k):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    assert "pip install openvino" in OpenVinoRunner.unavailable_reason() and ".[openvino]" in OpenVinoRunner.unavailable_reason()


def test_auto_picks_onnxruntime_on_cpu(tiny_checkpoint, tiny_onnx):
    assert pick_backend("auto", load_artifact(tiny_checkpoint)) == "onnxruntime"
    assert pick_backend("auto", load_artifact(onnx=tiny_onnx)) == "onnxruntime"


def test_eager_refuses_onnx_with_hint(tiny_onnx):
    with pytest.raises(GanDeployError, match="cannot run an ONNX file.*--backend onnxruntime"):
        make_runner("eager", load_artifact(onnx=tiny_onnx))


def test_unknown_backend():
    with pytest.raises(GanDeployError, match="unknown backend: 'fast'"):
        runner_class("fast")


def test_import_is_light():
    """`import gan_deploy` and the CLI's module must not import onnxruntime, tensorrt or torch eagerly."""
    import subprocess
    import sys
    code = ("import sys, gan_deploy, gan_deploy.cli.main, gan_deploy.backends; "
            "bad=[m for m in ('onnxruntime','tensorrt','torch','openvino') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

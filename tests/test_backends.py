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
            "bad=[m for m in ('onnxruntime','tensorrt','torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

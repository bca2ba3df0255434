import json

import numpy as np
import onnx
import pytest
import torch

from gan_deploy.artifacts.checkpoint import read_checkpoint
from gan_deploy.artifacts.load import load_artifact
from gan_deploy.artifacts.onnx import META_CONFIG, META_PARENT_SHA
from gan_deploy.backends import make_runner
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import latents_range
from gan_deploy.export.onnx import onnx_from_checkpoint, onnx_from_factory

EXAMPLE = "examples/pytorch_dcgan_tutorial.py:Generator"


def test_export_is_self_describing_and_dynamic(tiny_checkpoint, tiny_onnx):
    model = onnx.load(tiny_onnx)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META_PARENT_SHA] == read_checkpoint(tiny_checkpoint).sha256
    assert json.loads(meta[META_CONFIG])["latent_dim"] == 8
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 8
    runner = make_runner("onnxruntime", load_artifact(onnx=tiny_onnx))
    for b in (1, 3, 33):
        assert runner.infer(latents_range(0, 0, b, 8)).shape == (b, 1, 16, 16)


def test_export_refuses_when_onnxruntime_disagrees(tiny_checkpoint, tmp_path):
    out = tmp_path / "g.onnx"
    with pytest.raises(GanDeployError, match="disagrees with eager"):
        onnx_from_checkpoint(tiny_checkpoint, out, tolerance=0.0 - 1.0)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_foreign_generator_from_file_factory_and_state_dict(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("tut", "examples/pytorch_dcgan_tutorial.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(1)
    net = mod.Generator(nz=10, ngf=4, nc=3)
    torch.save(net.state_dict(), tmp_path / "netG.pth")
    # the latent size comes from the constructor argument `nz` (the tutorial's module keeps no attribute for it)
    rep = onnx_from_factory(EXAMPLE, tmp_path / "netG.onnx", {"nz": 10, "ngf": 4}, tmp_path / "netG.pth")
    assert rep.spec.latent_rank == 4 and rep.spec.image_shape == (3, 64, 64)
    art = load_artifact(onnx=tmp_path / "netG.onnx")
    assert art.spec.latent_shape == (10, 1, 1)
    z = latents_range(0, 0, 4, 10)
    got = make_runner("auto", art).infer(z)
    with torch.inference_mode():
        ref = net.eval()(torch.from_numpy(z).reshape(4, 10, 1, 1)).numpy()
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("kwargs,weights,message", [
    ({"nz": 10, "ngf": 8}, True, "weights do not fit"),
    ({"bogus": 1}, False, "the factory raised"),
])
def test_foreign_generator_errors(tmp_path, kwargs, weights, message):
    import importlib.util
    spec = importlib.util.spec_from_file_location("tut2", "examples/pytorch_dcgan_tutorial.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.Generator(nz=10, ngf=4).state_dict(), tmp_path / "w.pth")
    with pytest.raises(GanDeployError, match=message):
        onnx_from_factory(EXAMPLE, tmp_path / "x.onnx", kwargs, tmp_path / "w.pth" if weights else None, latent_dim=10)


def test_pickled_whole_model_is_refused(tmp_path):
    # a whole pickled module (not a state dict): loading it would run arbitrary code, so weights_only refuses it
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pth")
    with pytest.raises(GanDeployError, match="could not read weights.*state_dict"):
        onnx_from_factory(EXAMPLE, tmp_path / "x.onnx", {"nz": 10, "ngf": 4}, tmp_path / "whole.pth")


@pytest.mark.parametrize("content,message", [
    (b"garbage bytes", "corrupt or unreadable ONNX"),
    (None, "ONNX file not found"),
])
def test_bad_onnx_files(tmp_path, content, message):
    p = tmp_path / "bad.onnx"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(GanDeployError, match=message):
        load_artifact(onnx=p)


def test_onnx_that_is_not_a_generator(tmp_path):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    onnx.save(m, tmp_path / "relu.onnx")
    with pytest.raises(GanDeployError, match=r"not a generator of the expected shape.*\[N, C, H, W\]"):
        load_artifact(onnx=tmp_path / "relu.onnx")


def test_export_refuses_an_onnx_that_disagrees_with_eager(tmp_path):
    """A real mismatch: the module computes something else while it is being exported, so the ONNX differs
    from eager by 0.01. The check must refuse it and write nothing (replacing the check with `return 0.0`
    fails this test)."""
    import torch

    from gan_deploy.artifacts.spec import GeneratorSpec
    from gan_deploy.export.onnx import onnx_from_module

    class Drifts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(4, 64)

        def forward(self, z):  # [N, 4] -> [N, 1, 8, 8]
            x = torch.tanh(self.fc(z)).reshape(-1, 1, 8, 8)
            return x + 0.01 if torch.onnx.is_in_onnx_export() else x

    out = tmp_path / "drift.onnx"
    with pytest.raises(GanDeployError, match="onnxruntime disagrees with eager PyTorch: max abs err 0.01"):
        onnx_from_module(Drifts(), GeneratorSpec(4, 1, 8, 8), out, {}, tolerance=1e-4)
    assert not out.exists()
    rep = onnx_from_module(Drifts(), GeneratorSpec(4, 1, 8, 8), out, {}, tolerance=0.02)  # within a looser tolerance
    assert 0.009 < rep.max_abs_err < 0.011 and out.exists()


def test_factory_export_also_writes_a_torch_artifact_the_torch_backends_run(tmp_path):
    """export --factory writes netG.safetensors + .json beside the ONNX: eager/compile (fp16, CUDA graphs on a
    GPU) run the user's generator; a changed source file is refused rather than run with stale weights."""
    import shutil

    from gan_deploy.core.errors import StaleArtifact

    src = tmp_path / "tut.py"
    shutil.copy("examples/pytorch_dcgan_tutorial.py", src)
    rep = onnx_from_factory(f"{src}:Generator", tmp_path / "netG.onnx", {"nz": 10, "ngf": 4})
    assert rep.torch_artifact == tmp_path / "netG.safetensors" and rep.torch_artifact.exists()
    assert "--backend eager" in rep.summary()
    art = load_artifact(rep.torch_artifact)
    assert art.kind == "checkpoint" and art.config is None and art.spec.latent_shape == (10, 1, 1)
    assert art.spec.image_shape == (3, 64, 64)
    z = latents_range(5, 0, 3, 10)
    eager = make_runner("eager", art, "cpu").infer(z)
    ort = make_runner("onnxruntime", load_artifact(onnx=tmp_path / "netG.onnx"), "cpu").infer(z)
    assert np.abs(eager - ort).max() < 1e-4
    # onnxruntime can also run the torch artifact (exported in memory through the factory)
    assert np.abs(make_runner("onnxruntime", art, "cpu").infer(z) - eager).max() < 1e-4
    src.write_text(src.read_text() + "\n# edited\n")
    with pytest.raises(StaleArtifact, match="source code changed since it was exported"):
        make_runner("eager", load_artifact(rep.torch_artifact), "cpu").infer(z)


def test_factory_that_exits_is_one_line(tmp_path, cli):
    (tmp_path / "bad.py").write_text("import sys\nsys.exit(3)\n")
    r = cli("export", "--factory", f"{tmp_path / 'bad.py'}:G", "--latent-dim", 4, "-o", tmp_path / "x.onnx")
    assert r.exit_code == 2 and "could not import the factory module" in r.output and "SystemExit" in r.output

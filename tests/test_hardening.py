"""What the hardening changes do when the input is odd but usable: a fixed-batch ONNX runs, external data loads,
NaN and a wrong value range are reported, triton-repo replaces a model atomically, the memory estimate is sane."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.errors import GanDeployError, GanDeployWarning
from gan_deploy.core.latents import latents_range


def _fixed_batch_copy(src: Path, dst: Path, batch: int) -> Path:
    """The exported tiny ONNX with its batch axis pinned to `batch` (the graph itself is batch-agnostic)."""
    m = onnx.load(src)
    for vi in (m.graph.input[0], m.graph.output[0]):
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.Clear()
        d0.dim_value = batch
    onnx.save(m, dst)
    return dst


@pytest.mark.parametrize("batch", [1, 3])
def test_fixed_batch_onnx_runs_every_batch_size_in_chunks(tiny_onnx, tmp_path, batch):
    fixed = load_artifact(onnx=_fixed_batch_copy(tiny_onnx, tmp_path / "f.onnx", batch))
    assert fixed.spec.fixed_batch == batch
    dynamic = make_runner("onnxruntime", load_artifact(onnx=tiny_onnx))
    runner = make_runner("onnxruntime", fixed)
    for n in (1, 2, 4, 7):
        z = latents_range(0, 0, n, 8)
        np.testing.assert_allclose(runner.infer(z), dynamic.infer(z), atol=1e-6)
    assert f"fixed batch {batch}" in runner.describe()


def test_generate_and_bench_accept_a_fixed_batch_model(cli, tiny_onnx, tmp_path):
    f = _fixed_batch_copy(tiny_onnx, tmp_path / "f.onnx", 1)
    r = cli("generate", "--onnx", f, "-n", 9, "-b", 4, "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "s").glob("*.png"))) == 9
    r = cli("bench", "--onnx", f, "--batch-sizes", "1,4", "--iters", 3, "--warmup", 0, "--min-time", 0, "--rounds", 1)
    assert r.exit_code == 0, r.output


def test_external_data_model_loads_and_matches(tiny_onnx, tmp_path):
    m = onnx.load(tiny_onnx)
    onnx.save(m, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
              size_threshold=0)
    art = load_artifact(onnx=tmp_path / "ext.onnx")
    z = latents_range(0, 0, 5, 8)
    np.testing.assert_allclose(make_runner("onnxruntime", art).infer(z),
                               make_runner("onnxruntime", load_artifact(onnx=tiny_onnx)).infer(z), atol=1e-6)


def _with_meta(src: Path, dst: Path, **meta: str) -> Path:
    m = onnx.load(src)
    for k, v in meta.items():
        for p in m.metadata_props:
            if p.key == k:
                p.value = v
                break
        else:
            e = m.metadata_props.add()
            e.key, e.value = k, v
    onnx.save(m, dst)
    return dst


def test_a_value_range_that_does_not_fit_the_images_is_reported_once(tiny_onnx, tmp_path):
    # [0, 255] declared on a tanh model: every value is in range, and every pixel comes out black
    art = load_artifact(onnx=_with_meta(tiny_onnx, tmp_path / "r.onnx", **{"gan_deploy.value_range": "[0, 255]",
                                                                          "gan_deploy.generator": '{"latent_dim": 8, "image_size": 16, "width": 8, "value_range": [0, 255]}'}))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        runner = make_runner("onnxruntime", art)
        runner.infer(latents_range(0, 0, 4, 8))
        runner.infer(latents_range(0, 4, 4, 8))
    ours = [w for w in seen if issubclass(w.category, GanDeployWarning)]
    assert len(ours) == 1 and "nearly black" in str(ours[0].message) and "--value-range" in str(ours[0].message)


def test_out_of_range_and_nan_values_are_counted():
    from gan_deploy.backends.base import OutputHealth

    h = OutputHealth((0.0, 1.0), "test")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        h.observe(np.full((10, 1, 4, 4), 0.5, np.float32))  # clean: no warning
        assert not seen
        x = np.full((10, 1, 4, 4), 0.5, np.float32)
        x[0, 0, :2, :] = np.nan
        x[1] = -1.0  # a tanh model declared 0,1
        h.observe(x)
        h.observe(x)
    assert h.nonfinite == 16 and h.out_of_range == 32
    assert len(seen) == 1
    msg = str(seen[0].message)
    assert "NaN/Inf" in msg and "outside the declared value range [0, 1]" in msg


def test_cli_prints_a_warning_as_one_line(cli, tmp_path):
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    w = nh.from_array(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32), "W")
    shape = nh.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "shape")
    g = h.make_graph([h.make_node("MatMul", ["z", "W"], ["a"]), h.make_node("Log", ["a"], ["l"]),
                      h.make_node("Reshape", ["l", "shape"], ["image"])], "g",
                     [h.make_tensor_value_info("z", T.FLOAT, ["N", 8])], [h.make_tensor_value_info("image", T.FLOAT, ["N", 1, 8, 8])],
                     [w, shape])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "nan.onnx")
    r = cli("generate", "--onnx", tmp_path / "nan.onnx", "-n", 4, "--out", tmp_path / "s", "--allow-bad-images")
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if "NaN" in x]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "GanDeployWarning" not in r.output


def test_triton_overwrite_keeps_the_old_model_when_the_new_one_fails(tiny_checkpoint, tiny_onnx, tmp_path, monkeypatch):
    from gan_deploy.export import onnx as export_onnx
    from gan_deploy.serve.triton import triton_repo_from_artifacts

    repo = tmp_path / "repo"
    triton_repo_from_artifacts(repo, load_artifact(onnx=tiny_onnx))
    (repo / "gan_generator" / "2").mkdir()  # a stale version folder
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}

    def fails(*a, **k):
        raise GanDeployError("onnxruntime disagrees with eager PyTorch", "simulated")
    monkeypatch.setattr(export_onnx, "onnx_from_checkpoint", fails)
    with pytest.raises(GanDeployError, match="simulated"):
        triton_repo_from_artifacts(repo, load_artifact(tiny_checkpoint), overwrite=True)
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before and (repo / "gan_generator" / "2").is_dir()
    assert sorted(p.name for p in repo.iterdir()) == ["gan_generator"]  # no staging folder left

    monkeypatch.undo()
    triton_repo_from_artifacts(repo, load_artifact(tiny_checkpoint), overwrite=True)
    assert not (repo / "gan_generator" / "2").exists()  # replaced whole: the stale version is gone
    assert (repo / "gan_generator" / "1" / "model.onnx").is_file() and sorted(p.name for p in repo.iterdir()) == ["gan_generator"]


def test_memory_estimate_and_refusal(tiny_checkpoint, tiny_onnx, monkeypatch):
    from gan_deploy.backends import memory

    ck, ox = load_artifact(tiny_checkpoint), load_artifact(onnx=tiny_onnx)
    image = 4 * 16 * 16
    for art in (ck, ox):
        act = memory.activation_bytes_per_image(art)
        assert image <= act < 200 * image
    assert memory.available_bytes("cpu") > 0
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 100 << 20)
    memory.check_batch_fits(ck, 256)
    with pytest.raises(GanDeployError, match=r"needs more memory than is free.*--batch-size <= [\d,]+"):
        memory.check_batch_fits(ck, 10**7)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": None)
    assert memory.check_batch_fits(ck, 10**9) == 0  # unknown free memory: nothing refused


@pytest.mark.parametrize("cfg", [dict(), dict(arch="mlp"), dict(image_size=64, channels=3, width=16), dict(image_size=8, latent_dim=3),
                                 dict(arch="mlp", image_size=20, width=3)])
def test_parameter_estimate_is_exact(cfg):
    from gan_deploy.nets.config import GeneratorConfig, estimated_parameters
    from gan_deploy.nets.networks import build_generator, count_parameters

    c = GeneratorConfig(**cfg)
    assert estimated_parameters(c) == count_parameters(build_generator(c))


def test_top_level_help_shows_every_summary_whole(cli):
    r = cli("--help")
    assert r.exit_code == 0
    train = next(line for line in r.output.splitlines() if line.strip().startswith("train "))
    assert "..." not in train and "Train a GAN generator" in train


def test_export_writes_nothing_when_out_is_refused(cli, tiny_checkpoint, tmp_path):
    shutil.copy(tiny_checkpoint, tmp_path / "g.safetensors")
    shutil.copy(tiny_checkpoint.with_suffix(".json"), tmp_path / "g.json")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = cli("export", "-c", tmp_path / "g.safetensors", "-o", tmp_path / "g.safetensors")
    assert r.exit_code == 2 and sorted(p.name for p in tmp_path.iterdir()) == before
    assert load_artifact(tmp_path / "g.safetensors").torch_module() is not None  # the weights are intact


def test_a_factory_checkpoint_exports_again(tmp_path):
    """`export -c` of the torch artifact `export --factory` wrote (no generator config, a factory instead)."""
    from gan_deploy.export.onnx import onnx_from_checkpoint, onnx_from_factory

    (tmp_path / "gen.py").write_text("import torch\nclass G(torch.nn.Module):\n    latent_dim = 4\n"
                                     "    def __init__(self):\n        super().__init__(); self.fc = torch.nn.Linear(4, 64)\n"
                                     "    def forward(self, z):\n        return torch.tanh(self.fc(z)).reshape(-1, 1, 8, 8)\n")
    rep = onnx_from_factory(f"{tmp_path / 'gen.py'}:G", tmp_path / "a.onnx")
    again = onnx_from_checkpoint(rep.torch_artifact, tmp_path / "b.onnx")
    assert again.spec.image_shape == (1, 8, 8) and load_artifact(onnx=tmp_path / "b.onnx").spec.latent_dim == 4


def test_resource_bounds_name_the_machine(monkeypatch):
    """Every resource bound comes from core.hardware's two facts (cores, available memory) and its message says so."""
    from gan_deploy.core import hardware
    from gan_deploy.generate import options as gen_options
    from gan_deploy.generate.options import WRITER_PROCESS_BYTES, GenerateOptions, ray_workers_bound, writer_bound

    assert hardware.cpu_cores() >= 1 and hardware.host_available_bytes() > 0
    assert writer_bound("thread", cores=2) == (32, "16 writer threads per core on this 2-core machine")
    assert writer_bound("process", cores=2, avail=64 << 30)[0] == 8
    top, why = writer_bound("process", cores=64, avail=1 << 30)  # memory binds first: 0.7 GiB / 64 MiB
    assert top == int((1 << 30) * hardware.USABLE) // WRITER_PROCESS_BYTES and "1.0 GiB available memory" in why
    assert writer_bound("auto", cores=2)[0] == 32 and writer_bound("auto", cores=4, avail=64 << 30)[0] == 16
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_workers_bound(cores=2, avail=64 << 30)[0] == 8 and ray_workers_bound(cores=64, avail=2 << 30)[0] == 2
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert ray_workers_bound() is None  # a cluster: its own CPUs bound the workers when it is reached
    monkeypatch.setattr(hardware, "cpu_cores", lambda: 3)
    monkeypatch.setattr(hardware, "host_available_bytes", lambda: 64 << 30)
    with pytest.raises(GanDeployError, match=r"--writers 100,000; expected at most 12 \(4 writer processes per core on this 3-core machine\)"):
        GenerateOptions(writers=100000, writer_kind="process")
    GenerateOptions(writers=12, writer_kind="process")  # the bound itself is allowed
    with pytest.raises(GanDeployError, match=r"at most 48 \(16 writer threads per core"):
        GenerateOptions(writers=49, writer_kind="thread")
    with pytest.raises(GanDeployError, match="image indices are 64-bit"):
        GenerateOptions(n=gen_options.MAX_IMAGES + 1)
    GenerateOptions(n=gen_options.MAX_IMAGES)  # nothing is allocated for the n asked (the bitset is paged)
    monkeypatch.setenv("GAN_DEPLOY_THREADS", "13")
    with pytest.raises(GanDeployError, match=r"GAN_DEPLOY_THREADS 13; expected at most 12 \(4 threads per core on this 3-core machine\)"):
        GenerateOptions()
    monkeypatch.setenv("GAN_DEPLOY_THREADS", "12")
    GenerateOptions()


def test_bench_threads_and_quantize_samples_are_bounded(monkeypatch):
    from gan_deploy.bench.run import BenchOptions
    from gan_deploy.core import hardware
    from gan_deploy.precision.options import MAX_QUANTIZE_SAMPLES, QuantizeOptions

    monkeypatch.setattr(hardware, "cpu_cores", lambda: 2)
    BenchOptions(threads=8)
    with pytest.raises(GanDeployError, match=r"--threads 9; expected at most 8 \(4 threads per core on this 2-core machine\)"):
        BenchOptions(threads=9)
    QuantizeOptions(calib_samples=MAX_QUANTIZE_SAMPLES, gate_samples=MAX_QUANTIZE_SAMPLES, sensitivity_samples=MAX_QUANTIZE_SAMPLES)
    for field in ("calib_samples", "gate_samples", "sensitivity_samples"):
        with pytest.raises(GanDeployError, match="too many samples.*at most 1,000,000"):
            QuantizeOptions(**{field: MAX_QUANTIZE_SAMPLES + 1})


def test_train_batch_is_checked_against_memory(tmp_path, monkeypatch):
    """train --batch-size: G's and D's activations (kept for the backward pass) per image against the free memory,
    before the run folder is made; the estimate does not change the run (no RNG drawn, batch norm untouched)."""
    from gan_deploy.core import hardware
    from gan_deploy.train import TrainOptions, train

    tiny = dict(width=8, latent_dim=8, image_size=16, batch_size=16, log_every=5, progress=False, eval_every=0, steps=2,
                sample_every=0, checkpoint_every=0)
    monkeypatch.setattr(hardware, "host_available_bytes", lambda: 1 << 20)  # 1 MiB free
    with pytest.raises(GanDeployError, match=r"--batch-size 16 needs more memory than is free.*expected --batch-size <= \d"):
        train(TrainOptions(out=str(tmp_path / "run"), **tiny))
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(hardware, "host_available_bytes", lambda: 64 << 30)
    train(TrainOptions(out=str(tmp_path / "a"), deterministic=True, **tiny))
    from gan_deploy.train import loop

    monkeypatch.setattr(loop, "_check_batch_memory", lambda *a: None)  # the same run without the estimate
    train(TrainOptions(out=str(tmp_path / "b"), deterministic=True, **tiny))
    weights = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert weights and all((tmp_path / "a" / w).read_bytes() == (tmp_path / "b" / w).read_bytes() for w in weights)

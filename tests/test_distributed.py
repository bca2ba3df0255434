"""`generate --executor ray`: Ray Data workers write the same files, byte for byte, as the single-process path,
for every sink (folder, tar shards, array).

One local Ray instance with 2 CPUs (so 2 workers) for the whole module."""
from __future__ import annotations

import filecmp

import pytest

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.errors import GanDeployError
from gan_deploy.generate.pipeline import GenerateOptions, generate

pytestmark = pytest.mark.slow  # every test here starts Ray

N, BATCH, SEED = 29, 6, 3  # 5 batches: uneven over 2 workers, last batch short


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[serve]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install -e '.[serve]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint), "cpu"), GenerateOptions(n=N, out=out, batch_size=BATCH, seed=SEED, progress=False))
    return out


def _same_folder(a, b) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors and len(match) == len(names)


def test_ray_workers_write_the_single_process_files(ray_local, tiny_checkpoint, single, tmp_path):
    from gan_deploy.generate.pipeline import GenerateOptions
    from gan_deploy.generate.ray_executor import generate_ray

    rep = generate_ray(load_artifact(tiny_checkpoint), GenerateOptions(backend="onnxruntime", device="cpu", n=N, out=tmp_path / "ray", batch_size=BATCH, seed=SEED, progress=False, ray_workers=2))
    assert rep.n_written == N and rep.writers == 2 and "2 Ray worker(s)" in rep.backend_detail
    _same_folder(single, tmp_path / "ray")  # every image and the manifest


def test_ray_shards_union_is_the_single_run(ray_local, tiny_checkpoint, single, tmp_path):
    from gan_deploy.generate.pipeline import GenerateOptions
    from gan_deploy.generate.ray_executor import generate_ray

    art = load_artifact(tiny_checkpoint)
    seen = set()
    for k in range(3):  # the local executor's partition (by image index, not by batch): shard k is [29k/3, 29(k+1)/3)
        rep = generate_ray(art, GenerateOptions(backend="onnxruntime", device="cpu", n=N, out=tmp_path / f"s{k}", batch_size=BATCH, seed=SEED, shard=(k, 3), progress=False, ray_workers=2))
        assert (rep.first_index, rep.n_written) == (k * N // 3, (k + 1) * N // 3 - k * N // 3)
        images = {p.name for p in (tmp_path / f"s{k}").glob("*.png")}
        assert len(images) == rep.n_written and not images & seen
        seen |= images
        for name in images:
            assert (tmp_path / f"s{k}" / name).read_bytes() == (single / name).read_bytes()
    assert seen == {p.name for p in single.glob("*.png")}
    # more shards than images: an empty shard writes nothing and says so (Ray is not even asked)
    rep = generate_ray(art, GenerateOptions(backend="onnxruntime", device="cpu", n=N, out=tmp_path / "e", batch_size=BATCH, seed=SEED, shard=(0, N + 1), progress=False))
    assert rep.empty and rep.n_written == 0 and not (tmp_path / "e").exists()


def test_cli_executor_ray(ray_local, cli, tiny_checkpoint, single, tmp_path):
    r = cli("generate", "-c", tiny_checkpoint, "-n", N, "-b", BATCH, "--seed", SEED, "--backend", "onnxruntime",
            "--device", "cpu", "--executor", "ray", "--ray-workers", 2, "--out", tmp_path / "cli", "--grid", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    assert f"wrote {N} png files" in r.output and (tmp_path / "g.png").exists()
    _same_folder(single, tmp_path / "cli")


def test_worker_with_another_model_file_is_refused(ray_local, tiny_checkpoint, tmp_path):
    from gan_deploy.generate.pipeline import GenerateOptions
    from gan_deploy.generate.ray_executor import generate_ray

    art = load_artifact(tiny_checkpoint)
    art.sha256 = "0" * 64  # as if the driver's file differed from the one the workers see at that path
    with pytest.raises(GanDeployError, match="differs from the driver's"):
        generate_ray(art, GenerateOptions(backend="onnxruntime", device="cpu", n=4, out=tmp_path / "x", batch_size=2, progress=False, ray_workers=1))


def test_bad_arguments_fail_before_ray_starts(tiny_checkpoint, tmp_path):
    from gan_deploy.generate.pipeline import GenerateOptions
    from gan_deploy.generate.ray_executor import generate_ray

    art = load_artifact(tiny_checkpoint)
    with pytest.raises(GanDeployError, match="bad batch size"):
        generate_ray(art, GenerateOptions(backend="onnxruntime", device="cpu", n=4, out=tmp_path / "a", batch_size=0))
    with pytest.raises(GanDeployError, match="unknown backend"):
        generate_ray(art, GenerateOptions(backend="nope", device="cpu", n=4, out=tmp_path / "b"))
    with pytest.raises(GanDeployError, match="Ray workers"):
        generate_ray(art, GenerateOptions(backend="onnxruntime", device="cpu", n=4, out=tmp_path / "c", ray_workers=0))


@pytest.mark.parametrize("sink", ["tar", "array"])
def test_ray_other_sinks_are_byte_identical(ray_local, tiny_checkpoint, tmp_path, sink):
    from gan_deploy.generate.ray_executor import generate_ray

    art = load_artifact(tiny_checkpoint)
    opts = dict(backend="onnxruntime", device="cpu", n=N, batch_size=BATCH, seed=SEED, progress=False, sink=sink,
                sink_options={"shard_size": 7} if sink == "tar" else {})
    generate(make_runner("onnxruntime", art, "cpu"), GenerateOptions(out=tmp_path / "one", **opts))
    rep = generate_ray(art, GenerateOptions(out=tmp_path / "ray", ray_workers=2, **opts))
    assert rep.n_written == N and rep.sink == sink
    _same_folder(tmp_path / "one", tmp_path / "ray")  # tar shards (appended by the driver in order) or the array, manifest, record


def test_ray_workers_run_openvino(ray_local, tiny_onnx, tmp_path):
    from gan_deploy.backends import unavailable_reason
    from gan_deploy.generate.ray_executor import generate_ray

    if unavailable_reason("openvino"):
        pytest.skip("openvino is not installed")
    art = load_artifact(onnx=tiny_onnx)
    generate(make_runner("openvino", art, "cpu"), GenerateOptions(n=N, out=tmp_path / "one", batch_size=BATCH, seed=SEED, progress=False))
    rep = generate_ray(art, GenerateOptions(backend="openvino", device="cpu", n=N, out=tmp_path / "ray", batch_size=BATCH, seed=SEED,
                                            progress=False, ray_workers=2))
    assert rep.n_written == N and "openvino" in rep.backend_detail
    _same_folder(tmp_path / "one", tmp_path / "ray")


def test_a_probe_the_driver_cannot_run_is_run_on_a_worker(ray_local, tmp_path, monkeypatch):
    """The backend runs on the workers only (e.g. TensorRT): one worker computes the probe batch, and a model whose
    images are NaN is refused before the folder is made."""
    import numpy as np
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from gan_deploy.generate import ray_executor

    w = nh.from_array(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32), "W")
    shape = nh.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "shape")
    g = h.make_graph([h.make_node("MatMul", ["z", "W"], ["a"]), h.make_node("Log", ["a"], ["t"]),
                      h.make_node("Reshape", ["t", "shape"], ["image"])], "g",
                     [h.make_tensor_value_info("z", T.FLOAT, ["N", 8])], [h.make_tensor_value_info("image", T.FLOAT, ["N", 1, 8, 8])],
                     [w, shape])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "nan.onnx")
    monkeypatch.setattr(ray_executor, "_probe_here", lambda *a: False)
    opts = GenerateOptions(backend="onnxruntime", device="cpu", n=8, out=tmp_path / "out", progress=False, ray_workers=1)
    with pytest.raises(GanDeployError, match="values NaN/Inf"):
        ray_executor.generate_ray(load_artifact(onnx=tmp_path / "nan.onnx"), opts)
    assert not (tmp_path / "out").exists()

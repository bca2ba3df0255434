"""`triton-repo`: every config.pbtxt parses with Triton's own ModelConfig schema (tritonclient) and says what
the artifact is: names, types, shapes without the batch axis, max_batch_size, dynamic batching."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import sha256_file
from gan_deploy.serve.triton import parse_config, triton_repo_from_artifacts

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                         reason="tritonclient is not installed: pip install -e '.[triton]' (from the clone)")


def _config(folder):
    return parse_config((folder / "config.pbtxt").read_text())


def _check_io(cfg, spec) -> None:
    assert len(cfg.input) == 1 and len(cfg.output) == 1
    assert cfg.input[0].name == spec.input_name and cfg.output[0].name == spec.output_name
    assert cfg.input[0].data_type == pb.TYPE_FP32 and cfg.output[0].data_type == pb.TYPE_FP32
    assert list(cfg.input[0].dims) == list(spec.latent_shape)  # no batch axis: max_batch_size > 0 adds it
    assert list(cfg.output[0].dims) == [spec.channels, spec.height, spec.width]


def _fake_engine(tmp_path, spec, profile=(1, 32, 128)):
    """An engine file and its sidecar as `build-engine` writes them (the plan's bytes are only copied here)."""
    from gan_deploy.artifacts.engine import RuntimeInfo, make_sidecar, sidecar_path
    engine = tmp_path / "tiny.fp16.engine"
    engine.write_bytes(np.random.default_rng(0).bytes(4096))
    side = make_sidecar(engine_sha256=sha256_file(engine), precision="fp16", runtime=RuntimeInfo("10.13.0.35", "NVIDIA H100", "9.0"),
                        profile=profile, onnx_sha256="a" * 64, source={"kind": "onnx", "path": "x.onnx", "sha256": "b" * 64},
                        spec=spec, generator=None, workspace_mib=1024, rebuild="gan-deploy build-engine --fp16")
    sidecar_path(engine).write_text(json.dumps(side))
    return engine


def test_onnx_model(tiny_onnx, tmp_path):
    art = load_artifact(onnx=tiny_onnx)
    rep = triton_repo_from_artifacts(tmp_path / "repo", art, name="tiny", max_batch_size=128, preferred=[32, 128],
                                     max_queue_delay_us=250, instance_kind="cpu", instances=2)
    folder = tmp_path / "repo" / "tiny"
    cfg = _config(folder)
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == ("tiny", "onnxruntime_onnx", "onnxruntime", 128)
    _check_io(cfg, art.spec)
    assert list(cfg.dynamic_batching.preferred_batch_size) == [32, 128] and cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU and cfg.instance_group[0].count == 2
    assert (folder / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    prov = json.loads((folder / "gan_deploy.json").read_text())
    assert prov["source"]["sha256"] == art.sha256 and prov["value_range"] == [-1.0, 1.0]
    assert [m.name for m in rep.models] == ["tiny"] and "tritonserver --model-repository" in rep.summary()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["tiny"]


def test_plan_and_onnx(tiny_onnx, tmp_path):
    art = load_artifact(onnx=tiny_onnx)
    engine = _fake_engine(tmp_path, art.spec, profile=(1, 32, 128))
    triton_repo_from_artifacts(tmp_path / "repo", art, engine, name="g", max_batch_size=64)
    onnx_cfg, plan_cfg = _config(tmp_path / "repo" / "g"), _config(tmp_path / "repo" / "g_trt")
    assert onnx_cfg.max_batch_size == 64 and list(onnx_cfg.dynamic_batching.preferred_batch_size) == [64]
    assert (plan_cfg.name, plan_cfg.platform, plan_cfg.backend) == ("g_trt", "tensorrt_plan", "tensorrt")
    assert plan_cfg.max_batch_size == 128  # the engine profile's max, not --max-batch-size
    assert list(plan_cfg.dynamic_batching.preferred_batch_size) == [32, 128]  # profile opt and max
    assert plan_cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    _check_io(plan_cfg, art.spec)
    assert (tmp_path / "repo" / "g_trt" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    prov = json.loads((tmp_path / "repo" / "g_trt" / "gan_deploy.json").read_text())
    assert prov["tensorrt_version"] == "10.13.0.35" and prov["profile"] == {"min": 1, "opt": 32, "max": 128}


def test_checkpoint_is_exported_into_the_repo(tiny_checkpoint, tmp_path):
    art = load_artifact(tiny_checkpoint)
    triton_repo_from_artifacts(tmp_path / "repo", art)
    model = tmp_path / "repo" / "gan_generator" / "1" / "model.onnx"
    exported = load_artifact(onnx=model)
    assert exported.spec == art.spec and exported.metadata["gan_deploy.parent_sha256"] == art.sha256
    cfg = _config(tmp_path / "repo" / "gan_generator")
    assert cfg.max_batch_size == 256 and cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    _check_io(cfg, art.spec)


def _onnx_rank4(path, batch):
    """A foreign-style generator taking [N, Z, 1, 1] (DCGAN's classic input), N dynamic or fixed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 4, 4)).astype(np.float32), "w")
    z = helper.make_tensor_value_info("latent", TensorProto.FLOAT, [batch, 4, 1, 1])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 1, 4, 4])
    g = helper.make_graph([helper.make_node("ConvTranspose", ["latent", "w"], ["t"]), helper.make_node("Tanh", ["t"], ["out"])],
                          "g", [z], [y], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_rank4_latent_dims(tmp_path):
    art = load_artifact(onnx=_onnx_rank4(tmp_path / "r4.onnx", "N"))
    triton_repo_from_artifacts(tmp_path / "repo", art, name="r4")
    cfg = _config(tmp_path / "repo" / "r4")
    assert list(cfg.input[0].dims) == [4, 1, 1] and cfg.input[0].name == "latent" and list(cfg.output[0].dims) == [1, 4, 4]


def test_refusals(tiny_onnx, tiny_checkpoint, tmp_path):
    art = load_artifact(onnx=tiny_onnx)
    triton_repo_from_artifacts(tmp_path / "repo", art)
    with pytest.raises(GanDeployError, match="already exists.*--overwrite"):
        triton_repo_from_artifacts(tmp_path / "repo", art)
    (tmp_path / "repo" / "gan_generator" / "2").mkdir()  # a stale version must not survive a rewrite
    triton_repo_from_artifacts(tmp_path / "repo", art, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "repo" / "gan_generator").iterdir()) == ["1", "config.pbtxt", "gan_deploy.json"]
    with pytest.raises(GanDeployError, match="fixed batch size"):
        triton_repo_from_artifacts(tmp_path / "r2", load_artifact(onnx=_onnx_rank4(tmp_path / "fixed.onnx", 1)))
    with pytest.raises(GanDeployError, match="min batch 1"):
        triton_repo_from_artifacts(tmp_path / "r3", art, _fake_engine(tmp_path, art.spec, profile=(2, 32, 128)))
    other = load_artifact(onnx=_onnx_rank4(tmp_path / "other.onnx", "N"))
    with pytest.raises(GanDeployError, match="different generators"):
        triton_repo_from_artifacts(tmp_path / "r4", art, _fake_engine(tmp_path, other.spec))
    engine = _fake_engine(tmp_path, art.spec)
    engine.write_bytes(b"tampered")
    with pytest.raises(GanDeployError, match="does not match its sidecar"):
        triton_repo_from_artifacts(tmp_path / "r5", None, engine)
    with pytest.raises(GanDeployError, match="preferred batch size"):
        triton_repo_from_artifacts(tmp_path / "r6", art, max_batch_size=8, preferred=[16])
    with pytest.raises(GanDeployError, match="bad model name"):
        triton_repo_from_artifacts(tmp_path / "r7", art, name="../x")
    assert not any((tmp_path / f"r{k}").exists() for k in range(2, 8))  # refused before writing anything


def test_cli(cli, tiny_onnx, tmp_path):
    r = cli("triton-repo", "--onnx", tiny_onnx, "--out", tmp_path / "repo", "--max-batch-size", 32, "--instance-kind", "cpu")
    assert r.exit_code == 0, r.output
    assert "gan_generator" in r.output and "onnxruntime_onnx" in r.output
    assert _config(tmp_path / "repo" / "gan_generator").max_batch_size == 32
    r = cli("triton-repo", "--onnx", tiny_onnx, "--out", tmp_path / "repo")
    assert r.exit_code == 2 and r.output.startswith("Error: model folder already exists")
    r = cli("triton-repo", "--engine", tmp_path / "missing.engine", "--out", tmp_path / "r2")
    assert r.exit_code == 2 and "engine file not found" in r.output

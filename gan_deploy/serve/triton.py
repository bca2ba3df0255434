"""`gan-deploy triton-repo`: a model repository for NVIDIA Triton Inference Server.

Layout (Triton's: one folder per model, numbered version folders, a config.pbtxt each):

    <repo>/<name>/config.pbtxt          platform "onnxruntime_onnx", max_batch_size from --max-batch-size
    <repo>/<name>/1/model.onnx          the ONNX generator (exported and verified here from a checkpoint)
    <repo>/<name>/gan_deploy.json       provenance: value range, sha256s (Triton ignores extra files)
    <repo>/<name>_trt/config.pbtxt      platform "tensorrt_plan", max_batch_size = the engine profile's max
    <repo>/<name>_trt/1/model.plan      the TensorRT engine, when --engine is given
    <repo>/<name>_trt/gan_deploy.json

Input/output names, types and shapes are read from the artifact (ONNX graph, or the engine's sidecar JSON
written by `gan-deploy build-engine`, see `gan_deploy.artifacts.engine`); dims exclude the batch axis, which
Triton adds because max_batch_size > 0. Each config.pbtxt is written in protobuf text format for
Triton's `ModelConfig` message; when `tritonclient` is installed it is parsed back with Triton's own schema
before anything is written (the tests always do this).

The plan runs only on the TensorRT version and GPU model it was built with: serve it with the Triton
container whose TensorRT version matches `tensorrt_version` in gan_deploy.json (NVIDIA's support matrix).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.onnx import require_dynamic_batch
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import TMP_PREFIX, atomic_write_bytes, atomic_write_text, current_umask, sha256_file
from gan_deploy.core.outputs import check_writable_folder, refuse_inputs_inside
from gan_deploy.export.onnx import onnx_bytes_of

INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
DEFAULT_NAME = "gan_generator"


@dataclass
class TritonModel:
    name: str
    platform: str
    folder: Path
    max_batch_size: int
    preferred_batch_sizes: list[int]
    config_text: str


@dataclass
class TritonRepoReport:
    repo: Path
    models: list[TritonModel] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote Triton model repository {self.repo}:"]
        for m in self.models:
            lines.append(f"  {m.name:<20} {m.platform:<17} max_batch_size {m.max_batch_size:<5} "
                         f"preferred {m.preferred_batch_sizes}  ({m.folder})")
        lines.append(f"serve it with: docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 "
                     f"-v {self.repo.resolve()}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 "
                     f"tritonserver --model-repository=/models")
        return "\n".join(lines)


def _dims(values: tuple[int, ...] | list[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def config_pbtxt(name: str, platform: str, backend: str, spec: GeneratorSpec, max_batch_size: int,
                 preferred: list[int], max_queue_delay_us: int, kind: str, count: int) -> str:
    """Triton's ModelConfig in protobuf text format. Dims exclude the batch axis (max_batch_size > 0)."""
    pref = f"\n  preferred_batch_size: {_dims(preferred)}" if preferred else ""
    return f'''name: "{name}"
platform: "{platform}"
backend: "{backend}"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{spec.input_name}"
    data_type: TYPE_FP32
    dims: {_dims(spec.latent_shape)}
  }}
]
output [
  {{
    name: "{spec.output_name}"
    data_type: TYPE_FP32
    dims: {_dims(spec.image_shape)}
  }}
]
dynamic_batching {{{pref}
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: {count}
    kind: {kind}
  }}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
'''


def parse_config(text: str):
    """Parse config.pbtxt text with Triton's own schema (tritonclient); ImportError when it is not installed."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _validate(text: str, where: str) -> None:
    try:
        parse_config(text)
    except ImportError:
        return  # optional self-check: `pip install -e ".[triton]"` (from the clone) enables it
    except Exception as e:  # text_format.ParseError: a bug here, never the user's input
        raise GanDeployError("generated config.pbtxt does not parse as Triton's ModelConfig", f"{where}: {e}", hint="please report this") from None


def _check_preferred(preferred: list[int], max_batch_size: int, model: str) -> list[int]:
    bad = [p for p in preferred if not 1 <= p <= max_batch_size]
    if bad:
        raise GanDeployError("preferred batch size out of range", f"{bad} for {model}", expected=f"1 <= size <= max_batch_size {max_batch_size}")
    return sorted(set(preferred))


def _check_model_dir(folder: Path, overwrite: bool) -> None:
    """Before anything is built: the model's folder is new, empty, or may be replaced (--overwrite)."""
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise GanDeployError("model path in the repository is a file", str(folder), expected="a folder", hint="choose another --name or --out")
        if any(folder.iterdir()) and not overwrite:
            raise GanDeployError("model folder already exists in the repository", str(folder), expected="a new or empty folder", hint="pass --overwrite to replace it, or choose another --name")


def _swap_in(staged: Path, folder: Path) -> None:
    """Replace `folder` by the complete `staged` one: two renames, the old folder removed only once the new one
    is in place (a stale version folder or model file never survives beside the new one; a failure keeps the old)."""
    old = None
    if folder.exists():
        old = folder.with_name(f"{TMP_PREFIX}old-{folder.name}-{os.getpid()}")
        os.replace(folder, old)
    try:
        os.replace(staged, folder)
    except BaseException:
        if old is not None:
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def triton_repo_from_artifacts(out: str | Path, artifact: Artifact | None = None, engine: str | Path | None = None,
                               name: str = DEFAULT_NAME, max_batch_size: int = 256, preferred: list[int] | None = None,
                               max_queue_delay_us: int = 500, instance_kind: str = "gpu", instances: int = 1,
                               overwrite: bool = False, opset: int | None = None) -> TritonRepoReport:
    """Write `<out>/<name>` (ONNX, from `artifact`) and/or `<out>/<name>_trt` (TensorRT plan, from `engine`)."""
    if artifact is None and engine is None:
        raise GanDeployError("nothing to put in the repository", None, expected="a checkpoint, an ONNX file or an engine")
    if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
        raise GanDeployError("bad model name", repr(name), expected="letters, digits, _ - . (Triton uses it as a folder name)")
    if max_batch_size < 1:
        raise GanDeployError("bad max batch size", max_batch_size, expected=">= 1")
    if instance_kind not in INSTANCE_KINDS:
        raise GanDeployError("bad instance kind", repr(instance_kind), expected="gpu or cpu")
    if instances < 1 or max_queue_delay_us < 0:
        raise GanDeployError("bad instance count or queue delay", f"{instances}, {max_queue_delay_us}", expected="count >= 1, delay >= 0")
    repo = Path(out)
    if repo.exists() and not repo.is_dir():
        raise GanDeployError("repository path is a file", str(repo), expected="a folder", hint="choose another --out")
    check_writable_folder(repo)
    report = TritonRepoReport(repo)
    plans: list[tuple[Path, str, dict[str, Any]]] = []  # checked before anything is written
    if engine is not None:
        engine = Path(engine)
        plan, model = _engine_model(repo, engine, artifact, name, preferred, max_queue_delay_us, instances)
        plans.append(plan)
        report.models.append(model)
    onnx_bytes = None
    if artifact is not None:
        if artifact.kind == "engine":
            raise GanDeployError("pass the engine with --engine", str(artifact.path), expected="a checkpoint or ONNX file here")
        if artifact.kind == "onnx":  # Triton's dynamic batcher sends any batch size up to max_batch_size
            require_dynamic_batch(artifact, "a Triton model")
        onnx_bytes = onnx_bytes_of(artifact) if artifact.kind == "onnx" else None
        onnx_pref = _check_preferred(preferred or [max_batch_size], max_batch_size, name)
        text = config_pbtxt(name, "onnxruntime_onnx", "onnxruntime", artifact.spec, max_batch_size, onnx_pref,
                            max_queue_delay_us, INSTANCE_KINDS[instance_kind], instances)
        _validate(text, name)
        provenance = {"kind": "onnxruntime_onnx", "value_range": list(artifact.spec.value_range),
                      "source": {"kind": artifact.kind, "path": str(artifact.path), "sha256": artifact.sha256}}
        plans.insert(0, (repo / name, text, provenance))
        report.models.insert(0, TritonModel(name, "onnxruntime_onnx", repo / name, max_batch_size, onnx_pref, text))

    inputs: list[Path] = []
    if artifact is not None:
        inputs += [artifact.path, artifact.path.with_suffix(".json")]
    if engine is not None:
        inputs += [Path(engine), Path(engine).with_suffix(".json")]
    for folder, _, _ in plans:
        _check_model_dir(folder, overwrite)
        refuse_inputs_inside(folder, inputs)  # --overwrite must not delete the model it is asked to publish
    _write_models(repo, plans, engine, artifact, onnx_bytes, opset)
    return report


def _engine_model(repo: Path, engine: Path, artifact: Artifact | None, name: str, preferred: list[int] | None,
                  max_queue_delay_us: int, instances: int) -> tuple[tuple[Path, str, dict[str, Any]], TritonModel]:
    """The `<name>_trt` model of an engine, checked (its sidecar, its profile, the same generator as `artifact`):
    (folder, config.pbtxt, provenance) and its report entry."""
    from gan_deploy.artifacts.engine import check_engine_file, read_sidecar, spec_from_sidecar

    if not engine.is_file():
        raise GanDeployError("engine file not found", str(engine), hint="build one with `gan-deploy build-engine`")
    sidecar = read_sidecar(engine)
    check_engine_file(sidecar, sha256_file(engine), engine)
    espec = spec_from_sidecar(sidecar, engine)
    prof = sidecar["profile"]
    if prof["min"] != 1:
        raise GanDeployError("engine profile does not start at batch 1", f"{engine}: min {prof['min']}", expected="min batch 1 (Triton's dynamic batcher sends any batch size up to max_batch_size)", hint="rebuild the engine with a profile whose min batch is 1")
    if artifact is not None:
        a, b = artifact.spec, espec
        if (a.latent_dim, a.channels, a.height, a.width, tuple(a.value_range)) != (b.latent_dim, b.channels, b.height, b.width, tuple(b.value_range)):
            raise GanDeployError("the engine and the ONNX model are different generators", f"engine Z={b.latent_dim} {b.image_shape} vs {artifact.kind} Z={a.latent_dim} {a.image_shape}", expected="an engine built from this model", hint="pass the matching --engine, or only one of them")
    trt_pref = _check_preferred(preferred or [prof["opt"], prof["max"]], prof["max"], name + "_trt")
    text = config_pbtxt(name + "_trt", "tensorrt_plan", "tensorrt", espec, prof["max"], trt_pref, max_queue_delay_us,
                        "KIND_GPU", instances)  # a plan runs on a GPU only, whatever --instance-kind says
    _validate(text, name + "_trt")
    provenance = {"kind": "tensorrt_plan", "value_range": list(espec.value_range), "engine_sha256": sidecar["engine_sha256"],
                  "onnx_sha256": sidecar["onnx_sha256"], "source": sidecar["source"], "precision": sidecar["precision"],
                  "tensorrt_version": sidecar["tensorrt_version"], "gpu_name": sidecar["gpu_name"],
                  "compute_capability": sidecar["compute_capability"], "profile": prof}
    folder = repo / (name + "_trt")
    return (folder, text, provenance), TritonModel(name + "_trt", "tensorrt_plan", folder, prof["max"], trt_pref, text)


def _write_models(repo: Path, plans: list[tuple[Path, str, dict[str, Any]]], engine: Path | None, artifact: Artifact | None,
                  onnx_bytes: bytes | None, opset: int | None) -> None:
    """Each model is built complete in a hidden folder of the repository, then swapped in: a failure (an export
    that disagrees with eager, a full disk, Ctrl-C) leaves the repository as it was."""
    created_repo = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for folder, text, provenance in plans:
            stage = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{folder.name}-", dir=repo))
            staged.append((stage, folder))
            version = stage / "1"
            if provenance["kind"] == "tensorrt_plan":
                atomic_write_bytes(version / "model.plan", Path(engine).read_bytes())  # type: ignore[arg-type]
            elif onnx_bytes is not None:
                atomic_write_bytes(version / "model.onnx", onnx_bytes)
            else:  # a checkpoint: export and verify against eager, into the staged model
                from gan_deploy.export.onnx import DEFAULT_OPSET, onnx_from_checkpoint
                onnx_from_checkpoint(artifact.path, version / "model.onnx", opset or DEFAULT_OPSET)  # type: ignore[union-attr]
            atomic_write_text(stage / "gan_deploy.json", json.dumps(provenance, indent=2) + "\n")
            # config last: a folder with a config.pbtxt is a complete model
            atomic_write_text(stage / "config.pbtxt", text)
            os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the model folder gets a folder's usual mode
        for stage, folder in staged:
            _swap_in(stage, folder)
    finally:
        for stage, _ in staged:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        if created_repo and repo.exists() and not any(repo.iterdir()):
            repo.rmdir()

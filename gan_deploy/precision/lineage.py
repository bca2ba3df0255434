"""A reduced-precision model and the FP32 model it came from: the parent's FP32 ONNX, the child's metadata and
default file name, the child in memory as an artifact, and the FP32 reference the gate compares it with.

Every child carries its parent's gan_deploy.* metadata with gan_deploy.precision = int8 | fp16 and
gan_deploy.parent_sha256 = sha256 of the FP32 ONNX it came from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gan_deploy.artifacts.artifact import META_PRECISION, Artifact
from gan_deploy.artifacts.onnx import (
    META_CHECKPOINT_SHA,
    META_CONFIG,
    META_INT8_TARGET,
    META_PARENT_KIND,
    META_PARENT_SHA,
    META_RECIPE,
    META_TOLERANCE,
    META_VALUE_RANGE,
    spec_from_onnx_model,
)
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.resources import derived_output_dir
from gan_deploy.export.onnx import onnx_bytes_of


def default_out(parent: Artifact, precision: str, target: str | None = None) -> Path:
    """models/x.safetensors or x.onnx -> models/x.int8.onnx | x.int8-tensorrt.onnx | x.fp16.onnx."""
    stem = parent.path.name.split(".")[0]
    tag = precision + ("-tensorrt" if precision == "int8" and target == "tensorrt" else "")
    return derived_output_dir(parent.path) / f"{stem}.{tag}.onnx"  # never inside the installed package


def fp32_parent(parent: Artifact):
    """The parent's FP32 ONNX model and bytes, refusing a reduced-precision one."""
    import onnx

    check_fp32(parent)
    data = onnx_bytes_of(parent)
    return onnx.load_model_from_string(data), data


def child_meta(parent: Artifact, parent_sha: str, precision: str, recipe: dict[str, Any]) -> dict[str, str]:
    """The gan_deploy.* metadata of a model made from `parent` (whose FP32 ONNX has sha256 `parent_sha`): the
    parent's own keys, then what this model is and how it was made."""
    meta = {k: v for k, v in parent.metadata.items() if k.startswith("gan_deploy.") and k != META_TOLERANCE}
    if parent.kind == "checkpoint" and parent.config is not None:
        meta[META_CONFIG] = json.dumps(parent.config.to_dict())
    if parent.metadata.get(META_PARENT_SHA):
        meta[META_CHECKPOINT_SHA] = parent.metadata[META_PARENT_SHA]
    elif parent.kind == "checkpoint":
        meta[META_CHECKPOINT_SHA] = parent.sha256
    meta.update({META_PRECISION: precision, META_PARENT_SHA: parent_sha, META_PARENT_KIND: "onnx",
                 META_RECIPE: json.dumps(recipe),
                 # recorded even when the parent had none (a foreign ONNX given --value-range): the child must not
                 # fall back to the default range the gate did not check it in
                 META_VALUE_RANGE: json.dumps(list(parent.spec.value_range))})
    if "target" in recipe:
        meta[META_INT8_TARGET] = recipe["target"]
    return meta


def candidate_artifact(parent: Artifact, model, out: Path) -> Artifact:
    """A reduced-precision model of `parent`, in memory, as an ONNX artifact (to be gated before it is written)."""
    data = model.SerializeToString()
    spec, meta = spec_from_onnx_model(model, out)
    return Artifact.onnx_in_memory(out, spec, data, parent.config, meta)


def check_fp32(parent: Artifact) -> None:
    """The parent must be FP32 (a checkpoint or an FP32 ONNX): what is wrong with the input is said first."""
    if parent.kind == "engine":
        raise GanDeployError("cannot quantize a TensorRT engine", str(parent.path), expected="a checkpoint or an FP32 ONNX file")
    if parent.precision != "fp32":
        raise GanDeployError("the input model is already reduced precision", f"{parent.path} ({parent.precision})",
                             expected="an FP32 checkpoint or ONNX file", hint="quantize the FP32 model it came from")


def check_out(out: Path | None, parent: Artifact, precision: str, target: str | None = None) -> Path:
    """`out` if a `precision` model of `parent` may be written there (artifacts.writes: not a folder, none of the
    parent's files, no existing file but a model of the same precision); None: default_out, said as such. The parent is checked first: a model
    already INT8 is refused as that, not as an output (its default output name may be its own)."""
    from gan_deploy.artifacts.writes import Output, check_outputs

    check_fp32(parent)
    option = "-o/--out" if out is not None else "-o/--out (not given: its default)"
    out = Path(out) if out is not None else default_out(parent, precision, target)
    check_outputs([Output(option, out, f"onnx-{precision}")], parent.files())
    return out


def reference_runner(parent: Artifact, device: str = "cpu"):
    """Eager FP32 PyTorch when the parent has weights, else onnxruntime on the FP32 ONNX (itself verified
    against eager at export to 1e-4): the gate's reference."""
    from gan_deploy.backends import make_runner

    return make_runner("eager" if parent.kind == "checkpoint" else "onnxruntime", parent, device).activate()

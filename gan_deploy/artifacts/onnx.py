"""ONNX generators: check a graph is a generator, read its contract and the metadata `export` wrote.

An exported ONNX file describes itself: its generator config and its parent checkpoint's sha256 are in the
metadata (keys below), so a stale one can be refused. Only `onnx` is needed here, never onnxruntime.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gan_deploy.artifacts.artifact import META_PRECISION, META_PREFIX, Artifact
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.core.errors import GanDeployError, StaleArtifact
from gan_deploy.core.fileio import sha256_bytes
from gan_deploy.nets.config import GeneratorConfig

__all__ = ["META_PRECISION", "artifact_from_onnx", "spec_from_onnx_model"]

# ONNX metadata_props keys written by `export` and read by every command after it
META_CONFIG = META_PREFIX + "generator"  # GeneratorConfig as JSON
META_VALUE_RANGE = META_PREFIX + "value_range"  # JSON [lo, hi]
META_PARENT_SHA = META_PREFIX + "parent_sha256"  # sha256 of the checkpoint weights it came from
META_PARENT_KIND = META_PREFIX + "parent_kind"  # checkpoint | onnx | torch-factory
META_TOLERANCE = META_PREFIX + "export_max_abs_err"
META_CHECKPOINT_SHA = META_PREFIX + "checkpoint_sha256"  # the checkpoint behind the FP32 ONNX, when there was one
META_INT8_TARGET = META_PREFIX + "int8_target"
META_RECIPE = META_PREFIX + "recipe"  # JSON: how this reduced-precision model was made (calibration, rewrite, FP32 ops)
META_GATE = META_PREFIX + "precision.gate"  # JSON: the gate's figures when it was accepted


def _dim(d: Any) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or None


def spec_from_onnx_model(model, path: str | Path = "<memory>", value_range: tuple[float, float] | None = None) -> tuple[GeneratorSpec, dict[str, str]]:
    """Check an ONNX graph is a generator (one latent input, one image output) and read its contract."""
    import onnx

    meta = {p.key: p.value for p in model.metadata_props}
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    outputs = list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise GanDeployError("ONNX file is not a generator of the expected shape", f"{path}: {len(inputs)} inputs, {len(outputs)} outputs", expected="one latent input [N, Z] or [N, Z, 1, 1] and one image output [N, C, H, W]")
    inp, out = inputs[0], outputs[0]
    elem = onnx.TensorProto.FLOAT
    if inp.type.tensor_type.elem_type != elem or out.type.tensor_type.elem_type != elem:
        raise GanDeployError("ONNX generator must take and return float32", f"{path}", expected="FP32 input and output", hint="reduced-precision models keep FP32 I/O; re-export or use `gan-deploy quantize`")
    ishape = [_dim(d) for d in inp.type.tensor_type.shape.dim]
    oshape = [_dim(d) for d in out.type.tensor_type.shape.dim]
    if len(oshape) == 4 and any(not isinstance(d, int) for d in oshape[1:]):
        try:  # symbolic C/H/W may still be inferable
            inferred = onnx.shape_inference.infer_shapes(model)
            oshape = [_dim(d) for d in inferred.graph.output[0].type.tensor_type.shape.dim]
        except Exception:
            pass
    ok_in = (len(ishape) == 2 and isinstance(ishape[1], int)) or (
        len(ishape) == 4 and isinstance(ishape[1], int) and ishape[2:] == [1, 1])
    ok_out = len(oshape) == 4 and all(isinstance(d, int) for d in oshape[1:]) and oshape[1] in (1, 3)
    if not (ok_in and ok_out):
        raise GanDeployError("ONNX file is not a generator of the expected shape", f"{path}: input {inp.name}{ishape} -> output {out.name}{oshape}", expected="input [N, Z] or [N, Z, 1, 1] and output [N, C, H, W] with C = 1 or 3 and fixed Z, C, H, W", hint="export with a dynamic batch axis only")
    if META_VALUE_RANGE in meta:
        vr = _meta_value_range(meta[META_VALUE_RANGE], path)
        if value_range is not None and tuple(value_range) != vr:
            raise GanDeployError("--value-range disagrees with the ONNX metadata", f"{value_range} vs {vr}", hint="drop --value-range; the metadata written at export is authoritative")
    else:
        vr = value_range or (-1.0, 1.0)
    spec = GeneratorSpec(int(ishape[1]), int(oshape[1]), int(oshape[2]), int(oshape[3]), vr, len(ishape),  # type: ignore[arg-type]
                         inp.name, out.name)
    return spec, meta


def artifact_from_onnx(path: str | Path, value_range: tuple[float, float] | None = None,
                       expect_parent: str | None = None) -> Artifact:
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise GanDeployError("ONNX file not found", str(p), hint="run `gan-deploy export` first, or check the path")
    if p.is_dir():
        raise GanDeployError("expected an ONNX file, got a folder", str(p))
    data = p.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise GanDeployError("corrupt or unreadable ONNX file", f"{p} ({type(e).__name__})", expected="an ONNX protobuf", hint="re-run `gan-deploy export`") from None
    if not model.graph.node:
        raise GanDeployError("corrupt or unreadable ONNX file", f"{p} (empty graph)", expected="an ONNX protobuf", hint="re-run `gan-deploy export`")
    spec, meta = spec_from_onnx_model(model, p, value_range)
    cfg = GeneratorConfig.from_dict(_meta_json(meta[META_CONFIG], p, META_CONFIG), where=f"{p}: {META_CONFIG}") if META_CONFIG in meta else None
    if expect_parent and meta.get(META_PARENT_SHA) and meta[META_PARENT_SHA] != expect_parent:
        raise StaleArtifact("ONNX file was exported from a different checkpoint", f"{p} parent {meta[META_PARENT_SHA][:12]}", expected=f"parent sha256 {expect_parent[:12]}", hint="re-run `gan-deploy export`")
    art = Artifact("onnx", p, spec, sha256_bytes(data), cfg, meta)
    art._onnx_bytes = data
    return art




def _meta_json(text: str, path: str | Path, key: str) -> Any:
    try:
        return json.loads(text, parse_constant=lambda c: float("nan"))
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise GanDeployError("ONNX metadata field is not valid JSON", f"{path}: {key}={text[:60]!r}",
                             hint="re-export with `gan-deploy export`, or remove the gan_deploy.* metadata") from None


def _meta_value_range(text: str, path: str | Path) -> tuple[float, float]:
    from gan_deploy.core.jsonio import is_number

    v = _meta_json(text, path, META_VALUE_RANGE)
    if not (isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v) and v[1] > v[0]):
        raise GanDeployError("ONNX metadata field is invalid", f"{path}: {META_VALUE_RANGE}={text[:60]!r}",
                             expected="[lo, hi] with lo < hi, e.g. [-1, 1]", hint="re-export with `gan-deploy export`")
    return float(v[0]), float(v[1])

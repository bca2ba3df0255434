"""ONNX generators: check a graph is a generator, read its contract and the metadata `export` wrote.

An exported ONNX file describes itself: its generator config and its parent checkpoint's sha256 are in the
metadata (keys below), so a stale one can be refused. Only `onnx` is needed here, never onnxruntime.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gan_deploy.artifacts.artifact import META_PRECISION, META_PREFIX, Artifact
from gan_deploy.artifacts.spec import ARTIFACT_PRECISIONS, GeneratorSpec, check_spec_bounds
from gan_deploy.core.errors import GanDeployError, StaleArtifact
from gan_deploy.core.fileio import sha256_bytes
from gan_deploy.nets.config import GeneratorConfig

__all__ = ["META_PRECISION", "artifact_from_onnx", "set_onnx_metadata", "spec_from_onnx_model"]

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
META_FACTORY = META_PREFIX + "factory"  # export --factory: the user's factory reference
META_FACTORY_KWARGS = META_PREFIX + "factory_kwargs"  # JSON object: its constructor arguments
PARENT_KINDS = ("checkpoint", "onnx", "torch-factory")
INT8_TARGETS = ("onnxruntime", "tensorrt")
MAX_EXTERNAL_BYTES = (2 << 30) - (64 << 20)  # external weights are read into memory; protobuf stops at 2 GiB
FIXED_BATCH_HINT = ("re-export with a dynamic batch axis: `gan-deploy export` does, or torch.onnx.export(..., "
                    "dynamic_axes={'z': {0: 'batch'}, 'image': {0: 'batch'}})")


def set_onnx_metadata(model, meta: dict[str, str]) -> None:
    """Write `meta` into an ONNX model's metadata_props in place: given keys replaced, the others kept in order.
    Every gan_deploy.* key of every model this package writes goes through here."""
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


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
    fixed = _fixed_batch(ishape[0], oshape[0], path, inp.name, out.name)
    check_metadata(meta, path)
    if META_VALUE_RANGE in meta:
        vr = _meta_value_range(meta[META_VALUE_RANGE], path)
        if value_range is not None and tuple(value_range) != vr:
            raise GanDeployError("--value-range disagrees with the ONNX metadata", f"{value_range} vs {vr}", hint="drop --value-range; the metadata written at export is authoritative")
    else:
        vr = value_range or (-1.0, 1.0)
    spec = GeneratorSpec(int(ishape[1]), int(oshape[1]), int(oshape[2]), int(oshape[3]), vr, len(ishape),  # type: ignore[arg-type]
                         inp.name, out.name, fixed)
    check_spec_bounds(spec, str(path), hint="this ONNX file is not a generator gan-deploy can run")
    return spec, meta


def _fixed_batch(din: Any, dout: Any, path: str | Path, iname: str, oname: str) -> int | None:
    """The batch size of a graph whose batch axis is a number (the only batch it runs), else None (dynamic)."""
    if isinstance(din, int) and din >= 1:
        if isinstance(dout, int) and dout != din:
            raise GanDeployError("ONNX generator's batch axes disagree", f"{path}: input {iname} batch {din}, output {oname} batch {dout}",
                                 expected="the same batch size in and out", hint=FIXED_BATCH_HINT)
        return din
    if isinstance(din, int):  # 0 or negative: not a size
        raise GanDeployError("ONNX generator declares an impossible batch size", f"{path}: input {iname} batch {din}",
                             expected="a dynamic batch axis (or a fixed size >= 1)", hint=FIXED_BATCH_HINT)
    return None


def require_dynamic_batch(artifact: Artifact, what: str) -> None:
    """Refuse a fixed-batch ONNX model for work that must feed it other batch sizes (calibration, Triton batching)."""
    fixed = artifact.spec.fixed_batch
    if fixed is not None:
        raise GanDeployError(f"{what} needs a dynamic batch axis, this ONNX model has a fixed batch size",
                             f"{artifact.path}: batch {fixed}", expected="a dynamic first (batch) axis", hint=FIXED_BATCH_HINT)


def check_metadata(meta: dict[str, str], path: str | Path) -> None:
    """Every gan_deploy.* key gan-deploy reads back, checked for syntax and type (unknown keys are left alone)."""
    from gan_deploy.core.jsonio import is_number

    hint = "re-export with `gan-deploy export` (or `quantize` for a reduced-precision model), or remove the gan_deploy.* metadata"

    def bad(key: str, expected: str) -> GanDeployError:
        return GanDeployError("ONNX metadata field is invalid", f"{path}: {key}={meta[key][:60]!r}", expected=expected, hint=hint)

    if META_PRECISION in meta and meta[META_PRECISION] not in ARTIFACT_PRECISIONS:
        raise bad(META_PRECISION, " | ".join(ARTIFACT_PRECISIONS))
    for key in (META_PARENT_SHA, META_CHECKPOINT_SHA):
        v = meta.get(key)
        if v is not None and v != "" and not (len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
            raise bad(key, "64 hex digits (a sha256) or empty")
    if META_PARENT_KIND in meta and meta[META_PARENT_KIND] not in PARENT_KINDS:
        raise bad(META_PARENT_KIND, " | ".join(PARENT_KINDS))
    if META_INT8_TARGET in meta and meta[META_INT8_TARGET] not in INT8_TARGETS:
        raise bad(META_INT8_TARGET, " | ".join(INT8_TARGETS))
    if META_TOLERANCE in meta:
        try:
            tol = float(meta[META_TOLERANCE])
        except ValueError:
            raise bad(META_TOLERANCE, "a number such as 3.870e-07") from None
        if not (is_number(tol) and tol >= 0):
            raise bad(META_TOLERANCE, "a finite number >= 0")
    for key in (META_RECIPE, META_GATE, META_FACTORY_KWARGS):
        if key in meta and not isinstance(_meta_json(meta[key], path, key), dict):
            raise bad(key, "a JSON object")
    if META_CONFIG in meta and not isinstance(_meta_json(meta[META_CONFIG], path, META_CONFIG), dict):
        raise bad(META_CONFIG, "a JSON object (the generator config)")


def _check_config_matches_graph(cfg: GeneratorConfig, spec: GeneratorSpec, meta: dict[str, str], path: str | Path) -> None:
    """The generator config in the metadata describes this graph (a swapped or hand-edited file does not)."""
    graph = (spec.latent_dim, spec.channels, spec.height, spec.width)
    said = (cfg.latent_dim, cfg.channels, cfg.image_size, cfg.image_size)
    if graph != said or (META_VALUE_RANGE in meta and tuple(cfg.value_range) != tuple(spec.value_range)):
        raise GanDeployError("ONNX metadata disagrees with the graph", f"{path}: {META_CONFIG} says Z={said[0]} image "
                             f"{said[1]}x{said[2]}x{said[3]} range {list(cfg.value_range)}, the graph is Z={graph[0]} image "
                             f"{graph[1]}x{graph[2]}x{graph[3]} range {list(spec.value_range)}",
                             expected="the metadata `gan-deploy export` wrote for this graph",
                             hint="re-export with `gan-deploy export`, or remove the gan_deploy.* metadata")


def artifact_from_onnx(path: str | Path, value_range: tuple[float, float] | None = None,
                       expect_parent: str | None = None) -> Artifact:
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise GanDeployError("ONNX file not found", str(p), hint="run `gan-deploy export` first, or check the path")
    if p.is_dir():
        raise GanDeployError("expected an ONNX file, got a folder", str(p))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise GanDeployError("ONNX file is unreadable", f"{p} ({e.strerror or type(e).__name__})", hint="check the file's permissions") from None
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise GanDeployError("corrupt or unreadable ONNX file", f"{p} ({type(e).__name__})", expected="an ONNX protobuf", hint="re-run `gan-deploy export`") from None
    if not model.graph.node:
        raise GanDeployError("corrupt or unreadable ONNX file", f"{p} (empty graph)", expected="an ONNX protobuf", hint="re-run `gan-deploy export`")
    spec, meta = spec_from_onnx_model(model, p, value_range)
    if META_CONFIG in meta:
        cfg = GeneratorConfig.from_dict(_meta_json(meta[META_CONFIG], p, META_CONFIG), where=f"{p}: {META_CONFIG}")
        if META_VALUE_RANGE not in meta and value_range is None:  # the config's range, not the default one
            import dataclasses
            spec = dataclasses.replace(spec, value_range=(float(cfg.value_range[0]), float(cfg.value_range[1])))
        _check_config_matches_graph(cfg, spec, meta, p)
    else:
        cfg = None
    if expect_parent and meta.get(META_PARENT_SHA) and meta[META_PARENT_SHA] != expect_parent:
        raise StaleArtifact("ONNX file was exported from a different checkpoint", f"{p} parent {meta[META_PARENT_SHA][:12]}", expected=f"parent sha256 {expect_parent[:12]}", hint="re-run `gan-deploy export`")
    return Artifact.onnx_in_memory(p, spec, _with_external_data(model, p) if _external_tensors(model) else data, cfg, meta,
                                   sha256=sha256_bytes(data))


def _external_tensors(model) -> list[Any]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def _with_external_data(model, p: Path) -> bytes:
    """A model whose weights live in files beside it: every file checked (inside the model's folder, present, long
    enough), then read in, so what runs is one self-contained model (onnxruntime is given bytes, not a path)."""
    import onnx

    hint = "keep the data file(s) beside the .onnx under the names it records, or re-save with onnx.save(model, path) (no external data)"
    base = p.resolve().parent
    total = 0
    for t in _external_tensors(model):
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (base / loc).resolve()
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(base):
            raise GanDeployError("ONNX external data points outside the model's folder", f"{p}: tensor {t.name} -> {loc!r}",
                                 expected="a file name relative to the .onnx file's folder", hint=hint)
        if not target.is_file():
            raise GanDeployError("ONNX external data file is missing", f"{p}: tensor {t.name} needs {base / loc}",
                                 expected="the data file saved with the model", hint=hint)
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        except ValueError:
            raise GanDeployError("ONNX external data entry is invalid", f"{p}: tensor {t.name} {info}", hint=hint) from None
        size = target.stat().st_size
        if offset < 0 or offset > size or (length >= 0 and offset + length > size):
            raise GanDeployError("ONNX external data file is too short", f"{p}: tensor {t.name} needs bytes {offset}..{offset + max(length, 0)} of {loc} ({size} bytes)",
                                 expected="the complete data file", hint=hint)
        total += length if length >= 0 else size - offset
    if total > MAX_EXTERNAL_BYTES:
        raise GanDeployError("ONNX external data is too large to load", f"{p}: {total / 2**30:.1f} GiB",
                             expected=f"at most {MAX_EXTERNAL_BYTES / 2**30:.1f} GiB of weights")
    try:
        onnx.load_external_data_for_model(model, str(base))
        return model.SerializeToString()
    except (OSError, ValueError, RuntimeError) as e:
        raise GanDeployError("ONNX external data is unreadable", f"{p} ({type(e).__name__}: {e})", hint=hint) from None




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

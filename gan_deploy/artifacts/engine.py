"""The sidecar JSON of a TensorRT engine, and every check made on it before the engine is deserialized.

A serialized engine runs only with the TensorRT version that built it (a `--version-compatible` one: also
with later versions of the same major version) and on the GPU model it was tuned for, and it silently keeps
running after the ONNX it came from has changed. The sidecar
(`engines/x.fp16.engine` -> `engines/x.fp16.json`) records what the engine was built from and for, so
loading it can refuse with a message that says what differs and the command that rebuilds it:

    {"format": "gan-deploy-engine", "format_version": 1, "engine_sha256": ..., "precision": "fp16",
     "tensorrt_version": "10.13.0.35", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
     "profile": {"min": 1, "opt": 64, "max": 256}, "workspace_mib": 1024,
     "onnx_sha256": ... (the network TensorRT parsed), "source": {"kind", "path", "sha256"} (what the user gave),
     "spec": {...GeneratorSpec}, "generator": {...GeneratorConfig} | null, "gate": {...}, "rebuild": "gan-deploy ...",
     "version_compatible": false (optional, absent in older sidecars: false)}

Everything here is pure Python (no TensorRT, no GPU), so the checks are tested on any machine.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gan_deploy.artifacts.artifact import META_PRECISION, Artifact
from gan_deploy.artifacts.onnx import META_VALUE_RANGE
from gan_deploy.artifacts.spec import ARTIFACT_PRECISIONS, GeneratorSpec
from gan_deploy.core.errors import GanDeployError, StaleArtifact
from gan_deploy.core.fileio import sha256_file
from gan_deploy.nets.config import GeneratorConfig

SIDECAR_FORMAT = "gan-deploy-engine"
SIDECAR_FORMAT_VERSION = 1
PRECISIONS = ARTIFACT_PRECISIONS
_SHA = re.compile(r"^[0-9a-f]{64}$")
_CC = re.compile(r"^\d+\.\d+$")

# key -> (type, description) of every required sidecar field
_REQUIRED: dict[str, tuple[type | tuple[type, ...], str]] = {
    "format": (str, f'"{SIDECAR_FORMAT}"'),
    "format_version": (int, f"<= {SIDECAR_FORMAT_VERSION}"),
    "engine_sha256": (str, "64 hex digits"),
    "precision": (str, " | ".join(PRECISIONS)),
    "tensorrt_version": (str, "a version such as 10.13.0.35"),
    "gpu_name": (str, "the GPU's name"),
    "compute_capability": (str, "major.minor, such as 8.6"),
    "profile": (dict, '{"min": 1, "opt": 64, "max": 256}'),
    "onnx_sha256": (str, "64 hex digits"),
    "source": (dict, '{"kind": ..., "path": ..., "sha256": ...}'),
    "spec": (dict, "the generator's input/output contract"),
}
# key -> (type, description) of every optional sidecar field (absent in sidecars written before it existed)
_OPTIONAL: dict[str, tuple[type | tuple[type, ...], str]] = {
    "version_compatible": (bool, "true or false (built with BuilderFlag.VERSION_COMPATIBLE)"),
}
_VERSION = re.compile(r"^\d+(\.\d+)*$")


@dataclass(frozen=True)
class RuntimeInfo:
    """What an engine depends on, on the machine at hand."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.6"
    module: str = "tensorrt"  # the Python module that runs engines: tensorrt, or the lean runtime tensorrt_lean


def gpu_info(device: str = "cuda") -> tuple[str, str]:
    """(name, "major.minor") of a CUDA device, from torch (no TensorRT needed)."""
    import torch

    props = torch.cuda.get_device_properties(torch.device(device))
    return str(props.name), f"{props.major}.{props.minor}"


def sidecar_path(engine: str | Path) -> Path:
    return Path(engine).with_suffix(".json")


def make_sidecar(*, engine_sha256: str, precision: str, runtime: RuntimeInfo, profile: tuple[int, int, int],
                 onnx_sha256: str, source: dict[str, str], spec: GeneratorSpec, generator: dict[str, Any] | None,
                 workspace_mib: int, rebuild: str, gate: dict[str, Any] | None = None,
                 version_compatible: bool = False) -> dict[str, Any]:
    mn, opt, mx = profile
    return {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_FORMAT_VERSION,
        "engine_sha256": engine_sha256, "precision": precision,
        "tensorrt_version": runtime.tensorrt_version, "gpu_name": runtime.gpu_name,
        "compute_capability": runtime.compute_capability,
        "profile": {"min": mn, "opt": opt, "max": mx}, "workspace_mib": workspace_mib,
        "onnx_sha256": onnx_sha256, "source": source,
        "spec": {**dataclasses.asdict(spec), "value_range": list(spec.value_range)},
        "generator": generator, "strongly_typed": True, "version_compatible": bool(version_compatible),
        "gate": gate, "rebuild": rebuild,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def parse_sidecar(text: str, where: str | Path = "<sidecar>") -> dict[str, Any]:
    """Validate a sidecar's JSON text: every field present, of the right type and plausible (catches hand edits
    that broke it, truncation and foreign files). Raises GanDeployError naming the field."""
    hint = "rebuild the engine with `gan-deploy build-engine` (it rewrites the sidecar)"
    from gan_deploy.core.jsonio import parse_document

    d = parse_document(text, where, SIDECAR_FORMAT, SIDECAR_FORMAT_VERSION, what="engine sidecar", hint=hint)
    for key, (typ, desc) in _REQUIRED.items():
        if key not in d:
            raise GanDeployError("engine sidecar lacks a field", f"{where}: {key!r}", expected=desc, hint=hint)
        if not isinstance(d[key], typ) or isinstance(d[key], bool):
            raise GanDeployError("engine sidecar field has the wrong type", f"{where}: {key}={d[key]!r}", expected=desc, hint=hint)
    for key, (typ, desc) in _OPTIONAL.items():
        if key in d and not isinstance(d[key], typ):
            raise GanDeployError("engine sidecar field has the wrong type", f"{where}: {key}={d[key]!r}", expected=desc, hint=hint)
    if d["format_version"] > SIDECAR_FORMAT_VERSION:
        raise GanDeployError("engine sidecar written by a newer gan-deploy", f"format_version {d['format_version']}", expected=f"<= {SIDECAR_FORMAT_VERSION}", hint="upgrade gan-deploy, or rebuild the engine")
    bad = None
    if d["precision"] not in PRECISIONS:
        bad = ("precision", _REQUIRED["precision"][1])
    elif not _SHA.match(d["engine_sha256"]):
        bad = ("engine_sha256", "64 hex digits")
    elif not _SHA.match(d["onnx_sha256"]):
        bad = ("onnx_sha256", "64 hex digits")
    elif not _CC.match(d["compute_capability"]):
        bad = ("compute_capability", "major.minor, such as 8.6")
    if bad:
        raise GanDeployError("engine sidecar field is invalid", f"{where}: {bad[0]}={d[bad[0]]!r}", expected=bad[1], hint=hint)
    p = d["profile"]
    if not all(isinstance(p.get(k), int) and not isinstance(p.get(k), bool) for k in ("min", "opt", "max")) \
            or not 1 <= p["min"] <= p["opt"] <= p["max"]:
        raise GanDeployError("engine sidecar profile is invalid", f"{where}: {p}", expected="1 <= min <= opt <= max", hint=hint)
    src = d["source"]
    for key, ok, desc in (("kind", lambda v: v in ("checkpoint", "onnx"), "checkpoint or onnx"),
                          ("path", lambda v: isinstance(v, str) and "\0" not in v, "the path of the file it was built from"),
                          ("sha256", lambda v: isinstance(v, str) and bool(_SHA.match(v)), "64 hex digits")):
        if key in src and not ok(src[key]):
            raise GanDeployError("engine sidecar field is invalid", f"{where}: source.{key}={src[key]!r}", expected=desc, hint=hint)
    spec_from_sidecar(d, where)  # the contract must be complete
    return d


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    p = Path(engine)
    other = {".onnx": ("an ONNX file", "--onnx"), ".safetensors": ("a checkpoint", "-c/--checkpoint")}.get(p.suffix.lower())
    if other:  # else the message would be about a missing engine sidecar, pointing away from the mistake
        raise GanDeployError(f"not a TensorRT engine: it is {other[0]}", str(p), expected="a .engine (or .plan) file from `gan-deploy build-engine`",
                             hint=f"pass it with {other[1]}, or build an engine from it with `gan-deploy build-engine --fp16 {other[1].split('/')[0]} {p}`")
    side = sidecar_path(engine)
    if not side.exists():
        raise GanDeployError("engine has no sidecar JSON", str(side), expected="the .json that `gan-deploy build-engine` writes beside it", hint="engines built elsewhere cannot be checked; rebuild it with `gan-deploy build-engine`")
    try:
        text = side.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GanDeployError("engine sidecar is unreadable", f"{side} ({type(e).__name__})") from None
    return parse_sidecar(text, side)


def spec_from_sidecar(d: dict[str, Any], where: str | Path = "<sidecar>") -> GeneratorSpec:
    s = d["spec"]
    try:
        lo, hi = (float(v) for v in s["value_range"])
        vr = (lo, hi)
        spec = GeneratorSpec(int(s["latent_dim"]), int(s["channels"]), int(s["height"]), int(s["width"]), vr,
                             int(s["latent_rank"]), str(s["input_name"]), str(s["output_name"]))
    except (KeyError, TypeError, ValueError) as e:
        raise GanDeployError("engine sidecar spec is incomplete", f"{where}: {type(e).__name__} {e}", expected="latent_dim, channels, height, width, value_range, latent_rank, input_name, output_name", hint="rebuild the engine with `gan-deploy build-engine`") from None
    if len(vr) != 2 or not vr[1] > vr[0] or spec.latent_rank not in (2, 4) or min(spec.latent_dim, spec.channels, spec.height, spec.width) < 1:
        raise GanDeployError("engine sidecar spec is invalid", f"{where}: {s}", expected="positive sizes, latent_rank 2 or 4, lo < hi")
    return spec


def _rebuild(d: dict[str, Any]) -> str:
    return f"rebuild it here: {d.get('rebuild') or 'gan-deploy build-engine --' + d['precision']}"


def check_engine_file(d: dict[str, Any], engine_sha256: str, engine: str | Path) -> None:
    """The engine file is the one the sidecar describes (not replaced, truncated or paired with another's sidecar)."""
    if engine_sha256 != d["engine_sha256"]:
        raise StaleArtifact("engine file does not match its sidecar", f"{engine} sha256 {engine_sha256[:12]}", expected=f"{d['engine_sha256'][:12]} as recorded in {sidecar_path(engine).name}", hint=_rebuild(d))


def check_source(d: dict[str, Any], sha_of: Callable[[Path], str] = sha256_file) -> None:
    """The checkpoint or ONNX file the engine was built from has not changed since (when it is still there)."""
    src = d["source"]
    path = Path(src.get("path", ""))
    if src.get("path") and path.is_file():
        now = sha_of(path)
        if now != src.get("sha256"):
            raise StaleArtifact(f"the {src.get('kind', 'source')} this engine was built from has changed", f"{path} sha256 {now[:12]}", expected=f"{str(src.get('sha256'))[:12]} when the engine was built", hint=_rebuild(d))


def _version(v: str) -> tuple[int, ...] | None:
    return tuple(int(x) for x in v.strip().split(".")) if _VERSION.match(v.strip()) else None


def version_compatible_runs(built: str, runtime: str) -> bool:
    """Whether TensorRT `runtime` may run a version-compatible engine built by TensorRT `built`. NVIDIA's docs:
    such an engine runs on the version that built it and on later ones (11.0 -> 11.1 and later 11.x), never
    on an earlier one; across a major version, APIs removed there must not be used, so only the same major
    version is accepted here. A version that is not all numbers must match exactly."""
    b, r = _version(built), _version(runtime)
    if b is None or r is None:
        return built.strip() == runtime.strip()
    n = max(len(b), len(r))
    b, r = b + (0,) * (n - len(b)), r + (0,) * (n - len(r))
    return r[0] == b[0] and r >= b


def check_runtime(d: dict[str, Any], rt: RuntimeInfo) -> None:
    """The engine was built with this TensorRT version (a version-compatible one: this one or an earlier one of
    the same major version) for this GPU, and the module at hand can run it (the lean runtime runs only
    version-compatible engines). Lists every difference at once."""
    diffs = []
    vc = d.get("version_compatible") is True
    lean = rt.module != "tensorrt"
    here = f"{rt.tensorrt_version}, {rt.module}" if lean else rt.tensorrt_version
    if vc:
        if not version_compatible_runs(d["tensorrt_version"], rt.tensorrt_version):
            diffs.append(f"TensorRT {d['tensorrt_version']} with --version-compatible (this machine has {here}; such an "
                         f"engine runs on the version that built it and later ones of the same major version)")
    elif d["tensorrt_version"] != rt.tensorrt_version:
        diffs.append(f"TensorRT {d['tensorrt_version']} (this machine has {here})")
    if lean and not vc:
        diffs.append(f"no --version-compatible (this machine has only TensorRT's lean runtime, {rt.module}, which runs "
                     f"version-compatible engines only)")
    if d["compute_capability"] != rt.compute_capability:
        diffs.append(f"compute capability {d['compute_capability']} {d['gpu_name']} (this GPU is {rt.compute_capability} {rt.gpu_name})")
    elif d["gpu_name"] != rt.gpu_name:
        # same architecture but another model: it may run, with tactics timed for the other GPU, or fail in odd ways
        diffs.append(f"GPU {d['gpu_name']} (this GPU is {rt.gpu_name}, same compute capability)")
    if diffs:
        expected = "the TensorRT version and GPU it was built with"
        hint = f"TensorRT engines are specific to both; {_rebuild(d)}"
        if vc:
            expected = "the GPU it was built for and the TensorRT version it was built with, or a later one of the same major version"
        if lean and not vc:
            cmd = d.get("rebuild") or "gan-deploy build-engine --" + d["precision"]
            hint = f"the lean runtime cannot build engines; where the full TensorRT is installed: {cmd} --version-compatible"
        raise StaleArtifact("engine was built for another setup", "; ".join(diffs), expected=expected, hint=hint)


def artifact_from_engine(path: str | Path) -> Artifact:
    """An engine's description from its sidecar, refused (with the reason and the rebuild command) when the
    engine file or the ONNX/checkpoint it came from changed. Needs no TensorRT and no GPU: whether this
    machine's TensorRT and GPU match is checked when a runner activates it (backends/tensorrt.py)."""
    p = Path(path)
    if not p.exists():
        raise GanDeployError("engine file not found", str(p), hint="build one with `gan-deploy build-engine --fp16`")
    if p.is_dir():
        raise GanDeployError("expected an engine file, got a folder", str(p))
    d = read_sidecar(p)
    check_engine_file(d, sha256_file(p), p)
    check_source(d)
    spec = spec_from_sidecar(d, sidecar_path(p))
    cfg = GeneratorConfig.from_dict(d["generator"]) if d.get("generator") else None
    meta = {META_PRECISION: d["precision"], META_VALUE_RANGE: json.dumps(list(spec.value_range)),
            "gan_deploy.engine_sidecar": str(sidecar_path(p))}
    return Artifact("engine", p, spec, d["engine_sha256"], cfg, meta)

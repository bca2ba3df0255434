"""Build TensorRT engines: `engine_from_onnx` (the builder) and `engine_from_artifact` (what build-engine runs).

Precision lives in the ONNX, not in builder flags: TensorRT 11 removed BuilderFlag.FP16/INT8 and the INT8
calibrators, and every network is strongly typed. So `--fp16` parses the FP16 ONNX of `precision.fp16.fp16_model`
(FP32 I/O, overflow-prone operators in FP32) and `--int8` the Q/DQ ONNX of `precision.int8.Int8Builder` in its
TensorRT flavour (symmetric INT8, FP32 biases, transposed convolutions rewritten into convolutions). The
network is created STRONGLY_TYPED on both TensorRT 10 (required there for this) and 11 (where it is the
only mode and the flag is accepted and ignored), so one code path serves both, with the precision policy
that the CPU gate already checked. (On TensorRT 10 the FP16 builder flag would also work on the FP32 ONNX,
but TensorRT would then pick per-layer precision itself, outside the policy the gate checks.)

`--version-compatible` sets BuilderFlag.VERSION_COMPATIBLE (TensorRT 10 and 11): the plan then carries a copy
of TensorRT's lean runtime, so the same or a later TensorRT of the same major version can run it, NVIDIA's
lean runtime module (`tensorrt_lean`) included, which runs no other engines. EXCLUDE_LEAN_RUNTIME is not set:
without the embedded copy, a runtime of another version would have to load the builder's lean runtime
library itself (Runtime.load_runtime), which this project does not ship. Building needs the full `tensorrt`
module (Builder, OnnxParser); the lean runtime has neither, and `builder_unavailable_reason` says so.

The engine is written only after it passes the quality gate on the GPU, with its sidecar (artifacts/engine.py).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan_deploy.artifacts.artifact import META_PRECISION, Artifact
from gan_deploy.artifacts.engine import RuntimeInfo, make_sidecar, sidecar_path
from gan_deploy.core.errors import BackendUnavailable, GanDeployError
from gan_deploy.core.fileio import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file
from gan_deploy.core.outputs import refuse_inputs_as_outputs
from gan_deploy.export.onnx import onnx_bytes_of
from gan_deploy.precision.calibrate import DEFAULT_CALIB_SAMPLES, check_calib_samples
from gan_deploy.precision.gate import DEFAULT_GATE_SAMPLES, GateRejected, GateReport, GateThresholds, run_gate, thresholds_for

DEFAULT_ENGINE_DIR = Path("engines")
DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_PROFILE = (1, 64, 256)
MIN_WORKSPACE_MIB = 16


@dataclass
class EngineReport:
    path: Path | None  # None: rejected by the gate, nothing written
    precision: str
    profile: tuple[int, int, int]
    workspace_mib: int
    runtime: RuntimeInfo
    build_s: float
    size_bytes: int
    onnx_sha256: str
    timing_cache: str  # path and whether it was reused
    gate: GateReport
    recipe: dict[str, Any] = field(default_factory=dict)
    version_compatible: bool = False

    def summary(self) -> str:
        rt = self.runtime
        head = (f"wrote {self.path} + {sidecar_path(self.path).name}" if self.path else "engine REJECTED: nothing was written")
        lines = [f"{head} ({self.precision}, {self.size_bytes / 1e6:.2f} MB, built in {self.build_s:.1f} s)",
                 f"  TensorRT {rt.tensorrt_version} on {rt.gpu_name} (compute capability {rt.compute_capability}); "
                 f"profile batch min/opt/max {'/'.join(map(str, self.profile))}; workspace {self.workspace_mib} MiB"
                 + ("; version-compatible (runs on this TensorRT or a later one of its major version, lean runtime included)"
                    if self.version_compatible else ""),
                 f"  timing cache: {self.timing_cache}", self.gate.summary()]
        return "\n".join(lines)


def default_timing_cache(rt: RuntimeInfo, folder: Path = DEFAULT_ENGINE_DIR) -> Path:
    """One cache per GPU architecture and TensorRT version: a cache from another one cannot be reused."""
    ver = re.sub(r"[^0-9.]", "", rt.tensorrt_version)
    return folder / f"timing_sm{rt.compute_capability.replace('.', '')}_trt{ver}.cache"


def builder_unavailable_reason() -> str | None:
    """None when engines can be built here (the full TensorRT and a GPU); otherwise what is missing. The lean
    runtime alone is not enough: it has no Builder and no ONNX parser."""
    from gan_deploy.backends.tensorrt import INSTALL_HINT, is_lean, module_description, trt_runtime_module, unavailable_reason

    reason = unavailable_reason()
    if reason:
        return reason
    trt = trt_runtime_module()
    if is_lean(trt):
        return (f"building engines needs the full TensorRT (`import tensorrt`: Builder, OnnxParser), and only "
                f"{module_description(trt)} is importable here; install the full TensorRT with {INSTALL_HINT}")
    return None


def engine_from_onnx(onnx_bytes: bytes, input_name: str, latent_shape: tuple[int, ...],
                     profile: tuple[int, int, int] = DEFAULT_PROFILE, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                     timing_cache: Path | None = None, version_compatible: bool = False) -> tuple[bytes, str]:
    """Parse the ONNX into a strongly typed network, build a serialized engine. Returns (plan, cache note).
    `version_compatible`: BuilderFlag.VERSION_COMPATIBLE (the plan embeds the lean runtime; see the module doc)."""
    from gan_deploy.backends.tensorrt import INSTALL_HINT, is_lean, module_description, trt_logger, trt_runtime_module

    found = trt_runtime_module()
    if is_lean(found):  # trt_logger() below must come from the module that builds
        raise BackendUnavailable("cannot build a TensorRT engine here", f"only {module_description(found)} is importable", expected="the full TensorRT (`import tensorrt`: Builder, OnnxParser)", hint=f"install it with {INSTALL_HINT}")
    import tensorrt as trt

    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise GanDeployError("TensorRT could not parse the ONNX model", "; ".join(errors)[:400] or "no parser message", expected="an ONNX model TensorRT supports", hint="check the operator against TensorRT's ONNX support matrix")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    mn, opt, mx = profile
    prof = builder.create_optimization_profile()
    prof.set_shape(input_name, (mn, *latent_shape), (opt, *latent_shape), (mx, *latent_shape))
    config.add_optimization_profile(prof)

    note = "none"
    if timing_cache is not None:
        old = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(old)
        if config.set_timing_cache(cache, ignore_mismatch=False):
            note = f"{timing_cache} ({'reused' if old else 'new'})"
        else:  # written by another TensorRT version or GPU: start a fresh one rather than fail the build
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
            note = f"{timing_cache} (did not match this TensorRT/GPU: replaced)"
    mark = logger.mark()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise GanDeployError("TensorRT failed to build the engine", logger.errors_since(mark) or None, hint="TensorRT's log above says more; a larger --workspace helps when tactics were skipped")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan), note


def _network_onnx(parent: Artifact, precision: str, calib_samples: int) -> tuple[bytes, dict[str, Any]]:
    """The ONNX TensorRT parses for `precision`: the parent itself when it already is that precision, else the
    FP16 / TensorRT-flavour INT8 model made from the parent's FP32 ONNX in memory."""
    from gan_deploy.artifacts.onnx import META_INT8_TARGET
    from gan_deploy.precision.quantize import reduced_precision_model

    if parent.kind == "onnx" and parent.precision != "fp32":
        if parent.precision != precision:
            raise GanDeployError("the ONNX model's precision differs from the one asked for", f"{parent.path} is {parent.precision}", expected=f"--{parent.precision}", hint="or pass its FP32 parent")
        if precision == "int8" and parent.metadata.get(META_INT8_TARGET) != "tensorrt":
            raise GanDeployError("this INT8 model is the onnxruntime flavour (UINT8 activations, INT32 biases)", str(parent.path), expected="a TensorRT-flavour Q/DQ model", hint="pass the FP32 model (build-engine quantizes it), or run `gan-deploy quantize --int8 --target tensorrt`")
        return onnx_bytes_of(parent), {"onnx": str(parent.path)}
    if precision == "fp32":
        if parent.precision != "fp32":
            raise GanDeployError("an FP32 engine needs an FP32 model", f"{parent.path} is {parent.precision}")
        return onnx_bytes_of(parent), {}
    model, recipe, _ = reduced_precision_model(parent, precision, target="tensorrt", calib_samples=calib_samples)
    return model.SerializeToString(), recipe


ENGINE_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class EngineOptions:
    """Everything `gan-deploy build-engine` decides, as one object."""

    precision: str = "fp16"  # one of ENGINE_PRECISIONS
    out: str | Path | None = None  # default: engines/NAME.PRECISION.engine
    profile: tuple[int, int, int] = DEFAULT_PROFILE  # batch min, opt, max
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: str | Path | None = "auto"  # "auto": one per GPU architecture and TensorRT version; None: none
    thresholds: GateThresholds | None = None
    gate_samples: int = DEFAULT_GATE_SAMPLES
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    device: str = "cuda"  # cuda or cuda:N
    cuda_graphs: bool = True
    version_compatible: bool = False  # BuilderFlag.VERSION_COMPATIBLE: later TensorRT of the same major and the lean runtime run it

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise GanDeployError("unknown engine precision", repr(self.precision), expected="--fp32, --fp16 or --int8")
        prof = tuple(self.profile) if isinstance(self.profile, (tuple, list)) else ()
        if len(prof) != 3 or not all(isinstance(b, int) and not isinstance(b, bool) for b in prof) or not 1 <= prof[0] <= prof[1] <= prof[2]:
            shown = f"min {prof[0]}, opt {prof[1]}, max {prof[2]}" if len(prof) == 3 else repr(self.profile)
            raise GanDeployError("bad optimization profile", shown, expected="1 <= min <= opt <= max")
        self.profile = prof  # type: ignore[assignment]
        if isinstance(self.workspace_mib, bool) or not isinstance(self.workspace_mib, int) or self.workspace_mib < MIN_WORKSPACE_MIB:
            raise GanDeployError("bad workspace limit", repr(self.workspace_mib), expected=f"an integer >= {MIN_WORKSPACE_MIB} (MiB)")
        if isinstance(self.gate_samples, bool) or not isinstance(self.gate_samples, int) or self.gate_samples < 1:
            raise GanDeployError("bad number of gate samples", repr(self.gate_samples), expected="an integer >= 1")
        check_calib_samples(self.calib_samples)
        if not isinstance(self.device, str) or not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise GanDeployError("TensorRT engines are built on a CUDA device", repr(self.device), expected="cuda or cuda:N")


def engine_from_artifact(parent: Artifact, opts: EngineOptions, raise_on_reject: bool = True) -> EngineReport:
    """build-engine: make the network ONNX, build, gate the engine on the GPU against eager FP32, write it."""
    from gan_deploy.backends.tensorrt import TensorRTRunner, runtime_info
    from gan_deploy.precision.lineage import reference_runner

    reason = builder_unavailable_reason()
    if reason:  # before any work: say what is missing and how to install it
        raise BackendUnavailable("cannot build a TensorRT engine here", reason)
    precision, profile, workspace_mib, version_compatible = opts.precision, opts.profile, opts.workspace_mib, opts.version_compatible
    mn, opt, mx = profile
    if parent.kind == "engine":
        raise GanDeployError("cannot build an engine from an engine", str(parent.path), expected="a checkpoint or ONNX file")
    stem = parent.path.name.split(".")[0]
    out = Path(opts.out) if opts.out else DEFAULT_ENGINE_DIR / f"{stem}.{precision}.engine"
    if out.is_dir():
        raise GanDeployError("output path is a folder", str(out), expected="a file name ending in .engine")
    refuse_inputs_as_outputs([out, sidecar_path(out)], parent.files())  # the engine and its sidecar
    rt = runtime_info(opts.device)
    tc = opts.timing_cache
    cache = default_timing_cache(rt, out.parent) if tc == "auto" else (Path(tc) if tc else None)

    onnx_bytes, recipe = _network_onnx(parent, precision, opts.calib_samples)
    t0 = time.perf_counter()
    plan, cache_note = engine_from_onnx(onnx_bytes, parent.spec.input_name, parent.spec.latent_shape, profile,
                                        workspace_mib, cache, version_compatible=version_compatible)
    build_s = time.perf_counter() - t0

    meta = {META_PRECISION: precision}
    cand = Artifact("engine", out, parent.spec, sha256_bytes(plan), parent.config, meta)
    # the reference runs on the CPU: eager FP32 there is true FP32 (cuDNN would use TF32 on recent GPUs)
    with TensorRTRunner(cand, opts.device, engine_bytes=plan, cuda_graphs=opts.cuda_graphs,
                        version_compatible=version_compatible) as runner:
        gate = run_gate(runner, reference_runner(parent, "cpu"), opts.thresholds or thresholds_for(precision), precision,
                        opts.gate_samples)
    report = EngineReport(None, precision, profile, workspace_mib, rt, build_s, len(plan), sha256_bytes(onnx_bytes),
                          cache_note, gate, recipe, version_compatible)
    if not gate.accepted:
        if raise_on_reject:
            raise GateRejected(gate, f"the {precision} engine", "nothing was written; see `gan-deploy build-engine --help`")
        return report

    src_flag = "--checkpoint" if parent.kind == "checkpoint" else "--onnx"
    rebuild = (f"gan-deploy build-engine --{precision} {src_flag} {parent.path.resolve()} --out {out} "
               f"--min-batch {mn} --opt-batch {opt} --max-batch {mx} --workspace {workspace_mib}"
               + (" --version-compatible" if version_compatible else ""))
    side = make_sidecar(engine_sha256=sha256_bytes(plan), precision=precision, runtime=rt, profile=profile,
                        onnx_sha256=report.onnx_sha256,
                        source={"kind": parent.kind, "path": str(parent.path.resolve()), "sha256": sha256_file(parent.path)},
                        spec=parent.spec, generator=parent.config.to_dict() if parent.config else None,
                        workspace_mib=workspace_mib, rebuild=rebuild, gate=gate.to_dict(),
                        version_compatible=version_compatible)
    atomic_write_bytes(out, plan)
    atomic_write_text(sidecar_path(out), json.dumps(side, indent=2) + "\n")
    report.path = out
    return report


def build_engine(parent: Artifact, opts: EngineOptions, raise_on_reject: bool = False) -> EngineReport:
    """What `gan-deploy build-engine` runs: `engine_from_artifact`, returning a rejected engine's report."""
    return engine_from_artifact(parent, opts, raise_on_reject)

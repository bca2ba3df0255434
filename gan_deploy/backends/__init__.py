"""Backends: one module per runtime behind `Runner.infer()` (base.py); the registry, `auto` and the one precision
rule (`resolve_backend`, which `make_runner` follows) live here; a batch's memory estimate in memory.py.
Adding a backend = one module in this folder + one line in BACKENDS.

May import: core, artifacts, export (onnxruntime exports a checkpoint in memory).

Modules are imported only when their backend is used, so `import gan_deploy` needs none of
onnxruntime, tensorrt or a GPU.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Callable

from gan_deploy.core.errors import BackendUnavailable, GanDeployError

if TYPE_CHECKING:
    from gan_deploy.artifacts.artifact import Artifact
    from gan_deploy.backends.base import Runner

# name -> "module:class"; the order is the `auto` preference, fastest first (measured with `gan-deploy bench`)
BACKENDS: dict[str, str] = {
    "tensorrt": "gan_deploy.backends.tensorrt:TensorRTRunner",
    "onnxruntime": "gan_deploy.backends.onnxruntime:OnnxRuntimeRunner",
    "openvino": "gan_deploy.backends.openvino:OpenVinoRunner",
    "compile": "gan_deploy.backends.compile:CompileRunner",
    "eager": "gan_deploy.backends.eager:EagerRunner",
}
CHOICES = tuple(BACKENDS) + ("auto",)


def runner_class(name: str) -> type["Runner"]:
    if name not in BACKENDS:
        raise GanDeployError("unknown backend", repr(name), expected=f"one of {', '.join(CHOICES)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def unavailable_reason(name: str) -> str | None:
    return runner_class(name).unavailable_reason()


def backends_for(artifact: "Artifact") -> list[str]:
    """Backends that can run this artifact on this machine (any device), in registry order."""
    return [n for n in BACKENDS if artifact.kind in runner_class(n).accepts and unavailable_reason(n) is None]


# `auto`'s preference per device, fastest first (measured with `gan-deploy bench`). torch.compile is left out:
# it pays seconds of compilation per batch shape, so it runs only when asked for. On a GPU, eager PyTorch (with
# CUDA graphs) comes before onnxruntime when onnxruntime has no CUDA provider: a CPU runtime is never chosen
# on a GPU machine while a CUDA path exists for the artifact.
AUTO_ORDER = {"cuda": ("tensorrt", "onnxruntime", "eager"), "cpu": ("onnxruntime", "eager")}


def choose_backend(artifact: "Artifact", device: str = "auto", batch_size: int | None = None, threads: int | None = None,
                   vet: Callable[["Runner"], Any] | None = None, spin: bool = True) -> tuple[str, str]:
    """`auto` for `artifact` on `device`: (backend name, why), e.g. ("eager", "auto on cuda: eager; skipped
    tensorrt (runs engines only), onnxruntime (no CUDA provider: onnxruntime-gpu is not installed)").

    On a CPU, given the command's `batch_size`, onnxruntime is measured against the challengers (OpenVINO) on this
    artifact at that batch size and the faster by more than noise runs (autoprobe.py; the choice is cached per
    artifact, machine, threads and batch size). `vet(runner)` may refuse a challenger after activation (the
    quality gate re-run on that runtime). `spin`: whether the command lets onnxruntime's threads spin (generate does
    not): the probe runs onnxruntime as the command will. Without a batch size (serve, eval): onnxruntime, as before."""
    from gan_deploy.backends.base import resolve_device

    dev = resolve_device(device)
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    skipped: list[str] = []
    for name in AUTO_ORDER[kind]:
        cls = runner_class(name)
        why = None
        if artifact.kind not in cls.accepts:
            why = f"runs {' or '.join(cls.accepts)} files only"
        else:
            why = cls.unavailable_reason() or cls.device_reason(dev)
        if why is None:
            said = f"; skipped {', '.join(skipped)}" if skipped else ""
            if kind == "cpu" and batch_size:
                chosen, measured = _cpu_challenge(artifact, name, batch_size, threads, vet, spin)
                if measured:
                    return chosen, f"auto on {dev}: {chosen} ({measured}){said}"
            return name, f"auto on {dev}: {name}{said}"
        skipped.append(f"{name} ({why.split(' (Note:')[0]})")
    if kind == "cuda":  # no CUDA path for this artifact at all: a CPU runtime, said out loud
        for name in AUTO_ORDER["cpu"]:
            cls = runner_class(name)
            if artifact.kind in cls.accepts and cls.unavailable_reason() is None:
                return name, (f"auto on {dev}: no CUDA path for this {artifact.kind} ({'; '.join(skipped)}), so {name} "
                              f"on the CPU; for the GPU install onnxruntime-gpu, build an engine, or export your "
                              f"generator with `export --factory` to run it with PyTorch")
    raise BackendUnavailable("no backend can run this artifact here", artifact.describe(), expected="; ".join(skipped),
                             hint=unavailable_hint(artifact))


def unavailable_hint(artifact: "Artifact") -> str:
    """What to do when nothing here runs `artifact`: what fits its kind (onnxruntime cannot run an engine)."""
    if artifact.kind == "engine":
        sidecar = artifact.metadata.get("gan_deploy.engine_sidecar")
        said = f" ({sidecar} names it under \"source\")" if sidecar else ""
        return ("a TensorRT engine runs only on an NVIDIA GPU with TensorRT installed; on this machine run the ONNX file or "
                f"checkpoint it was built from{said} with --onnx FILE or -c FILE")
    able = sorted({n for n in BACKENDS if artifact.kind in runner_class(n).accepts})
    return f"install a backend that runs {artifact.kind} files: {', '.join(able)} (pip install onnxruntime, or onnxruntime-gpu for the GPU)"


def _cpu_challenge(artifact: "Artifact", incumbent: str, batch_size: int, threads: int | None,
                   vet: Callable[["Runner"], Any] | None, spin: bool = True) -> tuple[str, str | None]:
    """(backend, why) of the measured choice between `incumbent` and the CPU challengers that can run this artifact;
    (incumbent, None) when none can."""
    from gan_deploy.backends import autoprobe
    from gan_deploy.backends.onnxruntime import env_threads

    if os.environ.get(autoprobe.ENV_MEASURE, "").strip() == "0":  # a fixed choice (reproducible runs, the test suite)
        return incumbent, None
    challengers = [n for n in autoprobe.CHALLENGERS if n != incumbent and artifact.kind in runner_class(n).accepts
                   and unavailable_reason(n) is None and runner_class(n).device_reason("cpu") is None]
    if not challengers:
        return incumbent, None
    t = threads or env_threads()
    key = (artifact.sha256, incumbent, tuple(challengers), batch_size, t, spin)
    if key not in _CHOSEN:  # one probe per process (and per machine: autoprobe caches it on disk)
        options: dict[str, Any] = {"threads": t} if t else {}
        options["spin"] = spin  # onnxruntime as the command runs it (spinning threads measure well on an idle CPU only)
        _CHOSEN[key] = autoprobe.measured_choice(artifact, incumbent, challengers, batch_size, t,
                                                 lambda n: runner_class(n)(artifact, device="cpu", **options), vet, spin=spin)
    return _CHOSEN[key]


_CHOSEN: dict[tuple, tuple[str, str]] = {}


def pick_backend(name: str, artifact: "Artifact", device: str = "auto", batch_size: int | None = None,
                 vet: Callable[["Runner"], Any] | None = None, spin: bool = True) -> str:
    if name == "auto":
        return choose_backend(artifact, device, batch_size, vet=vet, spin=spin)[0]
    cls = runner_class(name)
    reason = cls.unavailable_reason()
    if reason:
        raise BackendUnavailable(f"backend '{name}' is not available here", reason)
    return name


TORCH_BACKENDS = ("eager", "compile")  # the backends that take a `precision` option


def resolve_backend(name: str, artifact: "Artifact", device: str = "auto", precision: str = "fp32", *,
                    batch_size: int | None = None, threads: int | None = None, vet: Callable[["Runner"], Any] | None = None,
                    spin: bool = True) -> tuple[str, dict[str, Any], str | None]:
    """The one precision rule: (backend, its options, why `auto` chose it) for backend `name` (or `auto`, chosen
    for `device`, measured at `batch_size` on a CPU: see choose_backend) running `artifact` at the torch
    `precision` (backends.torch_common.TORCH_PRECISIONS).

    A precision other than fp32 is computed by the PyTorch backends only: with `auto` it picks eager when the
    artifact has PyTorch weights; any other backend refuses it (ONNX files and engines carry their own precision)."""
    from gan_deploy.backends.torch_common import check_precision

    check_precision(precision)
    why = None
    if name == "auto" and precision != "fp32" and artifact.kind in runner_class("eager").accepts:
        name, why = "eager", f"auto with precision {precision}: eager (reduced torch precisions run on the PyTorch backends)"
    elif name == "auto":
        name, why = choose_backend(artifact, device, batch_size, threads, vet, spin)
    else:
        name = pick_backend(name, artifact, device)
    return name, precision_options(name, precision), why


def precision_options(name: str, precision: str) -> dict[str, Any]:
    """The runner options that carry `precision` to backend `name`: {"precision": ...} for a PyTorch backend,
    nothing for the others, which compute in fp32 only (a reduced precision there is refused)."""
    if name in TORCH_BACKENDS:
        return {"precision": precision}
    if precision != "fp32":
        raise GanDeployError(f"precision {precision} applies to the PyTorch backends only", f"backend {name}",
                             expected=f"backend {' or '.join(TORCH_BACKENDS)}",
                             hint="ONNX files and engines carry their own precision (gan-deploy quantize, build-engine)")
    return {}


def make_runner(name: str, artifact: "Artifact", device: str = "auto", *, batch_size: int | None = None,
                vet: Callable[["Runner"], Any] | None = None, **options: Any) -> "Runner":
    """The runner for backend `name` (or `auto`, chosen for `device`, measured at `batch_size` on a CPU) on
    `artifact`, not yet activated; a `precision=` option follows `resolve_backend`'s rule. `runner.auto_reason`
    says why `auto` chose it."""
    name, precision, why = resolve_backend(name, artifact, device, options.pop("precision", None) or "fp32",
                                           batch_size=batch_size, threads=options.get("threads"), vet=vet,
                                           spin=options.get("spin", True))
    runner = runner_class(name)(artifact, device=device, **options, **precision)
    runner.auto_reason = why
    return runner

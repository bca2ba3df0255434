"""Backends: one module per runtime behind `Runner.infer()` (base.py); the registry and `auto` live here.
Adding a backend = one module in this folder + one line in BACKENDS.

May import: core, nets, artifacts, export (onnxruntime exports a checkpoint in memory).

Modules are imported only when their backend is used, so `import gan_deploy` needs none of
onnxruntime, tensorrt or a GPU.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gan_deploy.core.errors import BackendUnavailable, GanDeployError

if TYPE_CHECKING:
    from gan_deploy.artifacts.artifact import Artifact
    from gan_deploy.backends.base import Runner

# name -> "module:class"; the order is the `auto` preference, fastest first (measured with `gan-deploy bench`)
BACKENDS: dict[str, str] = {
    "tensorrt": "gan_deploy.backends.tensorrt:TensorRTRunner",
    "onnxruntime": "gan_deploy.backends.onnxruntime:OnnxRuntimeRunner",
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
    """Backends that can run this artifact on this machine, fastest first."""
    return [n for n in BACKENDS if artifact.kind in runner_class(n).accepts and unavailable_reason(n) is None]


def pick_backend(name: str, artifact: "Artifact") -> str:
    if name == "auto":
        usable = backends_for(artifact)
        # torch.compile pays seconds of compilation per batch shape: `auto` only picks it when asked for
        usable = [n for n in usable if n != "compile"]
        if not usable:
            raise BackendUnavailable("no backend can run this artifact here", artifact.describe(), hint="install onnxruntime (CPU) or onnxruntime-gpu/tensorrt (GPU)")
        return usable[0]
    cls = runner_class(name)
    reason = cls.unavailable_reason()
    if reason:
        raise BackendUnavailable(f"backend '{name}' is not available here", reason)
    return name


def make_runner(name: str, artifact: "Artifact", device: str = "auto", **options: Any) -> "Runner":
    """The runner for backend `name` (or `auto`) on `artifact`, not yet activated."""
    return runner_class(pick_backend(name, artifact))(artifact, device=device, **options)

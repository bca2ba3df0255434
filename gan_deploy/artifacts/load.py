"""`load_artifact`: the one entry point every command uses to open a generator, dispatching on its kind."""
from __future__ import annotations

from pathlib import Path

from gan_deploy.artifacts.artifact import Artifact, artifact_from_checkpoint
from gan_deploy.artifacts.engine import artifact_from_engine
from gan_deploy.artifacts.onnx import artifact_from_onnx
from gan_deploy.core.errors import GanDeployError


def load_artifact(checkpoint: str | Path | None = None, onnx: str | Path | None = None,
                  engine: str | Path | None = None, value_range: tuple[float, float] | None = None) -> Artifact:
    """An engine, else an ONNX file, else a checkpoint (default: the shipped model). Give at most one.

    Describing never needs the runtime: an engine is read from its sidecar (no TensorRT, no GPU), so a
    CPU-only machine can plan work for GPU workers; the runtime is checked when a runner is activated."""
    given = [f"{k} {v}" for k, v in (("checkpoint", checkpoint), ("onnx", onnx), ("engine", engine)) if v is not None]
    if len(given) > 1:
        raise GanDeployError("more than one generator given", " and ".join(given), expected="one of checkpoint, onnx or engine",
                             hint="pass only the one to run")
    if engine is not None:
        return artifact_from_engine(engine)
    if onnx is None and checkpoint is not None and str(checkpoint).endswith(".onnx"):
        onnx, checkpoint = checkpoint, None
    if onnx is not None:
        return artifact_from_onnx(onnx, value_range)
    if value_range is not None:
        raise GanDeployError("a value range was given for a checkpoint", f"{value_range[0]:g},{value_range[1]:g}",
                             expected="a value range only for a foreign ONNX file",
                             hint="drop it: a checkpoint's config says its range")
    return artifact_from_checkpoint(checkpoint)

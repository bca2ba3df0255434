"""`Artifact`: a generator on disk in one of its forms (checkpoint, ONNX, engine), described without its runtime."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gan_deploy.artifacts.checkpoint import Checkpoint, read_checkpoint
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import sha256_bytes
from gan_deploy.nets.config import GeneratorConfig

META_PREFIX = "gan_deploy."
META_PRECISION = META_PREFIX + "precision"  # fp32 | fp16 | int8 (ONNX metadata; engines: the sidecar's)


@dataclass
class Artifact:
    """A generator on disk in one of its forms, plus what was learnt by inspecting it."""

    kind: str  # one of spec.KINDS: checkpoint | onnx | engine
    path: Path
    spec: GeneratorSpec
    sha256: str
    config: GeneratorConfig | None = None  # known for checkpoints and our own exports
    metadata: dict[str, str] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    _onnx_bytes: bytes | None = field(default=None, repr=False)

    @property
    def precision(self) -> str:
        return self.metadata.get(META_PRECISION, "fp32")

    def torch_module(self) -> Any:
        """The PyTorch generator (checkpoints only): eager and compile run this."""
        if self.checkpoint is None:
            raise GanDeployError(f"the {self.kind} artifact has no PyTorch weights", str(self.path), expected="a .safetensors checkpoint", hint="use --backend onnxruntime (or tensorrt) for ONNX files")
        from gan_deploy.artifacts.checkpoint import load_generator
        return load_generator(self.checkpoint)

    @classmethod
    def onnx_in_memory(cls, path: str | Path, spec: GeneratorSpec, data: bytes, config: GeneratorConfig | None = None,
                       metadata: dict[str, str] | None = None, sha256: str | None = None) -> "Artifact":
        """An ONNX artifact whose serialized model is `data`, held in memory: a candidate not written yet (`path` is
        where it would go), or a file read with its external weights inlined (`sha256` is then the file's)."""
        return cls("onnx", Path(path), spec, sha256 or sha256_bytes(data), config, dict(metadata or {}), _onnx_bytes=data)

    def onnx_bytes(self, export: Callable[["Artifact"], bytes] | None = None) -> bytes:
        """Serialized ONNX of an ONNX artifact. A checkpoint has none on disk: `export(self)` makes it, once (cached
        here); `gan_deploy.export.onnx_bytes_of` passes its in-memory exporter (the export stage sits above this
        one, so this class never imports it)."""
        if self._onnx_bytes is None and self.kind == "checkpoint" and export is not None:
            self._onnx_bytes = export(self)
        if self._onnx_bytes is None:
            if self.kind != "onnx":
                raise GanDeployError(f"a {self.kind} is not an ONNX file", str(self.path),
                                     expected="an ONNX artifact",
                                     hint="export it first (gan_deploy.export.onnx_bytes_of exports a checkpoint in memory)")
            self._onnx_bytes = self.path.read_bytes()
        return self._onnx_bytes

    def files(self) -> list[Path]:
        """The files this artifact is read from: the model and, for a checkpoint or an engine, its .json sidecar
        (what no command may write over)."""
        return [self.path, self.path.with_suffix(".json")] if self.kind in ("checkpoint", "engine") else [self.path]

    def describe(self) -> str:
        s = self.spec
        lo, hi = s.value_range
        return (f"{self.kind} {self.path} (Z={s.latent_dim}, image {s.channels}x{s.height}x{s.width}, "
                f"range [{lo:g}, {hi:g}], {self.precision})")



def artifact_from_checkpoint(path: str | Path | None = None) -> Artifact:
    ck = read_checkpoint(path)
    spec = ck.spec if ck.config is None else GeneratorSpec.from_config(ck.config)
    assert spec is not None  # a factory checkpoint always carries its spec
    return Artifact("checkpoint", ck.path, spec, ck.sha256, ck.config, checkpoint=ck)

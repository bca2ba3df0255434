"""Artifacts: the generator in each of its forms on disk, and how to describe it without running it.

Owns: the spec every artifact reduces to (`spec.py`: GeneratorSpec, value ranges, precisions), the
`Artifact` record (`artifact.py`), the three kinds: checkpoint (`checkpoint.py`: safetensors + JSON
sidecar), ONNX with its metadata (`onnx.py`), TensorRT engine with its sidecar (`engine.py`), and
`load_artifact` (`load.py`), which dispatches on the kind.
May import: gan_deploy.core, gan_deploy.nets (a checkpoint is rebuilt from its config). Never a runtime:
describing an engine needs neither TensorRT nor a GPU.
"""
from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.load import load_artifact
from gan_deploy.artifacts.spec import VALUE_RANGES, GeneratorSpec, parse_value_range

__all__ = ["Artifact", "GeneratorSpec", "VALUE_RANGES", "load_artifact", "parse_value_range"]

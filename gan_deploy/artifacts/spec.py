"""The contract every generator artifact reduces to, and the names shared by every stage.

`GeneratorSpec`: one latent input ([N, Z] or [N, Z, 1, 1]), one image output [N, C, H, W], and the output
value range. The lists below are the one source of each set of names (CLI choices come from them).
"""
from __future__ import annotations

from dataclasses import dataclass

from gan_deploy.core.errors import GanDeployError
from gan_deploy.nets.config import GeneratorConfig

# output value ranges a foreign ONNX generator may declare (tanh, sigmoid): --value-range choices
VALUE_RANGES: dict[str, tuple[float, float]] = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0)}
# precisions an ONNX model or TensorRT engine carries in its metadata / sidecar
ARTIFACT_PRECISIONS = ("fp32", "fp16", "int8")
# the kinds of artifact `load_artifact` reads
KINDS = ("checkpoint", "onnx", "engine")


@dataclass(frozen=True)
class GeneratorSpec:
    latent_dim: int  # Z
    channels: int  # C
    height: int  # H
    width: int  # W
    value_range: tuple[float, float] = (-1.0, 1.0)
    latent_rank: int = 2  # 2: [N, Z]; 4: [N, Z, 1, 1]
    input_name: str = "z"
    output_name: str = "image"

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,) if self.latent_rank == 2 else (self.latent_dim, 1, 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @classmethod
    def from_config(cls, cfg: GeneratorConfig) -> "GeneratorSpec":
        return cls(cfg.latent_dim, cfg.channels, cfg.image_size, cfg.image_size,
                   (float(cfg.value_range[0]), float(cfg.value_range[1])))


def parse_value_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    key = text.replace(" ", "").replace("[", "").replace("]", "")
    if key not in VALUE_RANGES:
        raise GanDeployError("unknown output value range", repr(text), expected="'-1,1' (tanh) or '0,1' (sigmoid)")
    return VALUE_RANGES[key]

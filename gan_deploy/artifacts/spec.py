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
# each kind in a sentence: "cannot run an ONNX file"
KIND_NAMES = {"checkpoint": "a PyTorch checkpoint", "onnx": "an ONNX file", "engine": "a TensorRT engine"}
KIND_PLURALS = {"checkpoint": "PyTorch checkpoints", "onnx": "ONNX files", "engine": "TensorRT engines"}
# the option that passes each kind on the command line
KIND_OPTIONS = {"checkpoint": "--checkpoint", "onnx": "--onnx", "engine": "--engine"}


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, f"a {kind}")


def kinds_phrase(kinds: tuple[str, ...] | list[str]) -> str:
    """("checkpoint", "onnx") -> "PyTorch checkpoints or ONNX files"."""
    return " or ".join(KIND_PLURALS.get(k, k) for k in kinds)


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
    fixed_batch: int | None = None  # an ONNX graph whose batch axis is a fixed number: the only batch it runs

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


# what one image and one latent may be: a foreign file declaring more is damaged or hostile, not a generator
# (a 65536 x 65536 RGB image is 51 GB of float32, before the first batch)
MAX_LATENT_DIM = 65536
MAX_SIDE = 16384
MAX_PIXELS = 1 << 26  # C x H x W per image: 256 MiB of float32


def check_spec_bounds(spec: GeneratorSpec, where: str, hint: str | None = None) -> GeneratorSpec:
    """Refuse a declared contract no generator has: sizes < 1, a huge latent, an image of gigabytes."""
    bad = None
    if not 1 <= spec.latent_dim <= MAX_LATENT_DIM:
        bad = (f"latent size {spec.latent_dim}", f"1..{MAX_LATENT_DIM}")
    elif spec.channels not in (1, 3):
        bad = (f"{spec.channels} channels", "1 or 3")
    elif not (1 <= spec.height <= MAX_SIDE and 1 <= spec.width <= MAX_SIDE):
        bad = (f"image {spec.height}x{spec.width}", f"sides in 1..{MAX_SIDE}")
    elif spec.channels * spec.height * spec.width > MAX_PIXELS:
        bad = (f"image {spec.channels}x{spec.height}x{spec.width}", f"at most {MAX_PIXELS:,} values per image")
    elif spec.fixed_batch is not None and not 1 <= spec.fixed_batch <= 1 << 20:
        bad = (f"fixed batch {spec.fixed_batch}", "1..1048576")
    if bad:
        raise GanDeployError("generator contract out of bounds", f"{where}: {bad[0]}", expected=bad[1], hint=hint)
    return spec


def parse_value_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    key = text.replace(" ", "").replace("[", "").replace("]", "")
    if key not in VALUE_RANGES:
        raise GanDeployError("unknown output value range", repr(text), expected="'-1,1' (tanh) or '0,1' (sigmoid)")
    return VALUE_RANGES[key]

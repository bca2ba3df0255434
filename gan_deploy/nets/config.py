"""Configuration saved inside every checkpoint, so a generator can be rebuilt from its files alone."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from gan_deploy.core.errors import GanDeployError

FORMAT_VERSION = 1
ARCHS = ("dcgan", "mlp")  # the architectures nets/networks.py builds


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator: architecture and its dimensions, output contract."""

    arch: str = "dcgan"  # dcgan | mlp
    latent_dim: int = 64  # Z
    channels: int = 1  # C of the output image
    image_size: int = 32  # H == W
    width: int = 64  # base feature width (dcgan: channels of the last hidden layer; mlp: hidden units / 4)
    value_range: tuple[float, float] = (-1.0, 1.0)  # tanh output

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "generator config") -> "GeneratorConfig":
        """Rebuild from a checkpoint's or ONNX file's JSON, checking every field (type and range): a hand-edited
        or foreign sidecar gets a one-line error naming the field, never a traceback or a 5 TB allocation."""
        from gan_deploy.core.jsonio import field, is_number

        what, hint = "generator config", "the file was edited or written by another tool; re-export or retrain"
        if not isinstance(d, dict):
            raise GanDeployError("generator config is not a JSON object", f"{where}: {type(d).__name__}", hint=hint)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GanDeployError("unknown generator config keys", unknown, expected=f"a subset of {sorted(known)}", hint="the checkpoint was written by a newer or different tool; re-export it")
        kw: dict[str, Any] = {
            "arch": field(d, "arch", where, what, kind="str", check=lambda v: v in ARCHS, expected=" | ".join(ARCHS),
                          hint=hint, required=False, default=cls.arch),
            "latent_dim": field(d, "latent_dim", where, what, kind="int", check=lambda v: 1 <= v <= MAX_LATENT_DIM,
                                expected=f"an integer in 1..{MAX_LATENT_DIM}", hint=hint, required=False, default=cls.latent_dim),
            "channels": field(d, "channels", where, what, kind="int", check=lambda v: v in (1, 3), expected="1 or 3",
                              hint=hint, required=False, default=cls.channels),
            "image_size": field(d, "image_size", where, what, kind="int", check=lambda v: 4 <= v <= MAX_IMAGE_SIZE,
                                expected=f"an integer in 4..{MAX_IMAGE_SIZE}", hint=hint, required=False, default=cls.image_size),
            "width": field(d, "width", where, what, kind="int", check=lambda v: 1 <= v <= MAX_WIDTH,
                           expected=f"an integer in 1..{MAX_WIDTH}", hint=hint, required=False, default=cls.width),
        }
        vr = field(d, "value_range", where, what, kind="list",
                   check=lambda v: len(v) == 2 and all(is_number(x) for x in v) and v[1] > v[0],
                   expected="[lo, hi] with lo < hi, e.g. [-1, 1]", hint=hint, required=False, default=list(cls.value_range))
        kw["value_range"] = (float(vr[0]), float(vr[1]))
        cfg = cls(**kw)
        cfg.check_size(where, hint)
        return cfg

    def check_size(self, where: str = "generator config", hint: str | None = None) -> None:
        """Refuse a config whose generator could not be built (a dcgan needs a power-of-two image size) or would
        not fit in memory: each field may be in range while their combination asks for terabytes."""
        if self.arch == "dcgan" and (self.image_size < 8 or self.image_size & (self.image_size - 1)):
            raise GanDeployError("generator config field is invalid", f"{where}: image_size={self.image_size}",
                                 expected="a power of two >= 8 for the dcgan architecture (8, 16, 32, 64 ...)", hint=hint)
        n = estimated_parameters(self)
        if n > MAX_PARAMETERS:
            raise GanDeployError("generator config asks for a generator too large to build", f"{where}: {self.arch} "
                                 f"width={self.width} image_size={self.image_size} latent_dim={self.latent_dim} -> "
                                 f"{n:.3g} parameters ({4 * n / 2**30:,.0f} GiB of float32 weights)",
                                 expected=f"at most {MAX_PARAMETERS:.3g} parameters ({4 * MAX_PARAMETERS >> 30} GiB)",
                                 hint=hint or "lower width or image_size")


def estimated_parameters(cfg: GeneratorConfig) -> int:
    """The generator's parameter count, computed from the config alone (what nets/networks.py would build)."""
    z, c, s, w = cfg.latent_dim, cfg.channels, cfg.image_size, cfg.width
    if cfg.arch == "mlp":
        h = (4 * w, 8 * w, 16 * w)
        return (z * h[0] + h[0]) + (h[0] * h[1] + h[1]) + (h[1] * h[2] + h[2]) + (h[2] + 1) * c * s * s
    n_up = max(1, (max(s, 8) // 4).bit_length() - 1)
    ch = w * 2 ** (n_up - 1)
    total = z * ch * 16 + 2 * ch
    for _ in range(n_up - 1):
        total += ch * (ch // 2) * 16 + 2 * (ch // 2)
        ch //= 2
    return total + ch * c * 16 + c


# Bounds on what a config may ask for, field by field; larger values are a damaged or hostile file, not a model.
# Fields in range can still multiply into terabytes (dcgan width 4096 at 256x256 is 5.5e11 parameters), so the
# parameter count the config implies is bounded too (MAX_PARAMETERS: 4 GiB of float32 weights).
MAX_LATENT_DIM = 65536
MAX_IMAGE_SIZE = 1024
MAX_WIDTH = 4096
MAX_PARAMETERS = 1 << 30


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)

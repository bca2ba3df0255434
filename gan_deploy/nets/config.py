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
        return cls(**kw)


# Bounds on what a config may ask for: a generator of these sizes allocates at most a few GB (width 4096 at
# 256x256 is about 3 GB of float32 weights); larger values are a damaged or hostile file, not a model.
MAX_LATENT_DIM = 65536
MAX_IMAGE_SIZE = 1024
MAX_WIDTH = 4096


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)

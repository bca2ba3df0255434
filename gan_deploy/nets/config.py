"""Configuration saved inside every checkpoint, so a generator can be rebuilt from its files alone."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from gan_deploy.core.errors import GanDeployError

FORMAT_VERSION = 1


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
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GanDeployError("unknown generator config keys", unknown, expected=f"a subset of {sorted(known)}", hint="the checkpoint was written by a newer or different tool; re-export it")
        d = dict(d)
        if "value_range" in d:
            d["value_range"] = tuple(float(v) for v in d["value_range"])
        return cls(**d)


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)

"""The one small interface every backend implements (after Polygraphy's BaseRunner).

A runner is built from an `Artifact`, loads lazily on `activate()`, and maps latents to images:

    infer(z: float32 [N, Z]) -> float32 [N, C, H, W] on the host, in the artifact's value range

`infer()` validates and calls `infer_impl()`; backends implement only `infer_impl()` (and `_load()`).
Timing is not done here: `gan_deploy.core.timing` measures every backend the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.core.errors import GanDeployError


class Runner(ABC):
    name: ClassVar[str]
    accepts: ClassVar[tuple[str, ...]]  # artifact kinds this backend can run
    # expected max |image - eager FP32 image| on the [-1, 1] scale; conformance tests and --compare use it
    tolerance: ClassVar[float] = 1e-4

    def __init__(self, artifact: Artifact, device: str = "auto", **options: Any):
        if artifact.kind not in self.accepts:
            raise GanDeployError(f"backend '{self.name}' cannot run a {artifact.kind}", str(artifact.path), expected=f"one of: {', '.join(self.accepts)}", hint=self._accepts_hint(artifact))
        self.artifact = artifact
        self.spec = artifact.spec
        self.device = resolve_device(device)
        self.options = options
        self.active = False
        self.auto_reason: str | None = None  # set by make_runner when `auto` chose this backend

    @staticmethod
    def _accepts_hint(artifact: Artifact) -> str:
        return "use --backend auto to pick one that can" if artifact.kind != "checkpoint" else "export first"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the backend can run here; otherwise why not and how to fix it."""
        return None

    # -- lifecycle -------------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.active:
            self._load()
            self.active = True
        return self

    def close(self) -> None:
        self.active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------------
    def _checked(self, z: np.ndarray) -> np.ndarray:
        if not self.active:
            self.activate()
        if not isinstance(z, np.ndarray) or z.dtype != np.float32 or z.ndim != 2 or z.shape[1] != self.spec.latent_dim or z.shape[0] < 1:
            got = f"{type(z).__name__} {getattr(z, 'dtype', '')} {getattr(z, 'shape', '')}"
            raise GanDeployError("bad latent batch", got, expected=f"float32 array [N>=1, {self.spec.latent_dim}]")
        if self.spec.latent_rank == 4:
            z = z.reshape(z.shape[0], self.spec.latent_dim, 1, 1)
        return np.ascontiguousarray(z)

    def infer(self, z: np.ndarray) -> np.ndarray:
        """float32 latents [N, Z] -> float32 images [N, C, H, W] on the host, in the artifact's value range."""
        return self.infer_impl(self._checked(z))

    def infer_pixels(self, z: np.ndarray) -> np.ndarray:
        """float32 latents [N, Z] -> uint8 pixels [N, H, W, C] on the host, exactly `to_uint8(infer(z))`.

        GPU backends override `infer_pixels_impl` to convert on the device and copy 4x fewer bytes to the host
        (the D2H copy of float32 images is what bounds generate on a fast GPU). The array is the caller's."""
        return self.infer_pixels_impl(self._checked(z))

    def infer_pixels_impl(self, z: np.ndarray) -> np.ndarray:
        from gan_deploy.core.images import to_uint8

        return to_uint8(self.infer_impl(z), self.spec.value_range)

    @classmethod
    def device_reason(cls, device: str) -> str | None:
        """None when this backend computes on `device` (cpu | cuda[:N]); else why not (for `auto`'s message)."""
        return None

    def synchronize(self) -> None:
        """Wait for queued device work (the timing module calls this before reading the clock)."""

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def infer_impl(self, z: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


def resolve_device(device: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu. Cheap when torch is already imported."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise GanDeployError("unknown device", repr(device), expected="auto, cpu, cuda or cuda:N")
    if device == "cpu":
        return device
    import torch
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise GanDeployError("CUDA device requested but none is available", device, expected="a machine with an NVIDIA GPU and a CUDA build of torch", hint="use --device cpu")
    return device

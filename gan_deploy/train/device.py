"""Which device a run trains on."""
from __future__ import annotations

import torch

from gan_deploy.core.errors import GanDeployError


def resolve_device(spec: str, local_rank: int, distributed: bool) -> torch.device:
    """--device (auto | cpu | cuda | cuda:N) -> a torch.device; under torchrun, `cuda` means this rank's GPU."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise GanDeployError("CUDA requested but not available", spec, expected="a machine with an NVIDIA GPU and a CUDA build of torch", hint="use --device cpu (or auto)")
        if spec == "cuda":
            return torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
        try:
            dev = torch.device(spec)
        except RuntimeError:
            dev = None
        if dev is None or dev.index is None or dev.index >= torch.cuda.device_count():
            raise GanDeployError("no such CUDA device", spec, expected=f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return dev
    raise GanDeployError("unknown device", spec, expected="auto, cpu, cuda or cuda:N")

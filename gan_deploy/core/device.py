"""Which device a run computes on: `auto | cpu | cuda | cuda:N`, resolved by one set of rules.

Every stage that takes `--device` resolves it here (backends for inference, train with a thin wrapper that adds
the distributed rank's GPU). torch is imported only when the answer needs it (anything but `cpu`).
"""
from __future__ import annotations

from gan_deploy.core.errors import GanDeployError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_device(spec: str) -> str:
    """The device name, lower-cased, when it is well formed (auto | cpu | cuda | cuda:N); no GPU is touched."""
    name = (spec or "auto").lower()
    if name in ("auto", "cpu", "cuda"):
        return name
    index = name[5:] if name.startswith("cuda:") else ""
    if not index.isdigit():
        raise GanDeployError("unknown device", repr(spec), expected=DEVICE_CHOICES)
    return f"cuda:{int(index)}"


def resolve_device(spec: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; cuda and cuda:N only when that GPU exists. Returns
    "cpu", "cuda" or "cuda:N". Reads the GPU count without initialising CUDA; cheap once torch is imported."""
    name = check_device(spec)
    if name == "cpu":
        return name
    import torch

    has_cuda = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise GanDeployError("CUDA requested but not available", spec,
                             expected="a machine with an NVIDIA GPU and a CUDA build of torch", hint="use --device cpu (or auto)")
    if name != "cuda":
        n = torch.cuda.device_count()
        if int(name[5:]) >= n:
            raise GanDeployError("no such CUDA device", spec, expected=f"cuda:0 .. cuda:{n - 1}")
    return name

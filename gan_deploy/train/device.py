"""Which device a run trains on, and `--deterministic`."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from gan_deploy.core import device as core_device
from gan_deploy.core.errors import GanDeployError
from gan_deploy.train.distributed import Env

CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS is deterministic only with a fixed workspace configuration (NVIDIA's docs)


def resolve_device(spec: str, env: Env) -> torch.device:
    """--device (auto | cpu | cuda | cuda:N) -> a torch.device, by `core.device.resolve_device`'s rules plus what
    training adds: under torchrun, `cuda` means this rank's GPU (LOCAL_RANK), checked against the GPU count
    before anything touches a GPU; bare `cuda` alone is the current device."""
    name = core_device.resolve_device(spec)
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        if env.local_world > 1:  # NCCL refuses two ranks on one GPU ("Duplicate GPU detected")
            raise GanDeployError("--device cuda:N would put every process on one GPU", spec, expected=f"--device cuda with torchrun ({env.local_world} processes here): each process takes the GPU of its LOCAL_RANK", hint="use --device cuda (or auto)")
        return torch.device(name)
    if not env.distributed:
        return torch.device("cuda", torch.cuda.current_device())
    n = torch.cuda.device_count()  # reads the count without initialising CUDA
    if env.local_world > n or env.local_rank >= n:  # every rank sees it, so all of them stop, not only the extra ones
        raise GanDeployError("more processes than GPUs on this machine", f"{env.local_world} processes (LOCAL_RANK {env.local_rank}) for {n} GPU{'s' if n != 1 else ''}", expected=f"one process per GPU: at most {n}", hint=f"use torchrun --nproc-per-node {n} (or fewer), or --device cpu")
    return torch.device("cuda", env.local_rank)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, spec: str) -> Iterator[None]:
    """--deterministic, for the duration of a run: bit-identical results on one GPU, at a cost in speed.

    torch.use_deterministic_algorithms(True) (an op without a deterministic kernel raises), cuDNN deterministic
    and not benchmarking (autotuning picks kernels by timing, which varies), no TF32 for matmuls and cuDNN
    (precision that also depends on the kernel picked), and CUBLAS_WORKSPACE_CONFIG=:4096:8 unless the user set
    it. That variable must be set before cuBLAS starts (PyTorch reads it once per process), so it is set before
    the device is resolved and stays set; a caller that has already used CUDA in this process should set it in
    the environment first. The torch flags are restored afterwards. On the CPU nothing changes: its kernels are
    deterministic already (same machine, same thread count), and the weights are the same with or without it."""
    if not enabled:
        yield
        return
    if (spec or "auto").lower() != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark)
    tf32 = _tf32_flags()
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    # the legacy flags, not fp32_precision = "ieee": torch 2.13 refuses to read the legacy cuDNN flag (as Inductor
    # and others do) once the new API has set conv and rnn to "ieee"; allow_tf32 = False keeps both readable
    torch.backends.cuda.matmul.allow_tf32 = False
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark = saved[2], saved[3]
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32 = tf32


def _tf32_flags() -> tuple[bool, bool] | None:
    """(matmul, cuDNN) allow_tf32, or None when the caller set the flags in a way the legacy getters refuse."""
    try:
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    except RuntimeError:
        return None

"""Multi-process plumbing for `torchrun --nproc-per-node N -m gan_deploy train`: the process group, the two
collectives the trainer needs, per-rank seeds and the end-of-run weight digests.

DistributedDataParallel runs over gloo (CPU) or NCCL (GPU). A single process (WORLD_SIZE unset or 1) never
touches torch.distributed.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gan_deploy.core.errors import GanDeployError


@dataclass(frozen=True)
class Env:
    """What torchrun put in the environment, checked: WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1  # processes on this machine

    @property
    def distributed(self) -> bool:
        return self.world > 1


_ENV_HINT = "start the processes with torchrun, or unset WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE to train in one process"


def read_env(environ: Mapping[str, str] | None = None) -> Env:
    """The torchrun variables of `environ` (default os.environ); a bad value is a one-line GanDeployError."""
    env = os.environ if environ is None else environ

    def number(name: str, default: int, low: int, high: int | None, what: str) -> int:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            v = int(raw.strip())
        except ValueError:
            v = None
        if v is None or v < low or (high is not None and v >= high):
            raise GanDeployError(f"bad {name} in the environment", repr(raw), expected=what, hint=_ENV_HINT)
        return v

    world = number("WORLD_SIZE", 1, 1, None, "an integer >= 1 (the number of processes)")
    rank = number("RANK", 0, 0, world, f"an integer in 0 .. {world - 1} (WORLD_SIZE is {world})")
    local_world = number("LOCAL_WORLD_SIZE", world, 1, world + 1, f"an integer in 1 .. {world} (WORLD_SIZE is {world})")
    local_rank = number("LOCAL_RANK", 0, 0, local_world, f"an integer in 0 .. {local_world - 1} (this machine's processes)")
    return Env(world, rank, local_rank, local_world)


@dataclass
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device: torch.device, env: Env) -> Dist:
    """Join the process group torchrun describes in the environment (a no-op for one process)."""
    if not env.distributed:
        return Dist()
    import torch.distributed as dist

    owns = False
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's communicator and every bare .cuda() go to this rank's GPU
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "gloo" and not dist.is_gloo_available():
            raise GanDeployError("torch.distributed gloo backend unavailable", torch.__version__, expected="a torch build with gloo", hint="run a single process")
        dist.init_process_group(backend)
        owns = True
    return Dist(dist.get_rank(), dist.get_world_size(), env.local_rank, owns)


def destroy(ctx: Dist) -> None:
    if ctx.owns_group:
        import torch.distributed as dist
        dist.destroy_process_group()


def all_gather_bytes(x: torch.Tensor, ctx: Dist, device: torch.device) -> list[torch.Tensor]:
    """All ranks' copies of a same-sized uint8 tensor, on the CPU (a collective: every rank must call it)."""
    if ctx.world == 1:
        return [x.cpu()]
    import torch.distributed as dist

    # NCCL moves only CUDA tensors; gloo only CPU ones
    x = x.to(device) if device.type == "cuda" else x.cpu()
    out = [torch.empty_like(x) for _ in range(ctx.world)]
    dist.all_gather(out, x)
    return [t.cpu() for t in out]


def barrier(ctx: Dist) -> None:
    if ctx.world > 1:
        import torch.distributed as dist
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """A well-mixed, per-rank seed for the latent generator (63 bits, so torch accepts it)."""
    return int(np.random.SeedSequence([seed, rank, 0x6761]).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def param_digest(*models: nn.Module) -> bytes:
    """sha256 of the models' parameters, in order."""
    h = hashlib.sha256()
    for m in models:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


def rank_digests(ctx: Dist, device: torch.device, *models: nn.Module) -> list[str]:
    """Every rank's param_digest, hex (a collective). DDP keeps replicas identical: any difference is a bug."""
    mine = torch.frombuffer(bytearray(param_digest(*models)), dtype=torch.uint8)
    return [bytes(t.tolist()).hex() for t in all_gather_bytes(mine, ctx, device)]

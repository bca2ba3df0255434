"""The exponential moving average (EMA) of the generator's weights, which is what a run saves (visibly steadier
samples than the raw generator), and its "standing statistics": before the EMA generator is saved or sampled
its batch-norm statistics are recomputed for its own weights, since the running statistics it copies belong to
the raw generator."""
from __future__ import annotations

import copy

import torch
from torch import nn

BN_CALIBRATION = (8, 128)  # batches x batch size of random latents used to recompute the EMA's BN statistics


def ema_decay_at(step: int, decay: float) -> float:
    """EMA with warm-up: early on, average over ~step/10 steps rather than 1000 stale ones."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):  # type: ignore[assignment]  # BN running stats, num_batches_tracked
        e.copy_(b)


@torch.no_grad()
def standing_stats(model: nn.Module, latent_dim: int, seed: int, device: torch.device) -> nn.Module:
    """A copy of `model` in eval mode whose batch-norm statistics are measured on its own outputs.

    The EMA generator's copied running statistics belong to the raw generator's weights; recomputing them as
    an exact average over BN_CALIBRATION random batches makes eval-mode output match what the EMA weights do.
    Uses its own torch.Generator, so training randomness is untouched."""
    m = copy.deepcopy(model)
    bns = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    if bns:
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # None = cumulative average over all calibration batches
        gen = torch.Generator(device=device).manual_seed(seed)
        m.train()
        n_batches, bs = BN_CALIBRATION
        for _ in range(n_batches):
            m(torch.randn(bs, latent_dim, generator=gen, device=device))
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
    return m.eval()

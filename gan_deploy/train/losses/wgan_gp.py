"""wgan-gp: Wasserstein loss with a gradient penalty (Gulrajani et al. 2017).

    D: D(G(z)) - D(x) + gp_weight * (|grad D(x_hat)| - 1)^2      G: -D(G(z))

The critic has no batch norm: the gradient penalty is per sample, and batch norm couples the samples.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

N_CRITIC = 5
CRITIC_BATCH_NORM = False


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return fake_logits.mean() - real_logits.mean()  # the penalty is added by the trainer


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator,
            scaler: torch.amp.GradScaler, autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """Mean over the batch of (|dD/dx| at x_hat - 1)^2, x_hat on random points between real and fake.

    Draws one uniform per sample from `gen` (the training latent generator: part of the checkpointed stream)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen, device=real.device)  # [B, 1, 1, 1]
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with autocast():
        out = D(x_hat).float().sum()
    # under fp16 the gradient is taken of the scaled output (so it does not underflow), then unscaled
    (grad,) = torch.autograd.grad(scaler.scale(out), x_hat, create_graph=True)
    grad = grad.float() / scaler.get_scale() if scaler.is_enabled() else grad.float()
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()

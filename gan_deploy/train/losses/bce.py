"""bce: the non-saturating GAN loss (Goodfellow et al. 2014).

    D: softplus(-D(x)) + softplus(D(G(z)))      G: softplus(-D(G(z)))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

N_CRITIC = 1
CRITIC_BATCH_NORM = True
penalty = None


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()

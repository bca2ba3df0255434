"""hinge (Miyato et al. 2018).

    D: relu(1 - D(x)) + relu(1 + D(G(z)))       G: -D(G(z))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

N_CRITIC = 1
CRITIC_BATCH_NORM = True
penalty = None


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()

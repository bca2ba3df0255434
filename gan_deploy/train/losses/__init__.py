"""The GAN losses, one module per loss; REGISTRY maps a `--loss` name to its module.

A loss module defines:

    d_loss(real_logits, fake_logits) -> scalar   the discriminator's loss, before any penalty
    g_loss(fake_logits) -> scalar                the generator's loss
    penalty                                      None, or penalty(D, real, fake, gen, scaler, autocast) -> scalar,
                                                 added to d_loss x --gp-weight; a penalty takes a gradient of D
                                                 (double backward), so the trainer does not torch.compile D
    N_CRITIC                                     the default of --n-critic (discriminator updates per step)
    CRITIC_BATCH_NORM                            whether the discriminator may use batch norm

Logits come in as float32 [B, 1] (the trainer casts them out of autocast). Adding a loss: one file here and
one line in REGISTRY; `--loss` (its click.Choice) and TrainOptions' check read LOSSES. This module imports no
torch, so the CLI can read the names cheaply; get() imports the loss module itself.
"""
from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY: dict[str, str] = {  # --loss name -> module of this package
    "bce": "bce",
    "hinge": "hinge",
    "wgan-gp": "wgan_gp",
}
LOSSES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> ModuleType:
    """The module implementing loss `name` (one of LOSSES; KeyError otherwise, TrainOptions checks first)."""
    return importlib.import_module(f"{__name__}.{REGISTRY[name]}")

"""`TrainOptions`: every setting of `gan-deploy train`, in a module light enough for the CLI to import
without torch (the trainer itself is gan_deploy.train.loop)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

LOSSES = ("bce", "hinge", "wgan-gp")
AMP_MODES = ("none", "bf16", "fp16")
DEFAULT_STEPS = 1500  # ~5-7 minutes on a 2-core CPU at ~200-300 images/s: recognisable digits (see models/)
# The quality score needs at least this many images per side (gan_deploy.quality.features.MIN_SAMPLES; repeated here
# so the CLI can check --eval-samples without importing numpy; a test keeps the two equal).
EVAL_MIN_SAMPLES = 32

# Options that define the model and its optimisation: a resumed run must keep them.
FIXED_ON_RESUME = ("data", "arch", "image_size", "channels", "latent_dim", "width", "disc_width", "loss",
                   "batch_size", "lr", "beta1", "beta2", "n_critic", "gp_weight", "ema_decay", "seed")


@dataclass
class TrainOptions:
    data: str = "digits"  # built-in name, folder of images, .npy/.npz or MNIST IDX file (see gan_deploy.data.sources)
    out: str | None = None  # run folder; None -> runs/<dataset>_<arch>
    arch: str = "dcgan"  # dcgan | mlp
    image_size: int = 32
    channels: int = 1
    latent_dim: int = 64
    width: int = 64  # generator width (dcgan: channels of the last hidden layer)
    disc_width: int | None = None  # None -> width
    loss: str = "bce"
    steps: int = DEFAULT_STEPS  # generator updates, counted from 0 (a resumed run trains up to this total)
    batch_size: int = 64  # per process
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int | None = None  # discriminator updates per step; None -> 5 for wgan-gp, else 1
    gp_weight: float = 10.0  # wgan-gp only
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (CUDA only, with a gradient scaler)
    compile: bool = False  # torch.compile the networks
    sample_every: int = 500  # 0 -> only at the end
    checkpoint_every: int = 500  # 0 -> only at the end
    log_every: int = 50
    eval_every: int = 500  # steps between quality scores in metrics.jsonl (and one at step 0 and at the end); 0 = off
    eval_samples: int = 1000  # generated images per quality score (fixed latents, so scores along a run compare)
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None  # None -> a progress bar when stderr is a terminal, else a line per sample

    def resolved(self) -> "TrainOptions":
        o = dataclasses.replace(self)
        o.disc_width = o.disc_width or o.width
        o.n_critic = o.n_critic or (5 if o.loss == "wgan-gp" else 1)
        return o

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

"""`TrainOptions`: every setting of `gan-deploy train`, and their checks, in a module light enough for the
CLI to import without torch (the trainer itself is gan_deploy.train.loop)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gan_deploy.core.errors import GanDeployError
from gan_deploy.train.losses import LOSSES
from gan_deploy.train.losses import get as get_loss

if TYPE_CHECKING:
    from gan_deploy.nets.config import GeneratorConfig

__all__ = ["AMP_MODES", "DEFAULT_STEPS", "EVAL_MIN_SAMPLES", "FIXED_ON_RESUME", "LOSSES", "TrainOptions", "validate"]

AMP_MODES = ("none", "bf16", "fp16")
DEFAULT_STEPS = 1500  # ~5-7 minutes on a 2-core CPU at ~200-300 images/s: recognisable digits (see models/)
# The quality score needs at least this many images per side (gan_deploy.quality.features.MIN_SAMPLES; repeated here
# so the CLI can check --eval-samples without importing numpy; a test keeps the two equal).
EVAL_MIN_SAMPLES = 32

# Options that define the model and its optimisation: a resumed run must keep them. (Not deterministic: it
# picks kernels, not the model, so a run may be resumed with or without it.)
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
    loss: str = "bce"  # one of LOSSES (gan_deploy.train.losses)
    steps: int = DEFAULT_STEPS  # generator updates, counted from 0 (a resumed run trains up to this total)
    batch_size: int = 64  # per process
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int | None = None  # discriminator updates per step; None -> the loss's N_CRITIC (5 for wgan-gp, else 1)
    gp_weight: float = 10.0  # wgan-gp only
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (CUDA only, with a gradient scaler)
    compile: bool = False  # torch.compile the networks
    deterministic: bool = False  # deterministic GPU kernels, no TF32: bit-identical runs on one GPU (slower); CPU: no change
    sample_every: int = 500  # 0 -> only at the end
    checkpoint_every: int = 500  # 0 -> only at the end
    log_every: int = 50
    eval_every: int = 500  # steps between quality scores in metrics.jsonl (and one at step 0 and at the end); 0 = off
    eval_samples: int = 1000  # generated images per quality score (fixed latents, so scores along a run compare)
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None  # core.progress: True bar, False silent, None a bar on a terminal, else a line per sample

    def resolved(self) -> TrainOptions:
        """A copy with the defaults that depend on other options filled in (imports the loss module, so torch)."""
        o = dataclasses.replace(self)
        o.disc_width = o.disc_width or o.width
        o.n_critic = o.n_critic or (get_loss(o.loss).N_CRITIC if o.loss in LOSSES else 1)
        return o

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(o: TrainOptions) -> GeneratorConfig:
    """Check resolved options; the generator config they describe. Raises a one-line GanDeployError."""
    from gan_deploy.nets.config import GeneratorConfig
    from gan_deploy.nets.networks import ARCHS, _check

    if o.arch not in ARCHS:
        raise GanDeployError("unknown architecture", repr(o.arch), expected=f"one of {', '.join(ARCHS)}")
    if o.loss not in LOSSES:
        raise GanDeployError("unknown loss", repr(o.loss), expected=f"one of {', '.join(LOSSES)}")
    if o.amp not in AMP_MODES:
        raise GanDeployError("unknown --amp mode", repr(o.amp), expected=f"one of {', '.join(AMP_MODES)}")
    for name in ("steps", "batch_size", "latent_dim", "width", "disc_width", "n_critic", "log_every"):
        v = getattr(o, name)
        if not isinstance(v, int) or v < 1:
            raise GanDeployError(f"bad {name}", v, expected="an integer >= 1")
    for name in ("sample_every", "checkpoint_every"):
        v = getattr(o, name)
        if not isinstance(v, int) or v < 0:
            raise GanDeployError(f"bad {name}", v, expected="an integer >= 0 (0 = only at the end)")
    if not isinstance(o.eval_every, int) or o.eval_every < 0:
        raise GanDeployError("bad eval_every", o.eval_every, expected="an integer >= 0 (0 = no quality scores)")
    if not isinstance(o.eval_samples, int) or o.eval_samples < EVAL_MIN_SAMPLES:
        raise GanDeployError("bad eval_samples", o.eval_samples, expected=f"an integer >= {EVAL_MIN_SAMPLES}", hint="1000 is the default; FD is biased upward at small n")
    if not (o.lr > 0 and math.isfinite(o.lr)):
        raise GanDeployError("bad learning rate", o.lr, expected="a number > 0", hint="the usual GAN value is 2e-4")
    if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
        raise GanDeployError("bad Adam betas", (o.beta1, o.beta2), expected="each in [0, 1)", hint="DCGAN uses 0.5, 0.999")
    if not 0 <= o.ema_decay < 1:
        raise GanDeployError("bad EMA decay", o.ema_decay, expected="a number in [0, 1) (0 = no averaging)", hint="0.999 is usual")
    if o.gp_weight < 0:
        raise GanDeployError("bad gradient penalty weight", o.gp_weight, expected="a number >= 0", hint="10 is usual")
    if not 0 <= o.seed < 2**63:
        raise GanDeployError("bad seed", o.seed, expected="an integer in [0, 2**63)")
    if o.resume and o.overwrite:
        raise GanDeployError("--resume and --overwrite contradict each other", None, expected="one of them")
    cfg = GeneratorConfig(o.arch, o.latent_dim, o.channels, o.image_size, o.width)
    _check(cfg)  # dcgan needs a power-of-two image size, channels 1 or 3
    return cfg

"""gan_deploy.train: the GAN trainer behind `gan-deploy train`.

It owns the training loop (loop), its settings (options: TrainOptions, torch-free for the CLI), the losses
(losses/: one module per loss and their registry), multi-process plumbing (distributed), the device and its
determinism settings (device), the run folder and resumable state (state), the EMA generator (ema), the
in-training quality score (evaluator), the data order (batches), Ctrl-C handling (interrupt) and the result
(result).

May import: core, nets, data, artifacts and quality. Nothing else of gan_deploy (never precision, backends,
generate, bench, serve or cli).

`from gan_deploy.train import train, TrainOptions` is cheap: the torch-heavy names (train, TrainResult,
options_for_resume) are imported on first use, so the CLI can read TrainOptions without loading torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gan_deploy.train.options import TrainOptions

if TYPE_CHECKING:
    from gan_deploy.train.loop import train
    from gan_deploy.train.result import TrainResult
    from gan_deploy.train.state import options_for_resume

__all__ = ["TrainOptions", "TrainResult", "options_for_resume", "train"]

_LAZY = {"train": "gan_deploy.train.loop", "TrainResult": "gan_deploy.train.result",
         "options_for_resume": "gan_deploy.train.state"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

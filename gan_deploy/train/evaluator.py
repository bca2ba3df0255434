"""The quality score during training (--eval-every N, rank 0 only).

At step 0, every N steps and at the end, the EMA generator (with standing BN statistics, as saved) generates
--eval-samples images from fixed latents (latents_range(seed, 0, n): the same images at every eval) and
gan_deploy.quality.features scores them against the training data (features of at most EVAL_REFERENCE_MAX
images, computed once per run) with the shipped feature classifier: FD with a small bootstrap spread,
precision, recall. It draws no training randomness (own latents, own BN-calibration generator, numpy
bootstrap generator), so a run's weights are bit-identical with evals on or off; images/s excludes eval time.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from gan_deploy.core.errors import GanDeployError
from gan_deploy.train.options import EVAL_MIN_SAMPLES

EVAL_BOOTSTRAP = 5  # resamples behind an in-training FD spread: enough to tell a real change from noise, ~20 ms each
EVAL_K = 5  # neighbours for precision/recall, as `gan-deploy eval`
EVAL_REFERENCE_MAX = 10_000  # training images scored against (a seeded subset above this): bounds the one-off cost
EVAL_BATCH = 500  # generator batch when producing the eval images


class Evaluator:
    """The quality score during training: fixed latents, reference features computed once, a small bootstrap.

    Everything random here has its own source (counter-based latents, numpy's bootstrap generator, the BN
    calibration generator of ema.standing_stats), so scoring never moves the training RNG streams."""

    def __init__(self, reference: np.ndarray, n: int, seed: int, latent_dim: int, value_range: tuple[float, float],
                 device: torch.device):
        from gan_deploy.core.latents import latents_range
        from gan_deploy.core.timing import Stopwatch
        from gan_deploy.quality.features import features, load_classifier

        self.clf = load_classifier()
        self.n_dataset = len(reference)
        if len(reference) > EVAL_REFERENCE_MAX:
            # a seeded subset (numpy's own generator, not torch's): bounds the one-off feature cost on big data sets
            idx = np.random.default_rng([seed, 0x6576616C]).choice(len(reference), EVAL_REFERENCE_MAX, replace=False)
            reference = reference[np.sort(idx)]
        with Stopwatch() as sw:
            self.f_ref = features(reference, classifier=self.clf)  # [R, D] float64, reused by every eval
        self.reference_seconds = sw.seconds
        self.z = torch.from_numpy(latents_range(seed, 0, n, latent_dim))  # [n, Z] on the host, moved per batch
        self.seed, self.value_range, self.device = seed, value_range, device

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> dict[str, Any]:
        """Score `model` (an eval-mode generator, standing BN statistics): an "eval" metrics record."""
        from gan_deploy.core.timing import Stopwatch
        from gan_deploy.quality.distances import score_features
        from gan_deploy.quality.evaluate import rescale
        from gan_deploy.quality.features import features

        with Stopwatch() as sw:
            x = np.concatenate([model(self.z[s:s + EVAL_BATCH].to(self.device)).float().cpu().numpy()
                                for s in range(0, len(self.z), EVAL_BATCH)])  # [n, C, H, W]
            x = rescale(x, self.value_range, (-1.0, 1.0))
            sc = score_features(features(x, classifier=self.clf), self.f_ref, EVAL_K, EVAL_BOOTSTRAP, self.seed, False,
                                self.clf.sha256)
        d = sc.to_dict()  # NaN -> None: JSON has no NaN
        return {"event": "eval", "step": step, "fd": _round(d["fd"]), "fd_spread": _round(d["fd_spread"]),
                "precision": _round(d["precision"]), "recall": _round(d["recall"]), "n": sc.n_a,
                "n_reference": sc.n_b, "bootstrap": sc.bootstrap, "seconds": round(sw.seconds, 3)}


def make_evaluator(images: np.ndarray, n: int, seed: int, latent_dim: int, value_range: tuple[float, float],
                   device: torch.device, main: bool) -> Evaluator | None:
    """The evaluator on the main rank (None elsewhere), after checks every rank makes, so that a missing
    classifier or too little data stops all of them before anything is written."""
    if len(images) < EVAL_MIN_SAMPLES:
        raise GanDeployError("data set too small for the quality score", f"{len(images)} images", expected=f"at least {EVAL_MIN_SAMPLES} to fit feature statistics", hint="add data, or turn it off: --eval-every 0")
    from gan_deploy.quality.features import load_classifier

    load_classifier()
    return Evaluator(images, n, seed, latent_dim, value_range, device) if main else None


def quality_text(q: dict[str, Any]) -> str:
    spread = "" if q.get("fd_spread") is None else f" ± {q['fd_spread']:.3g}"
    return f"FD {q['fd']:.4g}{spread}, precision {q['precision']:.3f}, recall {q['recall']:.3f}"


def _round(v: float | None, digits: int = 6) -> float | None:  # 6: so "%.3f" of it matches eval (0.926544 -> 0.9265 -> "0.926")
    return None if v is None else round(v, digits)

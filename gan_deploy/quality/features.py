"""The quality score: Fréchet distance, precision and recall in the feature space of a shipped digits classifier.

No Inception weights can be downloaded here, so the features come from a small CNN that this project trains on
scikit-learn's digits (the default data set) and ships in `models/digits_classifier.safetensors`. The score is

* FD: the Fréchet distance between Gaussians fitted to the two feature sets (Heusel et al. 2017, "FID" with
  our own feature extractor), with its bootstrap spread so a difference can be told from resampling noise;
* precision / recall: k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019). Precision is the fraction of
  generated samples inside the reference manifold (are the samples realistic?), recall the fraction of
  reference samples inside the generated manifold (is the variety covered? mode collapse lowers it).

The two sides can be real images (`reference_images`), another generator's images or another backend's images
from the same latents: the last is the quantization gate's comparison. See docs/quality.md for what the
numbers mean, the figures measured when validating them, and what they do not mean on other data sets.

    python -m gan_deploy.quality --train-classifier      # retrain and re-ship models/digits_classifier.*
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import sha256_file
from gan_deploy.core.resources import FEATURE_CLASSIFIER, asset_path

CLASSIFIER_PATH = asset_path(FEATURE_CLASSIFIER)  # shipped in the wheel: gan_deploy/assets/
CLASSIFIER_FORMAT = "gan-deploy-feature-classifier"
CLASSIFIER_FORMAT_VERSION = 1
INPUT_SIZE = 32  # the classifier's input: [N, 1, 32, 32] in [-1, 1]
MIN_SAMPLES = 32  # below this the covariance of the features is too poorly estimated to mean anything
FEATURE_BATCH = 512  # fixed batch size: the same image always goes through the same kernels
DATASETS = ("digits",)  # built-in data sets (gan_deploy.data.sources.BUILTIN)
MANIFEST = "manifest.csv"  # written by `gan-deploy generate` beside its images



# -- the feature classifier ------------------------------------------------------------------------


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the classifier on one intra-op thread, restoring the caller's setting afterwards.

    Why: (1) features are then bit-identical whatever torch.get_num_threads() the caller has (a reduction
    split across threads can round differently); (2) on the shared 2-core machines this runs on, two OpenMP
    threads competing with other processes spin at their barriers: a training step measured 20-570 ms with 2
    threads and a steady 35 ms with 1. The classifier is small enough that one thread is fast anyway.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _net_class():
    """The classifier module, built lazily so importing gan_deploy.quality.features does not import torch."""
    import torch
    import torch.nn as nn

    class DigitsFeatureNet(nn.Module):
        """conv(w)-pool-conv(2w)-pool-conv(4w)-pool -> flatten 4x4 -> linear(D) = features -> ReLU -> linear(10).

        The feature is the penultimate layer *before* its ReLU: dense, roughly Gaussian activations with no
        dead (always-zero) dimensions, which suits a Fréchet distance that fits a Gaussian to them. Flattening
        the 4x4 map (instead of global average pooling) keeps where strokes are, so misplaced parts show.
        """

        def __init__(self, width: int = 16, feature_dim: int = 128, classes: int = 10):
            super().__init__()
            w = width
            self.body = nn.Sequential(
                nn.Conv2d(1, w, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),  # 32 -> 16
                nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),  # 16 -> 8
                nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),  # 8 -> 4
                nn.Flatten(),
                nn.Linear(4 * w * 4 * 4, feature_dim),
            )
            self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(feature_dim, classes))

        def features(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 32, 32] -> [N, D]
            return self.body(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 32, 32] -> [N, classes] logits
            return self.head(self.body(x))

    return DigitsFeatureNet


@dataclass
class FeatureClassifier:
    """The loaded classifier: the module (eval mode, CPU) and its JSON config."""

    path: Path
    config: dict[str, Any]
    model: Any  # DigitsFeatureNet

    @property
    def feature_dim(self) -> int:
        return int(self.config["architecture"]["feature_dim"])

    @property
    def sha256(self) -> str:
        return str(self.config.get("weights_sha256", ""))


def load_classifier(path: str | Path | None = None) -> FeatureClassifier:
    """Load (once per process and file version) the feature classifier, refusing a damaged or foreign file."""
    p = Path(path) if path is not None else CLASSIFIER_PATH
    p = p.with_suffix(".safetensors")
    side = p.with_suffix(".json")
    if not p.exists() or not side.exists():
        raise GanDeployError("feature classifier not found", f"{p} (+ {side.name})", expected="the files shipped in models/", hint="restore them from git, or retrain: python -m gan_deploy.quality --train-classifier")
    # keyed by both files' hashes: a retrained classifier in the same place is picked up, an unchanged one
    # is not re-read (hashing 0.6 MB costs about a millisecond)
    return _load_classifier_cached(str(p.resolve()), sha256_file(p), sha256_file(side))


@functools.lru_cache(maxsize=4)
def _load_classifier_cached(path: str, actual_sha: str, _config_sha: str) -> FeatureClassifier:
    from safetensors.torch import load_file

    p = Path(path)
    side = p.with_suffix(".json")
    from gan_deploy.core.jsonio import field, read_document

    hint = "restore both files from a clean install, or retrain: python -m gan_deploy.quality --train-classifier"
    cfg = read_document(side, CLASSIFIER_FORMAT, CLASSIFIER_FORMAT_VERSION, what="feature classifier config", hint=hint)
    arch = field(cfg, "architecture", side, "feature classifier config", kind="dict", hint=hint)
    for key, hi in (("width", 256), ("feature_dim", 4096), ("classes", 1000)):
        field(arch, key, side, "feature classifier config", kind="int", check=lambda v, hi=hi: 1 <= v <= hi,  # type: ignore[misc]
              expected=f"an integer in 1..{hi}", hint=hint)
    if cfg.get("weights_sha256") != actual_sha:
        raise GanDeployError("feature classifier weights do not match their config", f"{p} sha256 {actual_sha[:12]}", expected=f"{str(cfg.get('weights_sha256'))[:12]} as recorded in {side.name}", hint="restore both files from git, or retrain: python -m gan_deploy.quality --train-classifier")
    arch = cfg["architecture"]
    model = _net_class()(int(arch["width"]), int(arch["feature_dim"]), int(arch["classes"]))
    try:
        model.load_state_dict(load_file(str(p)), strict=True)
    except Exception as e:  # safetensors and load_state_dict raise several types
        raise GanDeployError("feature classifier weights do not fit its config", f"{p.name} ({type(e).__name__})", expected=f"weights of {arch}", hint="retrain: python -m gan_deploy.quality --train-classifier") from None
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return FeatureClassifier(p, cfg, model)


# -- features ----------------------------------------------------------------------------------------


def _check_images(images: Any, value_range: Sequence[float], name: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        got = f"{type(images).__name__} {getattr(images, 'shape', '')}"
        raise GanDeployError(f"bad {name} images", got, expected="a numpy array [N, C, H, W]", hint="add the channel axis: images[:, None] for [N, H, W] gray images")
    n, c, h, w = images.shape
    if n == 0:
        raise GanDeployError(f"no {name} images", f"shape {images.shape}", expected="at least one image")
    if c not in (1, 3):
        raise GanDeployError(f"bad {name} images: channel count", f"shape {images.shape}", expected="C = 1 (gray) or 3 (RGB) in [N, C, H, W]", hint="channels-last arrays need images.transpose(0, 3, 1, 2)")
    if h < 8 or w < 8:
        raise GanDeployError(f"{name} images too small", f"{h}x{w}", expected="at least 8x8")
    if images.dtype.kind not in "fiu":
        raise GanDeployError(f"bad {name} image dtype", str(images.dtype), expected="float32 in value_range")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise GanDeployError("bad value range", tuple(value_range), expected="(lo, hi) with hi > lo", hint="(-1, 1) for tanh, (0, 1) for sigmoid")
    x = np.asarray(images, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite.reshape(n, -1)).any(axis=1).sum())
        raise GanDeployError(f"{name} images contain NaN or inf", f"{bad} of {n} images", expected="finite pixel values", hint="the generator diverged or overflowed (fp16?); check it with `gan-deploy generate`")
    # a little overshoot is normal (reduced precision); far outside means the range was given wrong
    slack = 0.1 * (hi - lo)
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo - slack or xmax > hi + slack:
        raise GanDeployError(f"{name} images outside the value range", f"[{xmin:.3g}, {xmax:.3g}]", expected=f"values in [{lo:g}, {hi:g}]", hint="pass value_range=(0, 1) for sigmoid outputs, or divide uint8 pixels by 255")
    return x


def features(images: np.ndarray, value_range: Sequence[float] = (-1.0, 1.0),
             classifier: FeatureClassifier | str | Path | None = None) -> np.ndarray:
    """Classifier features of images: [N, C, H, W] float in `value_range` -> [N, D] float64.

    RGB is converted to gray (ITU-R 601 luma) and other sizes are resized to 32x32 (bilinear, antialiased when
    shrinking), so any image can be scored; the features only carry digit knowledge, see docs/quality.md.
    """
    import torch
    import torch.nn.functional as F

    x = _check_images(images, value_range, "input")
    clf = classifier if isinstance(classifier, FeatureClassifier) else load_classifier(classifier)
    lo, hi = float(value_range[0]), float(value_range[1])
    out = np.empty((len(x), clf.feature_dim), dtype=np.float64)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
    with torch.inference_mode(), _one_torch_thread():
        for s in range(0, len(x), FEATURE_BATCH):
            t = torch.from_numpy(x[s:s + FEATURE_BATCH])
            t = ((t - lo) * (2.0 / (hi - lo)) - 1.0).clamp_(-1.0, 1.0)
            if t.shape[1] == 3:
                t = (t * luma).sum(dim=1, keepdim=True)
            if t.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
                shrink = t.shape[2] > INPUT_SIZE or t.shape[3] > INPUT_SIZE
                t = F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=shrink)
            out[s:s + len(t)] = clf.model.features(t.contiguous()).double().numpy()
    return out



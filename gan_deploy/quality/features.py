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

    python -m gan_deploy.quality.features --train-classifier      # retrain and re-ship models/digits_classifier.*
"""
from __future__ import annotations

import functools
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from gan_deploy.core.errors import GanDeployError, StaleArtifact
from gan_deploy.core.resources import FEATURE_CLASSIFIER, asset_path
from gan_deploy.core.fileio import atomic_path, atomic_write_text, sha256_file

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
        raise GanDeployError("feature classifier not found", f"{p} (+ {side.name})", expected="the files shipped in models/", hint="restore them from git, or retrain: python -m gan_deploy.quality.features --train-classifier")
    # keyed by both files' hashes: a retrained classifier in the same place is picked up, an unchanged one
    # is not re-read (hashing 0.6 MB costs about a millisecond)
    return _load_classifier_cached(str(p.resolve()), sha256_file(p), sha256_file(side))


@functools.lru_cache(maxsize=4)
def _load_classifier_cached(path: str, actual_sha: str, _config_sha: str) -> FeatureClassifier:
    from safetensors.torch import load_file

    p = Path(path)
    side = p.with_suffix(".json")
    try:
        cfg = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GanDeployError("feature classifier config is not valid JSON", f"{side} ({e})", hint="restore it from git or retrain: python -m gan_deploy.quality.features --train-classifier") from None
    if not isinstance(cfg, dict) or cfg.get("format") != CLASSIFIER_FORMAT:
        raise GanDeployError("not a gan-deploy feature classifier config", str(side), expected=f'"format": "{CLASSIFIER_FORMAT}"')
    if cfg.get("weights_sha256") != actual_sha:
        raise GanDeployError("feature classifier weights do not match their config", f"{p} sha256 {actual_sha[:12]}", expected=f"{str(cfg.get('weights_sha256'))[:12]} as recorded in {side.name}", hint="restore both files from git, or retrain: python -m gan_deploy.quality.features --train-classifier")
    arch = cfg["architecture"]
    model = _net_class()(int(arch["width"]), int(arch["feature_dim"]), int(arch["classes"]))
    try:
        model.load_state_dict(load_file(str(p)), strict=True)
    except Exception as e:  # safetensors and load_state_dict raise several types
        raise GanDeployError("feature classifier weights do not fit its config", f"{p.name} ({type(e).__name__})", expected=f"weights of {arch}", hint="retrain: python -m gan_deploy.quality.features --train-classifier") from None
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return FeatureClassifier(p, cfg, model)


# -- reference data ----------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits exactly as the data module serves them to the trainer: float32 [1797, 1, 32, 32]
    in [-1, 1] and int64 labels. The generator learns from these, so the score compares against these."""
    from gan_deploy.data.sources import load_dataset

    ds = load_dataset("digits", INPUT_SIZE, 1)
    assert ds.labels is not None  # digits always has labels
    return ds.images, ds.labels


def load_images(source: str | Path) -> np.ndarray:
    """Images from `source` as float32 [N, C, H, W] in [-1, 1].

    * "digits" or any data set `gan_deploy.data.sources.load_dataset` reads (image folder, .npy/.npz, MNIST IDX file),
      loaded at 32x32 gray: the classifier's input, so nothing is lost;
    * a `gan-deploy generate` output folder (it has a manifest.csv): exactly the files the manifest lists, in
      any of generate's formats (png, jpg, npy), so a sample grid saved in the same folder is not scored.
    """
    p = Path(str(source)).expanduser()
    if str(source) not in DATASETS and p.is_dir() and (p / MANIFEST).is_file():
        return _load_generated_folder(p)
    from gan_deploy.data.sources import load_dataset

    return load_dataset(source, INPUT_SIZE, 1).images


def _load_generated_folder(folder: Path) -> np.ndarray:
    import csv

    from gan_deploy.core.images import decode

    try:
        with open(folder / MANIFEST, newline="") as f:
            names = [row["file"] for row in csv.DictReader(f)]
    except (OSError, KeyError, csv.Error, UnicodeDecodeError) as e:
        raise GanDeployError("unreadable generate manifest", f"{folder / MANIFEST} ({type(e).__name__}: {e})", expected="the manifest.csv written by `gan-deploy generate` (columns index, seed, file)", hint="regenerate the folder, or delete manifest.csv to read every image in it") from None
    if not names:
        raise GanDeployError("generate manifest lists no images", str(folder / MANIFEST), expected="one row per image file")
    decoded = []
    for name in names:
        f = folder / name
        try:
            img = decode(f)
        except Exception as e:  # PIL and numpy raise many types for missing or damaged files
            raise GanDeployError("image listed in the manifest is unreadable", f"{f} ({type(e).__name__})", expected="every file manifest.csv lists", hint="the run was interrupted or files were removed; "
                                 "regenerate, or delete manifest.csv to read the images present") from None
        img = img[:, :, None] if img.ndim == 2 else img
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise GanDeployError("unsupported image", f"{f}: {img.dtype} {img.shape}", expected="uint8 [H, W, 1|3|4]")
        decoded.append(img[:, :, :3])  # alpha carries no digit
    if len({im.shape for im in decoded}) != 1:
        raise GanDeployError("images in the generate folder differ in size", str(folder), expected="one size")
    a = np.stack(decoded).transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    return np.ascontiguousarray(a, dtype=np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def reference_images(dataset: str | Path = "digits", n: int | None = None, seed: int = 0) -> np.ndarray:
    """The real images to compare against, float32 [N, C, H, W] in [-1, 1] (see `load_images` for the sources:
    "digits" = all 1797 of scikit-learn's digits at 32x32). `n`: a seeded random subset of that many."""
    images = load_images(dataset)
    if n is not None:
        if n < 1:
            raise GanDeployError("bad number of reference images", n, expected="n >= 1")
        if n < len(images):
            idx = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
            images = images[idx]
    return images


def rescale(images: np.ndarray, src: Sequence[float], dst: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
    """Map images linearly from value range `src` to `dst` (float32)."""
    (a, b), (c, d) = src, dst
    if (a, b) == (c, d):
        return np.asarray(images, dtype=np.float32)
    return ((np.asarray(images, dtype=np.float32) - np.float32(a)) * np.float32((d - c) / (b - a)) + np.float32(c)).astype(np.float32)


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


# -- the score ---------------------------------------------------------------------------------------


@dataclass
class QualityScore:
    fd: float  # Fréchet distance in classifier feature space (0 = same feature statistics)
    fd_spread: float  # std of FD over bootstrap resamples (NaN when bootstrap=0)
    precision: float  # fraction of generated (a) samples inside the reference (b) manifold, k-NN (Kynkäänniemi et al. 2019)
    recall: float  # fraction of reference (b) samples inside the generated (a) manifold
    n_a: int
    n_b: int
    k: int
    bootstrap: int = 0  # number of resamples behind fd_spread
    paired: bool = False  # resampled pairwise (same latents on both sides)
    feature_dim: int = 0
    classifier_sha256: str = ""  # which feature extractor: scores from different classifiers do not compare

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("fd", "fd_spread", "precision", "recall"):
            v = d[key]
            d[key] = None if v is None or math.isnan(v) else float(v)  # JSON has no NaN
        return d

    def summary(self) -> str:
        spread = "" if math.isnan(self.fd_spread) else f" ± {self.fd_spread:.3g}"
        return (f"FD {self.fd:.4g}{spread}  precision {self.precision:.3f}  recall {self.recall:.3f}  "
                f"(n {self.n_a} vs {self.n_b}, k={self.k}, {self.bootstrap} {'paired ' if self.paired else ''}bootstrap resamples)")


def _mean_cov(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = f.mean(axis=0)
    c = f - mu
    return mu, (c.T @ c) / (len(f) - 1)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), computed with symmetric eigendecompositions.

    tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2) because the two matrices are similar, and the right-hand
    one is symmetric PSD: its eigenvalues are real, so there are no complex parts to discard (scipy's
    sqrtm of the non-symmetric S1 S2 returns some) and rank-deficient covariances are no special case.
    """
    diff = mu1 - mu2
    w, v = np.linalg.eigh(cov1)
    s1h = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^1/2
    m = s1h @ cov2 @ s1h
    ev = np.linalg.eigvalsh((m + m.T) * 0.5)
    tr_covmean = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    fd = float(diff @ diff) + float(np.trace(cov1)) + float(np.trace(cov2)) - 2.0 * tr_covmean
    return max(fd, 0.0)  # identical statistics can round to -1e-13


def _sq_norms(f: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", f, f)


def _sq_dists(a: np.ndarray, an: np.ndarray, b: np.ndarray, bn: np.ndarray) -> np.ndarray:
    return np.maximum(an[:, None] + bn[None, :] - 2.0 * (a @ b.T), 0.0)


def _chunk_rows(n_cols: int) -> int:
    return max(1, (1 << 23) // max(n_cols, 1))  # ~64 MB of float64 distances at a time


def _knn_radii_sq(f: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each sample to its k-th nearest other sample (the sample itself is at 0)."""
    fn = _sq_norms(f)
    r = np.empty(len(f), dtype=np.float64)
    step = _chunk_rows(len(f))
    for s in range(0, len(f), step):
        d = _sq_dists(f[s:s + step], fn[s:s + step], f, fn)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = 0.0  # self exactly 0 whatever the rounding
        r[s:s + step] = np.partition(d, k, axis=1)[:, k]
    return r


def _fraction_inside(query: np.ndarray, ref: np.ndarray, ref_radii_sq: np.ndarray) -> float:
    """Fraction of query samples within the k-NN ball of at least one reference sample."""
    qn, rn = _sq_norms(query), _sq_norms(ref)
    inside = 0
    step = _chunk_rows(len(ref))
    for s in range(0, len(query), step):
        d = _sq_dists(query[s:s + step], qn[s:s + step], ref, rn)
        inside += int((d <= ref_radii_sq[None, :]).any(axis=1).sum())
    return inside / len(query)


def _check_counts(n_a: int, n_b: int, k: int, bootstrap: int) -> None:
    if min(n_a, n_b) < MIN_SAMPLES:
        raise GanDeployError("too few samples for a quality score", f"{n_a} vs {n_b}", expected=f"at least {MIN_SAMPLES} on each side", hint="use 1000+ (FD is biased upward at small n; compare scores only at the same n)")
    if not 1 <= k < min(n_a, n_b):
        raise GanDeployError("bad k for the k-NN manifolds", k, expected=f"1 <= k < {min(n_a, n_b)}", hint="k=5 is the usual choice")
    if bootstrap < 0:
        raise GanDeployError("bad number of bootstrap resamples", bootstrap, expected=">= 0", hint="10 is enough for a spread")


def score_features(fa: np.ndarray, fb: np.ndarray, k: int = 5, bootstrap: int = 10, seed: int = 0,
                   paired: bool = False, classifier_sha256: str = "") -> QualityScore:
    """The score of feature sets `fa` (generated) vs `fb` (reference), both [N, D] float64.

    `paired`: row i of `fa` and of `fb` come from the same latent (backend X vs eager on the same latents), so
    the bootstrap resamples the same rows on both sides; unpaired resampling would report the much larger
    spread of two independent samples. Exposed so a caller scoring many sets against one reference can
    compute the reference features once.
    """
    from threadpoolctl import threadpool_limits

    fa = np.asarray(fa, dtype=np.float64)
    fb = np.asarray(fb, dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise GanDeployError("feature sets do not match", f"{fa.shape} vs {fb.shape}", expected="[N_a, D] and [N_b, D] with the same D")
    _check_counts(len(fa), len(fb), k, bootstrap)
    if paired and len(fa) != len(fb):
        raise GanDeployError("paired comparison needs the same number of images on both sides", f"{len(fa)} vs {len(fb)}", expected="one image per latent on each side", hint="generate both from the same seed and -n")
    # one BLAS thread: bit-identical results whatever the machine's thread settings, and no spinning OpenBLAS
    # threads on a busy 2-core machine (measured: 0.6 s with one thread, 0.8-4.8 s with two under load)
    with threadpool_limits(limits=1, user_api="blas"):
        mu_a, cov_a = _mean_cov(fa)
        mu_b, cov_b = _mean_cov(fb)
        fd = frechet_distance(mu_a, cov_a, mu_b, cov_b)
        if bootstrap:
            rng = np.random.default_rng(seed)  # seeded: the spread is as reproducible as the score
            fds = []
            for _ in range(bootstrap):
                ia = rng.integers(0, len(fa), len(fa))
                ib = ia if paired else rng.integers(0, len(fb), len(fb))
                fds.append(frechet_distance(*_mean_cov(fa[ia]), *_mean_cov(fb[ib])))
            spread = float(np.std(fds, ddof=1)) if bootstrap > 1 else 0.0
        else:
            spread = float("nan")
        precision = _fraction_inside(fa, fb, _knn_radii_sq(fb, k))
        recall = _fraction_inside(fb, fa, _knn_radii_sq(fa, k))
    return QualityScore(fd, spread, precision, recall, len(fa), len(fb), k, bootstrap, paired, fa.shape[1], classifier_sha256)


def quality_between(generated: np.ndarray, reference: np.ndarray, value_range: Sequence[float] = (-1.0, 1.0), k: int = 5,
                    bootstrap: int = 10, seed: int = 0, paired: bool = False,
                    classifier: FeatureClassifier | str | Path | None = None) -> QualityScore:
    """The quality score of `generated` images against `reference` images (both [N, C, H, W] in `value_range`).

    Deterministic: the same inputs give a bit-identical score. The two sets may differ in size, channels
    (RGB is made gray) and resolution (both are resized to 32x32). `paired`: image i of both sets comes from
    the same latent (see `score_features`).
    """
    # cheap checks first: a bad argument fails before any feature is computed
    _check_images(generated, value_range, "generated")
    _check_images(reference, value_range, "reference")
    _check_counts(len(generated), len(reference), k, bootstrap)
    clf = classifier if isinstance(classifier, FeatureClassifier) else load_classifier(classifier)
    fa = features(generated, value_range, clf)
    fb = features(reference, value_range, clf)
    return score_features(fa, fb, k, bootstrap, seed, paired, clf.sha256)


def split_halves(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of an image set (the real-vs-real noise floor of the score)."""
    perm = np.random.default_rng(seed).permutation(len(images))
    h = len(images) // 2
    return images[np.sort(perm[:h])], images[np.sort(perm[h:])]


# -- evaluating a generator (what `gan-deploy eval` runs) ---------------------------------------------------


def generator_images(runner: Any, n: int, seed: int = 0, start: int = 0, batch_size: int = 500) -> np.ndarray:
    """Images start..start+n-1 of `runner`'s generator under `seed` (latents_range), float32 in [-1, 1]."""
    from gan_deploy.core.latents import latents_range

    if n < 1 or batch_size < 1:
        raise GanDeployError("bad image count or batch size", f"n={n} batch_size={batch_size}", expected=">= 1 each")
    spec = runner.spec
    out = np.empty((n, *spec.image_shape), dtype=np.float32)
    for s in range(0, n, batch_size):
        b = min(batch_size, n - s)
        out[s:s + b] = runner.infer(latents_range(seed, start + s, b, spec.latent_dim))
    return rescale(out, spec.value_range, (-1.0, 1.0))


def untrained_generator_images(artifact: Any, n: int, seed: int = 0, init_seed: int = 0) -> np.ndarray | None:
    """The same latents through a freshly initialised generator of the artifact's architecture (the floor every
    training run starts from), float32 in [-1, 1]; None when the architecture is unknown (a foreign ONNX file
    whose image size no DCGAN produces)."""
    import torch

    from gan_deploy.nets.config import GeneratorConfig
    from gan_deploy.core.latents import latents_range
    from gan_deploy.nets.networks import build_generator, init_weights

    spec = artifact.spec
    cfg = artifact.config
    if cfg is None:
        if spec.height != spec.width or spec.height < 8 or spec.height & (spec.height - 1):
            return None
        cfg = GeneratorConfig("dcgan", spec.latent_dim, spec.channels, spec.height)
    # a private RNG: scoring must not move the caller's global torch random state
    with torch.random.fork_rng(devices=[]), torch.inference_mode(), _one_torch_thread():
        torch.manual_seed(init_seed)
        g = build_generator(cfg)
        g.apply(init_weights)
        g.eval()
        out = np.concatenate([g(torch.from_numpy(latents_range(seed, s, min(500, n - s), spec.latent_dim))).numpy()
                              for s in range(0, n, 500)])
    return rescale(out, cfg.value_range, (-1.0, 1.0))


@dataclass
class EvalReport:
    """What `gan-deploy eval` prints: the score, what was compared, and context scores in the same feature space."""

    score: QualityScore
    generated: str  # what was scored
    reference: str  # what it was scored against
    context: dict[str, QualityScore]  # label -> score, e.g. real-vs-real halves, untrained generator
    seconds: float = 0.0
    notes: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score.to_dict(), "generated": self.generated, "reference": self.reference,
                "context": {k: v.to_dict() for k, v in self.context.items()}, "seconds": round(self.seconds, 3),
                "notes": list(self.notes or [])}

    def summary(self) -> str:
        lines = [f"scored:  {self.generated}", f"against: {self.reference}", self.score.summary()]
        if self.context:
            lines.append("context (same feature space):")
            width = max(len(k) for k in self.context)
            lines += [f"  {k:<{width}}  {v.summary()}" for k, v in self.context.items()]
        lines += list(self.notes or [])
        lines.append(f"lower FD is better; a difference smaller than about twice the ± spread is noise; "
                     f"compare FDs only at the same n (docs/quality.md). {self.seconds:.1f} s")
        return "\n".join(lines)


def run_eval(artifact: Any = None, backend: str = "auto", device: str = "auto", precision: str = "fp32",
             images: str | Path | None = None, reference: str | Path = "digits", against_backend: str | None = None,
             against_artifact: Any = None, n: int = 2000, seed: int = 0, k: int = 5, bootstrap: int = 10,
             context: bool = True, batch_size: int = 500, log: Any = None) -> EvalReport:
    """Score a generator (`artifact` run on `backend`) or a folder of `images` against `reference` data, or
    against the same latents run on `against_backend` (paired: the quantization gate's comparison; the
    eager reference runs `against_artifact`, a checkpoint, when the scored artifact is ONNX or an engine).

    Context scores (unless `context=False`): against data, two disjoint halves of the reference against each
    other and an untrained generator of the same architecture on the same latents; against a backend, the
    reference backend on fresh latents (indices n..2n-1): the sampling noise floor at this n.
    """
    from gan_deploy.backends import make_runner
    from gan_deploy.core.timing import Stopwatch

    say = log or (lambda msg: None)
    if images is None and artifact is None:
        raise GanDeployError("nothing to score", None, expected="a generator artifact or a folder of images")
    if against_backend is not None and images is not None:
        raise GanDeployError("--against-backend needs a generator, not a folder of images", str(images), hint="score the folder against data with --reference, or pass the generator instead of --images")
    if images is None and n < MIN_SAMPLES:
        raise GanDeployError("too few images to score", f"-n {n}", expected=f"at least {MIN_SAMPLES}", hint="use 1000+ (FD is biased upward at small n; compare scores only at the same n)")
    ref_art = None
    if against_backend is not None:
        from gan_deploy.backends import runner_class

        ref_art = artifact
        if artifact.kind not in runner_class(against_backend).accepts:
            ref_art = against_artifact
            if ref_art is None:
                raise GanDeployError(f"backend '{against_backend}' cannot run the scored {artifact.kind}", str(artifact.path), expected="a checkpoint to run it on", hint="pass the checkpoint it was exported from with --checkpoint")
            _check_same_generator(artifact, ref_art)
    clf = load_classifier()  # all of the above fails before anything is generated
    notes: list[str] = []
    with Stopwatch() as sw:
        runner = None
        if images is not None:
            gen = load_images(images)
            gen_desc = f"{len(gen)} images from {images}"
        else:
            runner = _runner(make_runner, backend, artifact, device, precision)
            say(f"generating {n} images with {artifact.describe()} on {runner.name}")
            gen = generator_images(runner, n, seed, batch_size=batch_size)
            gen_desc = f"{artifact.describe()} on {runner.name}{'' if precision == 'fp32' else ' ' + precision}, {n} images (seed {seed})"
        f_gen = features(gen, classifier=clf)
        ctx: dict[str, QualityScore] = {}
        if against_backend is not None:
            ref_runner = make_runner(against_backend, ref_art, device)
            say(f"generating the same {n} latents with {ref_art.describe()} on {ref_runner.name}")
            ref = generator_images(ref_runner, n, seed, batch_size=batch_size)
            ref_desc = f"{ref_art.describe()} on {ref_runner.name}, the same {n} latents (paired)"
            f_ref = features(ref, classifier=clf)
            score = score_features(f_gen, f_ref, k, bootstrap, seed, True, clf.sha256)
            if context:
                fresh = generator_images(ref_runner, n, seed, start=n, batch_size=batch_size)
                ctx[f"{ref_runner.name} on fresh latents (sampling noise floor)"] = score_features(
                    features(fresh, classifier=clf), f_ref, k, bootstrap, seed, False, clf.sha256)
        else:
            ref = reference_images(reference)
            ref_desc = f"{reference} ({len(ref)} images)"
            f_ref = features(ref, classifier=clf)
            score = score_features(f_gen, f_ref, k, bootstrap, seed, False, clf.sha256)
            if context:
                h1, h2 = split_halves(np.arange(len(f_ref)), seed)
                if min(len(h1), len(h2)) >= max(MIN_SAMPLES, k + 1):
                    ctx[f"real vs real, disjoint halves ({len(h1)} vs {len(h2)})"] = score_features(
                        f_ref[h1], f_ref[h2], k, bootstrap, seed, False, clf.sha256)
                if runner is not None:
                    untrained = untrained_generator_images(artifact, n, seed)
                    if untrained is not None:
                        ctx["untrained generator, same latents"] = score_features(
                            features(untrained, classifier=clf), f_ref, k, bootstrap, seed, False, clf.sha256)
            if str(reference) not in DATASETS:
                notes.append("note: the features come from a digits classifier; on other data FD is only a relative, "
                             "same-data comparison (docs/quality.md)")
    return EvalReport(score, gen_desc, ref_desc, ctx, sw.seconds, notes)


def _runner(make_runner: Any, backend: str, artifact: Any, device: str, precision: str) -> Any:
    from gan_deploy.backends import pick_backend

    name = pick_backend(backend, artifact)
    if precision != "fp32":
        if name not in ("eager", "compile"):
            raise GanDeployError(f"--precision {precision} applies to the PyTorch backends only", f"backend {name}", expected="--backend eager or compile", hint="ONNX and engine files carry their own precision")
        return make_runner(name, artifact, device, precision=precision)
    return make_runner(name, artifact, device)


def _check_same_generator(scored: Any, ref: Any) -> None:
    """The eager reference must be the generator the scored file was made from: same contract, same parent."""
    from gan_deploy.artifacts.onnx import META_PARENT_SHA

    if scored.spec.latent_dim != ref.spec.latent_dim or scored.spec.image_shape != ref.spec.image_shape:
        raise GanDeployError("the two generators do not match", f"{scored.describe()} vs {ref.describe()}", expected="the same latent size and image shape", hint="pass the checkpoint the file was exported from")
    parent = scored.metadata.get(META_PARENT_SHA)
    if parent and ref.sha256 and parent != ref.sha256:
        raise StaleArtifact("the scored file was exported from a different checkpoint", f"{scored.path} parent {parent[:12]}", expected=f"{ref.path} (sha256 {ref.sha256[:12]})", hint="pass its own checkpoint with --checkpoint, or re-export")


# -- training the feature classifier ---------------------------------------------------------------------


def _shift_batch(x, max_shift: int, gen):
    """Random translations of up to `max_shift` pixels, filling with background (-1): vectorized crop of a
    padded batch. Generated digits are rarely centred exactly like the data, and the features must not care."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    oy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # [N, H, 1]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # [N, 1, W]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_feature_classifier(out: str | Path = "models/digits_classifier.safetensors", epochs: int = 15, width: int = 16, feature_dim: int = 128,
                             batch_size: int = 64, lr: float = 2e-3, seed: int = 0, test_fraction: float = 0.2,
                             max_shift: int = 3, log: Any = print) -> dict[str, Any]:
    """Train the digits feature classifier on CPU and write `<out>.safetensors` + `<out>.json` atomically.

    A stratified `test_fraction` of the digits is held out and only used to report accuracy. Deterministic
    for a given seed, torch version and thread count. Returns the JSON config written.
    """
    import platform

    import torch
    from safetensors.torch import save_file
    from sklearn.model_selection import train_test_split

    from gan_deploy.core.timing import Stopwatch

    if epochs < 1 or width < 1 or feature_dim < 2 or batch_size < 1 or not 0.0 < test_fraction < 1.0 or max_shift < 0:
        raise GanDeployError("bad classifier training settings", f"epochs={epochs} width={width} feature_dim={feature_dim} batch_size={batch_size} "
                             f"test_fraction={test_fraction} max_shift={max_shift}", expected="epochs, width, batch_size >= 1, feature_dim >= 2, 0 < test_fraction < 1, max_shift >= 0")
    out = Path(out).with_suffix(".safetensors")
    images, labels = _digits_arrays()
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=test_fraction, random_state=seed, stratify=labels)
    x_train, y_train = torch.from_numpy(images[idx_train]), torch.from_numpy(labels[idx_train])
    x_test, y_test = torch.from_numpy(images[idx_test]), torch.from_numpy(labels[idx_test])

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _net_class()(width, feature_dim, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    loss_fn = torch.nn.CrossEntropyLoss()

    def accuracy(x, y) -> float:
        model.eval()
        with torch.inference_mode():
            pred = torch.cat([model(x[s:s + 512]).argmax(1) for s in range(0, len(x), 512)])
        model.train()
        return float((pred == y).float().mean())

    with _one_torch_thread():
        with Stopwatch() as sw:
            model.train()
            for epoch in range(epochs):
                perm = torch.randperm(len(x_train), generator=gen)
                total = 0.0
                for s in range(0, len(perm), batch_size):
                    b = perm[s:s + batch_size]
                    xb = _shift_batch(x_train[b], max_shift, gen) if max_shift else x_train[b]
                    loss = loss_fn(model(xb), y_train[b])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(b)
                if log and (epoch == epochs - 1 or epoch % 5 == 4):
                    log(f"epoch {epoch + 1}/{epochs}  loss {total / len(x_train):.4f}  held-out accuracy {accuracy(x_test, y_test):.4f}")
            model.eval()
        test_acc = accuracy(x_test, y_test)
        # the same held-out images shifted at random: how much the features rely on exact centring
        shifted_acc = accuracy(_shift_batch(x_test, max_shift or 2, torch.Generator().manual_seed(seed + 1)), y_test)
        model.eval()

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": CLASSIFIER_FORMAT})
    cfg: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "format_version": CLASSIFIER_FORMAT_VERSION,
        "architecture": {
            "name": "DigitsFeatureNet", "width": width, "feature_dim": feature_dim, "classes": 10,
            "layers": f"conv3x3({width})-relu-maxpool, conv3x3({2 * width})-relu-maxpool, conv3x3({4 * width})-relu-maxpool, "
                      f"flatten(4x4), linear({feature_dim}) = features (pre-ReLU), relu, dropout(0.2), linear(10)",
        },
        "feature_dim": feature_dim,
        "feature_layer": "penultimate linear layer, before its ReLU",
        "input": {"shape": [1, INPUT_SIZE, INPUT_SIZE], "value_range": [-1.0, 1.0], "channels": "gray",
                  "other inputs": "RGB -> gray (ITU-R 601 luma), other sizes -> bilinear resize to 32x32"},
        "data": {"dataset": "digits", "source": "sklearn.datasets.load_digits (8x8, 0..16) -> /16 -> bilinear x4 -> [-1, 1]",
                 "n_train": int(len(idx_train)), "n_test": int(len(idx_test)), "split": f"stratified, random_state={seed}"},
        "accuracy": {"held_out": round(test_acc, 4), f"held_out_shifted_{max_shift or 2}px": round(shifted_acc, 4)},
        "train": {"epochs": epochs, "batch_size": batch_size, "optimizer": "AdamW(weight_decay=1e-4) + OneCycleLR",
                  "lr": lr, "seed": seed, "augmentation": f"random shifts up to {max_shift} px, background fill -1",
                  "seconds": round(sw.seconds, 1), "torch": torch.__version__, "threads": 1,
                  "machine": platform.machine()},
        "retrain": "python -m gan_deploy.quality.features --train-classifier",
        "weights_sha256": sha256_file(out),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if log:
        log(f"held-out accuracy {test_acc:.4f} ({len(idx_test)} images), shifted {shifted_acc:.4f}; "
            f"{sw.seconds:.1f} s; wrote {out} and {out.with_suffix('.json').name}")
    return cfg


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m gan_deploy.quality.features", description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-classifier", action="store_true", help="train the digits feature classifier and write it")
    ap.add_argument("--out", default="models/digits_classifier.safetensors",
                    help="where to write it (default: models/ here; copy both files to gan_deploy/assets/ to ship them)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--feature-dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.train_classifier:
        ap.print_help()
        return 2
    try:
        train_feature_classifier(args.out, epochs=args.epochs, width=args.width, feature_dim=args.feature_dim, seed=args.seed)
    except GanDeployError as e:
        print(f"Error: {e.one_line()}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

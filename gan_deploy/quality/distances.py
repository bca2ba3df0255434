"""Distances between two feature sets: Fréchet distance (with a bootstrap spread) and k-NN precision/recall."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.quality.features import MIN_SAMPLES, FeatureClassifier, _check_images, features, load_classifier

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



"""What `gan-deploy eval` runs: `evaluate(artifact, EvalOptions(...))` scores images from a generator, a folder or
a data set against a reference. The options check themselves when built; `progress` (core.progress) prints a
"generating ..." line per generator run on stderr unless False."""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gan_deploy.core.errors import GanDeployError, StaleArtifact
from gan_deploy.quality.distances import QualityScore, score_features, split_halves
from gan_deploy.quality.features import DATASETS, INPUT_SIZE, MANIFEST, MIN_SAMPLES, _one_torch_thread, features, load_classifier

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
    base = folder.resolve()
    decoded = []
    for row, name in enumerate(names, start=2):
        path = folder / (name or "")
        # a manifest names files of its own folder; `../x`, `/etc/x` or a symlink out of it would read elsewhere
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or not path.resolve().is_relative_to(base):
            raise GanDeployError("generate manifest names a file outside its folder", f"{folder / MANIFEST} line {row}: {name!r}",
                                 expected="file names relative to the folder, as `gan-deploy generate` writes them",
                                 hint="regenerate the folder, or delete manifest.csv to read every image in it")
        try:
            img = decode(path)
        except Exception as e:  # PIL and numpy raise many types for missing or damaged files
            raise GanDeployError("image listed in the manifest is unreadable", f"{path} ({type(e).__name__})", expected="every file manifest.csv lists", hint="the run was interrupted or files were removed; "
                                 "regenerate, or delete manifest.csv to read the images present") from None
        img = img[:, :, None] if img.ndim == 2 else img
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise GanDeployError("unsupported image", f"{path}: {img.dtype} {img.shape}", expected="uint8 [H, W, 1|3|4]")
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

    from gan_deploy.core.latents import latents_range
    from gan_deploy.nets.config import GeneratorConfig
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


@dataclass
class EvalOptions:
    """Everything `gan-deploy eval` decides, as one object; checks itself when built (`validate`)."""

    backend: str = "auto"  # backends.CHOICES: the backend that generates the scored images
    device: str = "auto"  # generation only; features are computed on the CPU
    precision: str = "fp32"  # backends.torch_common.TORCH_PRECISIONS (the PyTorch backends; backends.resolve_backend)
    images: str | Path | None = None  # score these files (a generate folder, an image folder, .npy/.npz) instead of a generator
    reference: str | Path = "digits"  # what to score against: a data set load_images reads
    against_backend: str | None = None  # score against the same latents on this backend instead (paired)
    against_artifact: Any = None  # the Artifact (a checkpoint) against_backend runs when it cannot run the scored one
    n: int = 2000  # generated images (latents 0..n-1 of seed)
    seed: int = 0  # latent seed; also seeds the bootstrap and the halves split
    k: int = 5  # neighbours for the precision/recall manifolds
    bootstrap: int = 10  # resamples behind the ± spread (0: none)
    context: bool = True  # also the context scores (real halves, untrained generator, noise floor)
    batch_size: int = 500
    progress: bool | None = None  # "generating ..." lines on stderr unless False (core.progress)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Ranges and choices from the library's constants, one GanDeployError line each; nothing is loaded."""
        from gan_deploy.backends import BACKENDS, CHOICES
        from gan_deploy.backends.torch_common import check_precision
        from gan_deploy.core.device import check_device
        from gan_deploy.core.latents import MAX_SEED

        if self.backend not in CHOICES:
            raise GanDeployError("unknown backend", repr(self.backend), expected=f"one of {', '.join(CHOICES)}")
        if self.against_backend is not None and self.against_backend not in BACKENDS:
            raise GanDeployError("unknown --against-backend", repr(self.against_backend), expected=f"one of {', '.join(BACKENDS)}")
        check_precision(self.precision)
        check_device(self.device)
        if not 0 <= self.seed <= MAX_SEED:
            raise GanDeployError("bad seed", self.seed, expected=f"0 <= seed <= {MAX_SEED}")
        for what, value, low in (("k", self.k, 1), ("bootstrap", self.bootstrap, 0), ("batch size", self.batch_size, 1),
                                 ("image count", self.n, 1)):
            if not isinstance(value, Integral) or value < low:
                raise GanDeployError(f"bad {what}", value, expected=f">= {low}")
        if self.against_backend is not None and self.images is not None:
            raise GanDeployError("--against-backend needs a generator, not a folder of images", str(self.images), hint="score the folder against data with --reference, or pass the generator instead of --images")
        if self.images is None and self.n < MIN_SAMPLES:
            raise GanDeployError("too few images to score", f"-n {self.n}", expected=f"at least {MIN_SAMPLES}", hint="use 1000+ (FD is biased upward at small n; compare scores only at the same n)")


def evaluate(artifact: Any, opts: EvalOptions | None = None) -> EvalReport:
    """Score a generator (`artifact` run on `opts.backend`) or a folder of `opts.images` (then `artifact` is None)
    against `opts.reference` data, or against the same latents run on `opts.against_backend` (paired: the
    quantization gate's comparison; the reference runs `opts.against_artifact`, a checkpoint, when the scored
    artifact is ONNX or an engine).

    Context scores (unless `context=False`): against data, two disjoint halves of the reference against each
    other and an untrained generator of the same architecture on the same latents; against a backend, the
    reference backend on fresh latents (indices n..2n-1): the sampling noise floor at this n.
    """
    from gan_deploy.core.progress import progress_lines
    from gan_deploy.core.timing import Stopwatch

    opts = opts or EvalOptions()
    opts.validate()  # again: a dataclass may have been changed since it was built
    say = progress_lines(opts.progress)
    if opts.images is None and artifact is None:
        raise GanDeployError("nothing to score", None, expected="a generator artifact or a folder of images")
    ref_art = _reference_artifact(artifact, opts) if opts.against_backend is not None else None
    if opts.images is None:  # the memory the generated images take, checked before any is generated
        _check_memory(artifact, opts, against=ref_art is not None)
    clf = load_classifier()  # all of the above fails before anything is generated
    notes: list[str] = []
    with Stopwatch() as sw:
        runner = None
        if opts.images is not None:
            gen = load_images(opts.images)
            gen_desc = f"{len(gen)} images from {opts.images}"
        else:
            from gan_deploy.backends import make_runner

            runner = make_runner(opts.backend, artifact, opts.device, precision=opts.precision)
            say(f"generating {opts.n} images with {artifact.describe()} on {runner.name}")
            gen = generator_images(runner, opts.n, opts.seed, batch_size=opts.batch_size)
            gen_desc = (f"{artifact.describe()} on {runner.name}{'' if opts.precision == 'fp32' else ' ' + opts.precision}, "
                        f"{opts.n} images (seed {opts.seed})")
        f_gen = features(gen, classifier=clf)
        if ref_art is not None:
            score, ref_desc, ctx = _against_backend(f_gen, ref_art, opts, clf, say)
        else:
            score, ref_desc, ctx = _against_data(f_gen, artifact if runner is not None else None, opts, clf)
            if str(opts.reference) not in DATASETS:
                notes.append("note: the features come from a digits classifier; on other data FD is only a relative, "
                             "same-data comparison (docs/quality.md)")
    return EvalReport(score, gen_desc, ref_desc, ctx, sw.seconds, notes)


def _check_memory(artifact: Any, opts: EvalOptions, against: bool) -> None:
    """--batch-size: one batch where the generator runs (latents, images, activations: backends.memory); -n: the
    generated images held for the features (float32 on the host), twice more against a backend (same latents and
    fresh ones). One line naming the largest that fits, before anything is generated."""
    from gan_deploy.backends.memory import check_batch_fits
    from gan_deploy.core.device import resolve_device

    check_batch_fits(artifact, min(opts.batch_size, opts.n), resolve_device(opts.device), option="--batch-size")
    check_batch_fits(artifact, opts.n, "cpu", image_copies=3 if against else 1, activation_copies=0, option="-n")


def _reference_artifact(artifact: Any, opts: EvalOptions) -> Any:
    """What `opts.against_backend` runs: the scored artifact, or `opts.against_artifact` when it cannot run that."""
    from gan_deploy.backends import runner_class

    if artifact.kind in runner_class(opts.against_backend).accepts:  # type: ignore[arg-type]
        return artifact
    if opts.against_artifact is None:
        raise GanDeployError(f"backend '{opts.against_backend}' cannot run the scored {artifact.kind}", str(artifact.path), expected="a checkpoint to run it on", hint="pass the checkpoint it was exported from with --checkpoint")
    _check_same_generator(artifact, opts.against_artifact)
    return opts.against_artifact


def _against_backend(f_gen: np.ndarray, ref_art: Any, opts: EvalOptions, clf: Any,
                     say: Any) -> tuple[QualityScore, str, dict[str, QualityScore]]:
    """Paired: the same latents on the reference backend; context: that backend on fresh latents (the noise floor)."""
    from gan_deploy.backends import make_runner

    n, seed, k, bootstrap = opts.n, opts.seed, opts.k, opts.bootstrap
    ref_runner = make_runner(opts.against_backend, ref_art, opts.device)  # type: ignore[arg-type]
    say(f"generating the same {n} latents with {ref_art.describe()} on {ref_runner.name}")
    ref = generator_images(ref_runner, n, seed, batch_size=opts.batch_size)
    ref_desc = f"{ref_art.describe()} on {ref_runner.name}, the same {n} latents (paired)"
    f_ref = features(ref, classifier=clf)
    score = score_features(f_gen, f_ref, k, bootstrap, seed, True, clf.sha256)
    ctx: dict[str, QualityScore] = {}
    if opts.context:
        fresh = generator_images(ref_runner, n, seed, start=n, batch_size=opts.batch_size)
        ctx[f"{ref_runner.name} on fresh latents (sampling noise floor)"] = score_features(
            features(fresh, classifier=clf), f_ref, k, bootstrap, seed, False, clf.sha256)
    return score, ref_desc, ctx


def _against_data(f_gen: np.ndarray, generator: Any, opts: EvalOptions,
                  clf: Any) -> tuple[QualityScore, str, dict[str, QualityScore]]:
    """Against reference data; context: two disjoint halves of it, and an untrained `generator` (when one was run)."""
    n, seed, k, bootstrap = opts.n, opts.seed, opts.k, opts.bootstrap
    ref = reference_images(opts.reference)
    ref_desc = f"{opts.reference} ({len(ref)} images)"
    f_ref = features(ref, classifier=clf)
    score = score_features(f_gen, f_ref, k, bootstrap, seed, False, clf.sha256)
    ctx: dict[str, QualityScore] = {}
    if opts.context:
        h1, h2 = split_halves(np.arange(len(f_ref)), seed)
        if min(len(h1), len(h2)) >= max(MIN_SAMPLES, k + 1):
            ctx[f"real vs real, disjoint halves ({len(h1)} vs {len(h2)})"] = score_features(
                f_ref[h1], f_ref[h2], k, bootstrap, seed, False, clf.sha256)
        if generator is not None:
            untrained = untrained_generator_images(generator, n, seed)
            if untrained is not None:
                ctx["untrained generator, same latents"] = score_features(
                    features(untrained, classifier=clf), f_ref, k, bootstrap, seed, False, clf.sha256)
    return score, ref_desc, ctx


def _check_same_generator(scored: Any, ref: Any) -> None:
    """The eager reference must be the generator the scored file was made from: same contract, same parent."""
    from gan_deploy.artifacts.onnx import META_PARENT_SHA

    if scored.spec.latent_dim != ref.spec.latent_dim or scored.spec.image_shape != ref.spec.image_shape:
        raise GanDeployError("the two generators do not match", f"{scored.describe()} vs {ref.describe()}", expected="the same latent size and image shape", hint="pass the checkpoint the file was exported from")
    parent = scored.metadata.get(META_PARENT_SHA)
    if parent and ref.sha256 and parent != ref.sha256:
        raise StaleArtifact("the scored file was exported from a different checkpoint", f"{scored.path} parent {parent[:12]}", expected=f"{ref.path} (sha256 {ref.sha256[:12]})", hint="pass its own checkpoint with --checkpoint, or re-export")



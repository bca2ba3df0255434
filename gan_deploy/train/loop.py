"""The GAN trainer, whole, in one file (nanoGPT style): `train(TrainOptions(...)) -> TrainResult`.

One *step* is one generator update, preceded by `n_critic` discriminator updates (1 for bce/hinge, 5 for
wgan-gp), each on a fresh real batch. Losses:

    bce      non-saturating GAN loss (Goodfellow et al. 2014): D: softplus(-D(x)) + softplus(D(G(z))), G: softplus(-D(G(z)))
    hinge    D: relu(1 - D(x)) + relu(1 + D(G(z))), G: -D(G(z))                    (Miyato et al. 2018)
    wgan-gp  D: D(G(z)) - D(x) + 10 * (|grad D(x_hat)| - 1)^2, G: -D(G(z))           (Gulrajani et al. 2017)
             the critic has no batch norm: the gradient penalty is per sample and batch norm couples samples.

An exponential moving average (EMA) of the generator's weights is what gets saved: it gives visibly steadier
samples than the raw generator. Before it is saved or sampled, its batch-norm statistics are recomputed for
its own weights ("standing statistics"), since the running statistics it copies belong to the raw generator.

Run folder (`out`, default runs/<dataset>_<arch>):

    generator.safetensors + generator.json   the EMA generator (checkpoint.save_checkpoint), what export/generate use
    samples/step_XXXXXXXX.png                64 images from the same fixed latents every --sample-every steps
    metrics.jsonl                            one JSON object per --log-every steps: losses, images/s, elapsed;
                                             {"event": "eval", ...} quality scores (--eval-every); {"event": "end", ...}
    state/step_XXXXXXXX.{safetensors,json}   full training state for --resume (tensors / JSON; never pickle)

Multi-process (`torchrun --nproc-per-node N -m gan_deploy train ...`): DistributedDataParallel over gloo (CPU)
or NCCL (GPU). The contract: --batch-size is per process, so the global batch is N x batch; --steps counts
optimizer steps, identical on every rank; every epoch one permutation of the data (from the seed) is dealt
round-robin to the ranks; each rank draws its latents from its own seed; only rank 0 writes files or prints.
A resumed run must use the same number of processes.

Determinism: on CPU (same machine, same thread count), the same options and seed give bit-identical weights; a run
stopped at any checkpoint (or by Ctrl-C, which is deferred to the end of the step)
and resumed ends bit-identical to an uninterrupted one: the data order is a pure function of (seed, epoch),
and all other randomness comes from one per-rank torch.Generator whose state is checkpointed. (GPU kernels
are not bitwise deterministic, so on CUDA the same holds only approximately.)

Quality during training (--eval-every N, rank 0 only): at step 0, every N steps and at the end, the EMA generator
(with standing BN statistics, as saved) generates --eval-samples images from fixed latents (latents_range(seed, 0, n):
the same images at every eval) and gan_deploy.quality.features scores them against the training data (features of at most
EVAL_REFERENCE_MAX images, computed once per run) with the shipped feature classifier: FD with a small bootstrap
spread, precision, recall. It draws no training randomness (own latents, own BN-calibration generator, numpy
bootstrap generator), so a run's weights are bit-identical with evals on or off; images/s excludes eval time.

Speed on a shared CPU: `gan-deploy train` sets OMP_WAIT_POLICY=PASSIVE before torch loads, so idle OpenMP threads
sleep instead of spinning; with other work on the cores that made steps 2-4x faster here. Calling train() from
Python, set it in the environment before importing torch.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import atomic_path, atomic_write_text, sha256_file
from gan_deploy.nets.config import GeneratorConfig, TrainConfig
from gan_deploy.train.options import AMP_MODES, DEFAULT_STEPS, EVAL_MIN_SAMPLES, FIXED_ON_RESUME, LOSSES, TrainOptions  # noqa: F401 (re-exported)

STATE_FORMAT = "gan-deploy-train-state"
STATE_VERSION = 1
SAMPLE_COUNT = 64  # images in a sample grid (8 x 8)
BN_CALIBRATION = (8, 128)  # batches x batch size of random latents used to recompute the EMA's BN statistics
EVAL_BOOTSTRAP = 5  # resamples behind an in-training FD spread: enough to tell a real change from noise, ~20 ms each
EVAL_K = 5  # neighbours for precision/recall, as `gan-deploy eval`
EVAL_REFERENCE_MAX = 10_000  # training images scored against (a seeded subset above this): bounds the one-off cost
EVAL_BATCH = 500  # generator batch when producing the eval images


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path  # out/generator.safetensors (the EMA generator)
    samples: Path | None  # the last sample grid
    dataset: str  # Dataset.describe()
    steps: int  # total steps trained (including those before a resume)
    start_step: int  # 0, or the step this invocation resumed from
    wall_time_s: float  # this invocation's training loop
    images_per_s: float  # real images per second over this invocation, all processes together
    d_loss: float
    g_loss: float
    world_size: int
    device: str
    params_g: int
    params_d: int
    rank_sha256: list[str] = field(default_factory=list)  # per rank: sha256 of its G and D parameters
    quality: dict[str, Any] | None = None  # the final eval record (fd, fd_spread, precision, recall, n ...); None if off

    def summary(self) -> str:
        m, s = divmod(self.wall_time_s, 60)
        resumed = f" (resumed at {self.start_step})" if self.start_step else ""
        procs = f" x {self.world_size} processes" if self.world_size > 1 else ""
        lines = [
            f"Trained {self.steps} steps{resumed} in {int(m)}m{s:04.1f}s on {self.device}{procs}: "
            f"{self.images_per_s:.0f} images/s, final d_loss {self.d_loss:.3f} g_loss {self.g_loss:.3f}",
            f"  data:      {self.dataset}",
            f"  generator: {self.checkpoint} (+ .json; EMA weights, {_count(self.params_g)} parameters)",
        ]
        if self.samples:
            lines.append(f"  samples:   {self.samples}")
        if self.quality:
            q = self.quality
            lines.append(f"  quality:   {_quality_text(q)} at step {q['step']} ({q['n']} generated vs {q['n_reference']} "
                         f"training images; compare only at the same n; full score: gan-deploy eval -c {self.checkpoint})")
        lines += [f"  metrics:   {self.out / 'metrics.jsonl'}",
                  f"Next: gan-deploy export -c {self.checkpoint}"]
        return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}k"


def _quality_text(q: dict[str, Any]) -> str:
    spread = "" if q.get("fd_spread") is None else f" ± {q['fd_spread']:.3g}"
    return f"FD {q['fd']:.4g}{spread}, precision {q['precision']:.3f}, recall {q['recall']:.3f}"


# -- distributed plumbing ------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _resolve_device(spec: str, local_rank: int, distributed: bool) -> torch.device:
    spec = (spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise GanDeployError("CUDA requested but not available", spec, expected="a machine with an NVIDIA GPU and a CUDA build of torch", hint="use --device cpu (or auto)")
        if spec == "cuda":
            return torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
        try:
            dev = torch.device(spec)
        except RuntimeError:
            dev = None
        if dev is None or dev.index is None or dev.index >= torch.cuda.device_count():
            raise GanDeployError("no such CUDA device", spec, expected=f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return dev
    raise GanDeployError("unknown device", spec, expected="auto, cpu, cuda or cuda:N")


def _init_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    owns = False
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's communicator and every bare .cuda() go to this rank's GPU
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "gloo" and not dist.is_gloo_available():
            raise GanDeployError("torch.distributed gloo backend unavailable", torch.__version__, expected="a torch build with gloo", hint="run a single process")
        dist.init_process_group(backend)
        owns = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def _all_gather_bytes(x: torch.Tensor, ctx: _Dist, device: torch.device) -> list[torch.Tensor]:
    """All ranks' copies of a same-sized uint8 tensor, on the CPU (a collective: every rank must call it)."""
    if ctx.world == 1:
        return [x.cpu()]
    import torch.distributed as dist

    # NCCL moves only CUDA tensors; gloo only CPU ones
    x = x.to(device) if device.type == "cuda" else x.cpu()
    out = [torch.empty_like(x) for _ in range(ctx.world)]
    dist.all_gather(out, x)
    return [t.cpu() for t in out]


def _barrier(ctx: _Dist) -> None:
    if ctx.world > 1:
        import torch.distributed as dist
        dist.barrier()


# -- small pieces ----------------------------------------------------------------------------------------

def _rank_seed(seed: int, rank: int) -> int:
    """A well-mixed, per-rank seed for the latent generator (63 bits, so torch accepts it)."""
    return int(np.random.SeedSequence([seed, rank, 0x6761]).generate_state(1, np.uint64)[0]) & (2**63 - 1)


class _Batches:
    """Real batches as a pure function of the update counter u: no state to checkpoint.

    Epoch e uses one permutation of the whole data set drawn from (seed, e); rank r takes every world-th index
    of it, in batches of batch_size; the last incomplete batch of each rank is dropped."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, rank: int, world: int):
        self.data, self.bs, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self.per_epoch = (len(data) // world) // batch_size  # batches per rank per epoch (>= 1, checked)
        self._epoch, self._order = -1, None
        # indexing returns a plain NCHW tensor: give batches the data's (channels_last) layout back
        self.fmt = torch.channels_last if data.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format

    def get(self, u: int) -> torch.Tensor:  # -> [B, C, H, W]
        epoch, b = divmod(u, self.per_epoch)
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
            self._order = torch.from_numpy(perm[self.rank::self.world].copy()).to(self.data.device)
            self._epoch = epoch
        return self.data[self._order[b * self.bs:(b + 1) * self.bs]].contiguous(memory_format=self.fmt)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):  # BN running stats, num_batches_tracked
        e.copy_(b)


@torch.no_grad()
def _standing_stats(model: nn.Module, latent_dim: int, seed: int, device: torch.device) -> nn.Module:
    """A copy of `model` in eval mode whose batch-norm statistics are measured on its own outputs.

    The EMA generator's copied running statistics belong to the raw generator's weights; recomputing them as
    an exact average over BN_CALIBRATION random batches makes eval-mode output match what the EMA weights do.
    Uses its own torch.Generator, so training randomness is untouched."""
    m = copy.deepcopy(model)
    bns = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    if bns:
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # None = cumulative average over all calibration batches
        gen = torch.Generator(device=device).manual_seed(seed)
        m.train()
        n_batches, bs = BN_CALIBRATION
        for _ in range(n_batches):
            m(torch.randn(bs, latent_dim, generator=gen, device=device))
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
    return m.eval()


class _DeferredInterrupt:
    """Ctrl-C during a step is held until the step ends (so the state saved is a whole step's); a second
    Ctrl-C interrupts at once. Only in the main thread of a single process (signals go to every rank)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nStopping after this step to save it (Ctrl-C again to stop at once) ...", file=sys.stderr, flush=True)

    def __enter__(self) -> "_DeferredInterrupt":
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


def _param_digest(*models: nn.Module) -> bytes:
    h = hashlib.sha256()
    for m in models:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


def _gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator,
                      scaler: torch.amp.GradScaler, autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """mean over the batch of (|dD/dx| at x_hat - 1)^2, x_hat on random points between real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen, device=real.device)  # [B, 1, 1, 1]
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with autocast():
        out = D(x_hat).float().sum()
    # under fp16 the gradient is taken of the scaled output (so it does not underflow), then unscaled
    (grad,) = torch.autograd.grad(scaler.scale(out), x_hat, create_graph=True)
    grad = grad.float() / scaler.get_scale() if scaler.is_enabled() else grad.float()
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def _d_loss(loss: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    if loss == "bce":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if loss == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return fake_logits.mean() - real_logits.mean()  # wgan-gp, penalty added by the caller


def _g_loss(loss: str, fake_logits: torch.Tensor) -> torch.Tensor:
    if loss == "bce":
        return F.softplus(-fake_logits).mean()
    return -fake_logits.mean()


# -- checks and the run folder ----------------------------------------------------------------------------

def _validate(o: TrainOptions) -> GeneratorConfig:
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


def default_out(data: str, arch: str) -> Path:
    from gan_deploy.data.sources import dataset_name

    return Path("runs") / f"{dataset_name(data)}_{arch}"


def _latest_state(out: Path) -> Path | None:
    """The newest complete state checkpoint (its JSON is written last, so a JSON means a complete pair)."""
    found = sorted((out / "state").glob("step_*.json")) if (out / "state").is_dir() else []
    return found[-1] if found else None


def _read_state_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GanDeployError("unreadable training state", f"{path} ({e})", expected="a JSON file written by gan-deploy train", hint="delete it to resume from the previous checkpoint, or use --overwrite") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise GanDeployError("not a gan-deploy training state", str(path), expected=f'"format": "{STATE_FORMAT}"')
    if meta.get("version", 0) > STATE_VERSION:
        raise GanDeployError("training state written by a newer gan-deploy", str(path), expected=f"version <= {STATE_VERSION}", hint="upgrade gan-deploy")
    return meta


def _same_setting(key: str, a: Any, b: Any) -> bool:
    """Equality for FIXED_ON_RESUME values; data paths compare by the file they name, however spelled."""
    if key == "data" and a != b:
        pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return a == b


def options_for_resume(given: dict[str, Any]) -> TrainOptions:
    """Options for `--resume`: the saved run's options, overlaid with those given explicitly.

    Changing an option that defines the model or its optimisation (FIXED_ON_RESUME) is refused; steps,
    device, amp, compile, sample/checkpoint/log intervals and progress may change."""
    data = given.get("data", TrainOptions.data)
    out = Path(given.get("out") or default_out(data, given.get("arch", TrainOptions.arch)))
    latest = _latest_state(out)
    if latest is None:
        raise GanDeployError("nothing to resume", str(out), expected="a run folder with a state/ checkpoint", hint="pass the run's --out folder, or drop --resume to start a new run")
    saved = _read_state_meta(latest)["options"]
    for k in FIXED_ON_RESUME:
        if k in given and given[k] is not None and not _same_setting(k, given[k], saved.get(k)):
            raise GanDeployError(f"cannot change --{k.replace('_', '-')} when resuming", given[k], expected=f"{saved.get(k)!r} as in {latest.parent.parent}", hint="drop the option, or start a new run with --overwrite")
    merged = {**{k: v for k, v in saved.items() if k in TrainOptions.__dataclass_fields__}, **given}
    merged.update(out=str(out), resume=True, overwrite=False)
    return TrainOptions(**merged)


def _run_started(out: Path) -> bool:
    return any((out / name).exists() for name in ("generator.safetensors", "state", "metrics.jsonl"))


def _check_out(out: Path, o: TrainOptions) -> Path | None:
    """Refuse to clobber a run (nothing is removed here); return the state file to resume from."""
    if out.exists() and not out.is_dir():
        raise GanDeployError("--out is a file", str(out), expected="a folder for the run", hint="pick another --out")
    if o.resume:
        latest = _latest_state(out)
        if latest is None:
            raise GanDeployError("nothing to resume", str(out), expected="a run folder with a state/ checkpoint", hint="pass the run's --out folder, or drop --resume to start a new run")
        return latest
    if _run_started(out) and not o.overwrite:
        what = "a finished run" if (out / "generator.safetensors").exists() else "an unfinished run"
        raise GanDeployError(f"run folder already holds {what}", str(out), expected="a new or empty folder", hint="add --resume to continue it, --overwrite to start over, or pick another --out")
    return None


def _clear_run(out: Path) -> None:
    """--overwrite: remove only the files a run writes; a user's other files in the folder are left alone."""
    for name in ("generator.safetensors", "generator.json", "metrics.jsonl"):
        (out / name).unlink(missing_ok=True)
    for name in ("samples", "state"):
        shutil.rmtree(out / name, ignore_errors=True)


# -- training state (resume) -------------------------------------------------------------------------------

def _optim_split(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """optimizer.state_dict() -> (tensors for safetensors, the rest for JSON)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        rest[str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                rest[str(idx)][k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": rest}


def _optim_join(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> None:
    state: dict[int, dict[str, Any]] = {}
    for idx, rest in meta["state"].items():
        st = dict(rest)
        head = f"{prefix}.{idx}."
        st.update({k[len(head):]: v for k, v in tensors.items() if k.startswith(head)})
        state[int(idx)] = st
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _save_state(out: Path, step: int, o: TrainOptions, G: nn.Module, D: nn.Module, ema: nn.Module,
                opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, scalers: dict[str, torch.amp.GradScaler],
                gen: torch.Generator, ctx: _Dist, device: torch.device, elapsed: float) -> None:
    """Write state/step_N.safetensors then state/step_N.json (each atomic), then drop older checkpoints.

    Every rank must call it: the per-rank latent generator states are gathered to rank 0."""
    from safetensors.torch import save_file

    rng = _all_gather_bytes(gen.get_state(), ctx, device)  # [world] x uint8 state
    if not ctx.main:
        return
    tensors: dict[str, torch.Tensor] = {}
    for prefix, m in (("G", G), ("D", D), ("EMA", ema)):
        tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in m.state_dict().items()})
    tg, mg = _optim_split(opt_g, "optG")
    td, md = _optim_split(opt_d, "optD")
    tensors.update(tg)
    tensors.update(td)
    for r, s in enumerate(rng):
        tensors[f"rng.latent.rank{r}"] = s
    stem = out / "state" / f"step_{step:08d}"
    weights = stem.with_suffix(".safetensors")
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT})
    meta = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "world_size": ctx.world,
        "options": {k: v for k, v in o.to_dict().items()}, "elapsed_s": elapsed,
        "optimizers": {"G": mg, "D": md}, "scalers": {k: s.state_dict() for k, s in scalers.items()},
        "weights_sha256": sha256_file(weights), "torch": torch.__version__,
    }
    atomic_write_text(stem.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True) + "\n")
    for old in sorted((out / "state").glob("step_*.json")):
        if old != stem.with_suffix(".json"):
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)


def _load_state(path: Path, o: TrainOptions, G: nn.Module, D: nn.Module, ema: nn.Module,
                opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, scalers: dict[str, torch.amp.GradScaler],
                gen: torch.Generator, ctx: _Dist) -> tuple[int, float]:
    from safetensors.torch import load_file

    meta = _read_state_meta(path)
    saved = meta["options"]
    for k in FIXED_ON_RESUME:
        if not _same_setting(k, getattr(o, k), saved.get(k)):
            raise GanDeployError(f"cannot change {k} when resuming", getattr(o, k), expected=f"{saved.get(k)!r} as saved in {path}", hint="drop the option, or start a new run with --overwrite")
    if meta["world_size"] != ctx.world:
        raise GanDeployError("resumed with a different number of processes", ctx.world, expected=f"{meta['world_size']} as when the state was saved", hint="the data sharding and per-rank latents depend on it; use the same torchrun --nproc-per-node")
    weights = path.with_suffix(".safetensors")
    if not weights.exists() or sha256_file(weights) != meta["weights_sha256"]:
        raise GanDeployError("training state weights missing or damaged", str(weights), expected=f"sha256 {meta['weights_sha256'][:12]}", hint="restore the file, or start over with --overwrite")
    t = load_file(str(weights))
    for prefix, m in (("G", G), ("D", D), ("EMA", ema)):
        m.load_state_dict({k[len(prefix) + 1:]: v for k, v in t.items() if k.startswith(prefix + ".")}, strict=True)
    _optim_join(opt_g, t, meta["optimizers"]["G"], "optG")
    _optim_join(opt_d, t, meta["optimizers"]["D"], "optD")
    for k, s in scalers.items():
        if s.is_enabled() and meta["scalers"].get(k):
            s.load_state_dict(meta["scalers"][k])
    gen.set_state(t[f"rng.latent.rank{ctx.rank}"])
    return int(meta["step"]), float(meta["elapsed_s"])


# -- metrics and samples ------------------------------------------------------------------------------------

def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop log records after the resumed step, so the log matches the weights.

    Eval records up to that step stay: they score weights the resumed run continues from (an eval at exactly
    `step` scored the same EMA weights the resumed run starts with). "end" records go: the run goes on."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(rec, dict) and rec.get("step", 0) <= step and rec.get("event", "eval") == "eval":
            keep.append(line)
    atomic_write_text(path, "".join(s + "\n" for s in keep))


def _append_jsonl(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")  # one write per record: a crash cannot leave half a record behind a whole one


def _save_samples(path: Path, m: nn.Module, z: torch.Tensor, cfg: GeneratorConfig) -> Path:
    """The 8x8 grid of `m` (an eval-mode generator) on the fixed latents z [64, Z]."""
    from gan_deploy.core.images import save_grid, to_uint8

    with torch.no_grad():
        x = m(z).float().cpu().numpy()  # [64, C, H, W] in [-1, 1]
    return save_grid(path, to_uint8(x, cfg.value_range), nrow=8)


class _Evaluator:
    """The quality score during training: fixed latents, reference features computed once, a small bootstrap.

    Everything random here has its own source (counter-based latents, numpy's bootstrap generator, the BN
    calibration generator of _standing_stats), so scoring never moves the training RNG streams."""

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


def _round(v: float | None, digits: int = 6) -> float | None:  # 6: so "%.3f" of it matches eval (0.926544 -> 0.9265 -> "0.926")
    return None if v is None else round(v, digits)


# -- the trainer ---------------------------------------------------------------------------------------------

def train(opts: TrainOptions) -> TrainResult:
    """Train a GAN on `opts.data` and write the run folder (module docstring). Raises GanDeployError for bad input."""
    o = opts.resolved()
    cfg = _validate(o)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = _resolve_device(o.device, int(os.environ.get("LOCAL_RANK", "0")), distributed)
    if o.amp == "fp16" and device.type != "cuda":
        raise GanDeployError("--amp fp16 needs a CUDA device", f"device {device}", expected="--amp bf16 or none on the CPU", hint="fp16 autocast with a gradient scaler is a GPU feature; bf16 works on recent CPUs")
    ctx = _init_distributed(device)
    try:
        return _train(o, cfg, device, ctx)
    finally:
        if ctx.owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()


def _train(o: TrainOptions, cfg: GeneratorConfig, device: torch.device, ctx: _Dist) -> TrainResult:
    from gan_deploy.core.timing import Stopwatch
    from gan_deploy.data.sources import load_dataset
    from gan_deploy.nets.networks import build_discriminator, build_generator, count_parameters, init_weights

    out = Path(o.out).expanduser() if o.out else default_out(o.data, o.arch)
    resume_from = _check_out(out, o)
    ds = load_dataset(o.data, o.image_size, o.channels)
    per_rank = len(ds) // ctx.world
    if per_rank < o.batch_size:
        raise GanDeployError("batch size larger than the data set", f"--batch-size {o.batch_size}", expected=f"at most {per_rank} ({len(ds)} images" + (f" / {ctx.world} processes)" if ctx.world > 1 else ")"), hint="lower --batch-size or add data")
    evaluator: _Evaluator | None = None
    if o.eval_every:
        if len(ds) < EVAL_MIN_SAMPLES:
            raise GanDeployError("data set too small for the quality score", f"{len(ds)} images", expected=f"at least {EVAL_MIN_SAMPLES} to fit feature statistics", hint="add data, or turn it off: --eval-every 0")
        from gan_deploy.quality.features import load_classifier

        load_classifier()  # every rank: a missing or damaged classifier stops all of them before anything is written
        if ctx.main:
            evaluator = _Evaluator(ds.images, o.eval_samples, o.seed, cfg.latent_dim, cfg.value_range, device)

    # The same initial weights on every rank, without disturbing the caller's global RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(o.seed)
        G = build_generator(cfg).apply(init_weights).to(device)
        D = build_discriminator(cfg, o.disc_width, norm=o.loss != "wgan-gp").apply(init_weights).to(device)
    # NHWC activations: the convolutions run ~1.5-2x faster on CPU (oneDNN) and use tensor cores well on GPU
    fmt = torch.channels_last if o.arch == "dcgan" else torch.contiguous_format
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    ema = copy.deepcopy(G).requires_grad_(False)
    fused = device.type == "cuda"  # fused Adam: one kernel for all parameters on GPU; the CPU default is fine
    opt_g = torch.optim.Adam(G.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), fused=fused or None)
    opt_d = torch.optim.Adam(D.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), fused=fused or None)
    scalers = {k: torch.amp.GradScaler(device.type, enabled=o.amp == "fp16") for k in ("G", "D")}
    gen = torch.Generator(device=device).manual_seed(_rank_seed(o.seed, ctx.rank))
    start, elapsed_before = 0, 0.0
    if resume_from is not None:
        start, elapsed_before = _load_state(resume_from, o, G, D, ema, opt_g, opt_d, scalers, gen, ctx)
        if start >= o.steps:
            raise GanDeployError("run already trained that far", f"--steps {o.steps}", expected=f"more than the {start} steps done", hint="--steps is the total to reach, not the number to add")

    # Distributed: DDP all-reduces gradients and broadcasts rank 0's BN buffers at every forward.
    G_run, D_run = G, D
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        G_run, D_run = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
    D_for_g = D  # the G step uses the bare D with frozen weights: no D gradients to compute or all-reduce
    if o.compile:
        G_run = torch.compile(G_run)
        if o.loss != "wgan-gp":  # the gradient penalty needs double backward, which torch.compile does not support
            D_run, D_for_g = torch.compile(D_run), torch.compile(D)

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o.amp)

    def autocast() -> torch.autocast:  # a fresh context each time: an autocast object is not re-entrant
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    data = torch.from_numpy(ds.images).to(device).contiguous(memory_format=fmt)  # [N, C, H, W], the whole data set
    batches = _Batches(data, o.batch_size, o.seed, ctx.rank, ctx.world)
    z_fixed = torch.from_numpy(_fixed_latents(o.seed, cfg.latent_dim)).to(device)  # [64, Z]
    B, Z = o.batch_size, cfg.latent_dim
    images_per_step = o.n_critic * B * ctx.world  # real images consumed per step, all ranks

    # Every check has passed: only now is anything removed or written
    if ctx.main:
        if resume_from is None and o.overwrite and _run_started(out):
            _clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            _trim_metrics(out / "metrics.jsonl", start)
    _barrier(ctx)

    # progress: None -> a bar on a terminal, else a line per sample grid (logs, CI); True -> bar; False -> silent
    tty = sys.stderr.isatty()
    bar = None
    if ctx.main and (o.progress or (o.progress is None and tty)):
        from tqdm import tqdm

        # disable=False: an explicit --progress wins over a TQDM_DISABLE left in the environment
        bar = tqdm(total=o.steps, initial=start, unit="step", dynamic_ncols=True, desc=f"train {ds.name}",
                   disable=False)
    say_lines = ctx.main and o.progress is None and not tty

    def log_line(msg: str) -> None:
        if say_lines:
            print(msg, file=sys.stderr, flush=True)

    log_line(f"train: {ds.describe()}; {o.arch} G {_count(count_parameters(G))} D {_count(count_parameters(D))} params; "
             f"{o.loss}, batch {B}" + (f" x {ctx.world} processes" if ctx.world > 1 else "") + f", steps {start}->{o.steps}, {device}")

    last_eval: dict[str, Any] | None = None
    eval_s = 0.0  # seconds spent scoring inside the loop: taken out of images/s, which measures training
    status = {"train": "", "eval": ""}  # the progress bar's postfix, in two parts updated at different steps

    def show() -> None:
        if bar is not None:
            bar.set_postfix_str("  ".join(v for v in status.values() if v), refresh=False)

    def evaluate(model: nn.Module, s: int) -> float:
        """Score `model` (standing stats) at step s, log it; returns the seconds it took."""
        nonlocal last_eval
        assert evaluator is not None
        last_eval = evaluator(model, s)
        _append_jsonl(out / "metrics.jsonl", last_eval)
        status["eval"] = f"FD {last_eval['fd']:.1f}±{last_eval['fd_spread'] or 0:.1f}"
        show()
        log_line(f"  step {s}/{o.steps}: {_quality_text(last_eval)} ({last_eval['n']} images, {last_eval['seconds']:.1f} s)")
        return float(last_eval["seconds"])

    if evaluator is not None:
        log_line(f"  quality score every {o.eval_every} steps: {o.eval_samples} generated vs {len(evaluator.f_ref)} "
                 f"training images (reference features {evaluator.reference_seconds:.1f} s, once)")
        if start == 0:  # the untrained generator: where the curve starts
            evaluate(_standing_stats(ema, Z, o.seed, device), 0)

    sum_d = torch.zeros((), device=device)
    sum_g = torch.zeros((), device=device)
    n_acc, last_d, last_g = 0, float("nan"), float("nan")
    last_sample: Path | None = None
    step = start
    sw = Stopwatch().__enter__()
    t_log, step_log = 0.0, start

    def checkpoint(s: int) -> None:
        _save_state(out, s, o, G, D, ema, opt_g, opt_d, scalers, gen, ctx, device, elapsed_before + sw.elapsed())

    def train_step(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One generator update after n_critic discriminator updates; returns the (d_loss, g_loss) tensors."""
        # ---- discriminator: n_critic updates, each on a fresh real batch ----------------------------------
        for k in range(o.n_critic):
            real = batches.get(step * o.n_critic + k)  # [B, C, H, W]
            z = torch.randn(B, Z, generator=gen, device=device)  # [B, Z]
            if o.n_critic == 1:
                with autocast():
                    fake = G_run(z)  # [B, C, H, W], kept with its graph: the G step reuses it (one G forward per step)
                fake_d = fake.detach()
            else:
                with torch.no_grad(), autocast():
                    fake_d = G(z)
            with autocast():
                # two D calls, not one on cat([real, fake]): batch norm must see pure real / pure fake batches
                d_loss = _d_loss(o.loss, D_run(real).float(), D_run(fake_d).float())
            if o.loss == "wgan-gp":
                d_loss = d_loss + o.gp_weight * _gradient_penalty(D_run, real, fake_d.float(), gen, scalers["D"], autocast)
            opt_d.zero_grad(set_to_none=True)
            scalers["D"].scale(d_loss).backward()
            scalers["D"].step(opt_d)
            scalers["D"].update()
        # ---- generator --------------------------------------------------------------------------------------
        if o.n_critic != 1:
            z = torch.randn(B, Z, generator=gen, device=device)
            with autocast():
                fake = G_run(z)
        D.requires_grad_(False)  # G's loss needs gradients through D, not for D's weights
        with autocast():
            g_loss = _g_loss(o.loss, D_for_g(fake).float())
        opt_g.zero_grad(set_to_none=True)
        scalers["G"].scale(g_loss).backward()
        scalers["G"].step(opt_g)
        scalers["G"].update()
        D.requires_grad_(True)
        return d_loss.detach(), g_loss.detach()

    stop = _DeferredInterrupt(enabled=ctx.world == 1)
    try:
        with stop:
            while step < o.steps:
                d_loss, g_loss = train_step(step)
                step += 1
                # EMA with warm-up: early on, average over ~step/10 steps rather than 1000 stale ones
                _ema_update(ema, G, min(o.ema_decay, (1 + step) / (10 + step)))

                sum_d += d_loss
                sum_g += g_loss
                n_acc += 1
                if step % o.log_every == 0 or step == o.steps:
                    last_d, last_g = (sum_d / n_acc).item(), (sum_g / n_acc).item()  # .item() syncs: only here
                    sum_d.zero_()
                    sum_g.zero_()
                    n_acc = 0
                    now = sw.elapsed()
                    ips = (step - step_log) * images_per_step / max(now - eval_s - t_log, 1e-9)
                    t_log, step_log = now - eval_s, step
                    if ctx.main:
                        rec = {"step": step, "d_loss": round(last_d, 6), "g_loss": round(last_g, 6),
                               "images_per_s": round(ips, 1), "elapsed": round(elapsed_before + now, 3)}
                        if device.type == "cuda":
                            rec["gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                        _append_jsonl(out / "metrics.jsonl", rec)
                        status["train"] = f"d {last_d:.3f} g {last_g:.3f} {ips:.0f} img/s"
                        show()
                if bar is not None:
                    bar.update(1)
                sample_now = ctx.main and o.sample_every and step % o.sample_every == 0 and step != o.steps
                eval_now = evaluator is not None and step % o.eval_every == 0 and step != o.steps
                standing = _standing_stats(ema, Z, o.seed, device) if sample_now or eval_now else None  # shared by both
                if sample_now:
                    last_sample = _save_samples(out / "samples" / f"step_{step:08d}.png", standing, z_fixed, cfg)
                    log_line(f"  step {step}/{o.steps}: d_loss {last_d:.3f} g_loss {last_g:.3f}, "
                             f"{elapsed_before + sw.elapsed():.0f}s, samples {last_sample}")
                if eval_now:
                    eval_s += evaluate(standing, step)
                if o.checkpoint_every and step % o.checkpoint_every == 0 and step != o.steps:
                    checkpoint(step)  # collective: every rank calls it
                if stop.requested:
                    # Ctrl-C was deferred to this step boundary, so the saved state is exactly that of step `step`
                    checkpoint(step)
                    if bar is not None:
                        bar.close()
                    print(f"\nSaved the training state at step {step}; continue with: "
                          f"gan-deploy train --out {out} --resume", file=sys.stderr)
                    raise KeyboardInterrupt
    finally:
        if bar is not None:
            bar.close()
    wall = sw.elapsed()
    train_s = wall - eval_s

    # ---- the end: final state, sync check, the EMA generator --------------------------------------------------
    checkpoint(step)
    digests = [bytes(t.tolist()).hex() for t in
               _all_gather_bytes(torch.frombuffer(bytearray(_param_digest(G, D)), dtype=torch.uint8), ctx, device)]
    if len(set(digests)) != 1:  # DDP keeps replicas identical; anything else is a bug worth stopping for
        raise RuntimeError(f"ranks diverged: weight sha256 per rank {digests}")
    ips_total = (step - start) * images_per_step / max(train_s, 1e-9)
    ckpt = out / "generator.safetensors"
    if ctx.main:
        from gan_deploy.artifacts.checkpoint import save_checkpoint

        final = _standing_stats(ema, Z, o.seed, device)
        last_sample = _save_samples(out / "samples" / f"step_{step:08d}.png", final, z_fixed, cfg)
        quality: dict[str, Any] = {}
        if evaluator is not None:
            evaluate(final, step)  # the loop leaves the last step to this: the weights being saved
            assert last_eval is not None
            quality = {"final_fd": last_eval["fd"], "final_fd_spread": last_eval["fd_spread"],
                       "final_precision": last_eval["precision"], "final_recall": last_eval["recall"],
                       "eval_samples": last_eval["n"], "eval_reference_images": last_eval["n_reference"],
                       "eval_bootstrap": last_eval["bootstrap"], "eval_every": o.eval_every,
                       "classifier_sha256": evaluator.clf.sha256}
        tc = TrainConfig(dataset=ds.name, steps=step, batch_size=o.batch_size, lr=o.lr, beta1=o.beta1, beta2=o.beta2,
                         loss=o.loss, seed=o.seed, disc_width=o.disc_width, ema_decay=o.ema_decay, extra={
                             "data": str(o.data), "data_source": ds.source, "dataset_size": len(ds),
                             "arch": o.arch, "n_critic": o.n_critic, "gp_weight": o.gp_weight if o.loss == "wgan-gp" else None,
                             "world_size": ctx.world, "global_batch_size": B * ctx.world, "amp": o.amp,
                             "device": str(device), "compile": o.compile, "bn_standing_stats": list(BN_CALIBRATION),
                             "wall_time_s": round(elapsed_before + wall, 2), "images_per_s": round(ips_total, 1),
                             "torch": torch.__version__, **quality})
        save_checkpoint(ckpt, final, cfg, train=tc.to_dict())
        _append_jsonl(out / "metrics.jsonl", {"event": "end", "step": step, "d_loss": round(last_d, 6),
                                              "g_loss": round(last_g, 6), "images_per_s": round(ips_total, 1),
                                              "elapsed": round(elapsed_before + wall, 3), "world_size": ctx.world,
                                              "rank_sha256": digests})
    _barrier(ctx)
    return TrainResult(out, ckpt, last_sample, ds.describe(), step, start, wall, ips_total, last_d, last_g,
                       ctx.world, str(device), count_parameters(G), count_parameters(D), digests,
                       last_eval if ctx.main else None)


def _fixed_latents(seed: int, latent_dim: int) -> np.ndarray:
    from gan_deploy.core.latents import latents_range

    return latents_range(seed, 0, SAMPLE_COUNT, latent_dim)  # [64, Z]: the same images at every sample step


def iter_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a metrics.jsonl (skipping a line cut short by a crash)."""
    for line in Path(path).read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue

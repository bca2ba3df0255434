"""The GAN training loop: `train(TrainOptions(...)) -> TrainResult`; `_train` reads top to bottom (nanoGPT style).

One *step* is one generator update, preceded by `n_critic` discriminator updates (1 for bce/hinge, 5 for
wgan-gp), each on a fresh real batch. The losses are in gan_deploy.train.losses (one module each). An
exponential moving average of the generator's weights, with batch-norm statistics recomputed for its own
weights, is what gets saved (gan_deploy.train.ema).

Run folder (`out`, default runs/<dataset>_<arch>; gan_deploy.train.state):

    generator.safetensors + generator.json   the EMA generator (checkpoint.save_checkpoint), what export/generate use
    samples/step_XXXXXXXX.png                64 images from the same fixed latents every --sample-every steps
    metrics.jsonl                            one JSON object per --log-every steps: losses, images/s, elapsed;
                                             {"event": "eval", ...} quality scores (--eval-every); {"event": "end", ...}
    state/step_XXXXXXXX.{safetensors,json}   full training state for --resume (tensors / JSON; never pickle)

Multi-process (`torchrun --nproc-per-node N -m gan_deploy train ...`; gan_deploy.train.distributed):
DistributedDataParallel over gloo (CPU) or NCCL (GPU). The contract: --batch-size is per process, so the global
batch is N x batch; --steps counts optimizer steps, identical on every rank; every epoch one permutation of
the data (from the seed) is dealt round-robin to the ranks (gan_deploy.train.batches); each rank draws its
latents from its own seed; only rank 0 writes files or prints. A resumed run must use the same number of processes.

Determinism: on CPU (same machine, same thread count), the same options and seed give bit-identical weights; a run
stopped at any checkpoint (or by Ctrl-C, which is deferred to the end of the step)
and resumed ends bit-identical to an uninterrupted one: the data order is a pure function of (seed, epoch),
and all other randomness comes from one per-rank torch.Generator whose state is checkpointed. On CUDA that
holds only with --deterministic (gan_deploy.train.device.deterministic_mode: deterministic kernels, no TF32);
without it GPU runs are not bitwise reproducible.

Quality during training (--eval-every N, rank 0 only): gan_deploy.train.evaluator; it draws no training
randomness, so a run's weights are bit-identical with evals on or off; images/s excludes eval time.

Speed on a shared CPU: `gan-deploy train` sets OMP_WAIT_POLICY=PASSIVE before torch loads, so idle OpenMP threads
sleep instead of spinning; with other work on the cores that made steps 2-4x faster here. Calling train() from
Python, set it in the environment before importing torch.
"""
from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.progress import show_bar
from gan_deploy.nets.config import GeneratorConfig
from gan_deploy.train import distributed, losses
from gan_deploy.train.batches import Batches
from gan_deploy.train.device import deterministic_mode, resolve_device
from gan_deploy.train.distributed import Dist
from gan_deploy.train.ema import BN_CALIBRATION, ema_decay_at, ema_update, standing_stats
from gan_deploy.train.evaluator import EVAL_BOOTSTRAP, Evaluator, make_evaluator, quality_text
from gan_deploy.train.interrupt import DeferredInterrupt
from gan_deploy.train.options import EVAL_MIN_SAMPLES, TrainOptions, validate
from gan_deploy.train.result import TrainResult, count_text
from gan_deploy.train.state import (
    append_jsonl,
    check_out,
    clear_run,
    default_out,
    iter_metrics,
    load_state,
    options_for_resume,
    run_started,
    save_state,
    trim_metrics,
)

# names other modules and tests import from here
__all__ = ["EVAL_BOOTSTRAP", "EVAL_MIN_SAMPLES", "TrainOptions", "TrainResult", "iter_metrics", "options_for_resume",
           "train"]

SAMPLE_COUNT = 64  # images in a sample grid (8 x 8)


def train(opts: TrainOptions) -> TrainResult:
    """Train a GAN on `opts.data` and write the run folder (module docstring). Raises GanDeployError for bad input."""
    o = opts.resolved()
    cfg = validate(o)
    env = distributed.read_env()  # torchrun's variables, checked
    with deterministic_mode(o.deterministic, o.device):  # first: it sets CUBLAS_WORKSPACE_CONFIG before CUDA starts
        device = resolve_device(o.device, env)
        if o.amp == "fp16" and device.type != "cuda":
            raise GanDeployError("--amp fp16 needs a CUDA device", f"device {device}", expected="--amp bf16 or none on the CPU", hint="fp16 autocast with a gradient scaler is a GPU feature; bf16 works on recent CPUs")
        ctx = distributed.init(device, env)
        try:
            return _train(o, cfg, device, ctx)
        finally:
            distributed.destroy(ctx)


def _train(o: TrainOptions, cfg: GeneratorConfig, device: torch.device, ctx: Dist) -> TrainResult:
    # ---- set up: check the run folder and the data, build the networks, load a resumed state ---------------
    out = Path(o.out).expanduser() if o.out else default_out(o.data, o.arch)
    resume_from = check_out(out, o)
    ds = _load_data(o, ctx)
    evaluator = (make_evaluator(ds.images, o.eval_samples, o.seed, cfg.latent_dim, cfg.value_range, device, ctx.main)
                 if o.eval_every else None)
    nets = _build(o, cfg, device, ctx)
    start, elapsed_before = _resume(resume_from, o, nets, ctx) if resume_from is not None else (0, 0.0)
    _check_batch_memory(o, nets, cfg, device)
    _wrap(nets, o, device, ctx)
    data = torch.from_numpy(ds.images).to(device).contiguous(memory_format=nets.fmt)  # [N, C, H, W], the whole data set
    batches = Batches(data, o.batch_size, o.seed, ctx.rank, ctx.world)
    z_fixed = torch.from_numpy(_fixed_latents(o.seed, cfg.latent_dim)).to(device)  # [64, Z]
    _open_run_folder(out, o, ctx, resumed_at=start if resume_from is not None else None)
    report = _Report(o, ctx, out, device, start, elapsed_before, images_per_step=o.n_critic * o.batch_size * ctx.world,  # type: ignore[operator]
                     desc=f"train {ds.name}")
    report.line(f"train: {ds.describe()}; {o.arch} G {count_text(_params(nets.G))} D {count_text(_params(nets.D))} "
                f"params; {o.loss}, batch {o.batch_size}" + (f" x {ctx.world} processes" if ctx.world > 1 else "")
                + f", steps {start}->{o.steps}, {device}")
    if evaluator is not None:
        report.line(f"  quality score every {o.eval_every} steps: {o.eval_samples} generated vs {len(evaluator.f_ref)} "
                    f"training images (reference features {evaluator.reference_seconds:.1f} s, once)")
        if start == 0:  # the untrained generator: where the curve starts
            report.eval(evaluator(standing_stats(nets.ema, cfg.latent_dim, o.seed, device), 0))

    def checkpoint(s: int) -> None:  # a collective: every rank calls it
        save_state(out, s, o, nets.G, nets.D, nets.ema, nets.opt_g, nets.opt_d, nets.scalers, nets.gen, ctx, device,
                   elapsed_before + report.elapsed())

    # ---- the loop: D step, G step, EMA, log, samples and score, checkpoint ------------------------------------
    step, last_sample = start, None
    stop = DeferredInterrupt(enabled=ctx.world == 1)
    report.start_clock()
    try:
        with stop:
            while step < o.steps:
                with _FirstStepErrors(o, device) if step == start else contextlib.nullcontext():
                    d_loss, fake = d_step(nets, o, batches, step)
                    g_loss = g_step(nets, o, fake)
                step += 1
                ema_update(nets.ema, nets.G, ema_decay_at(step, o.ema_decay))
                report.losses(step, d_loss, g_loss)  # a metrics.jsonl record every --log-every steps
                last_sample = _samples_and_score(step, o, cfg, nets, evaluator, report, out, z_fixed) or last_sample
                if o.checkpoint_every and step % o.checkpoint_every == 0 and step != o.steps:
                    checkpoint(step)
                if stop.requested:
                    # Ctrl-C was deferred to this step boundary, so the saved state is exactly that of step `step`
                    checkpoint(step)
                    report.close()
                    print(f"\nSaved the training state at step {step}; continue with: "
                          f"gan-deploy train --out {out} --resume", file=sys.stderr)
                    raise KeyboardInterrupt
    finally:
        report.close()

    # ---- the end: final state, sync check, the EMA generator ----------------------------------------------------
    wall = report.elapsed()
    ips_total = (step - start) * report.images_per_step / max(wall - report.eval_s, 1e-9)
    checkpoint(step)
    digests = distributed.rank_digests(ctx, device, nets.G, nets.D)
    if len(set(digests)) != 1:  # DDP keeps replicas identical; anything else is a bug worth stopping for
        raise RuntimeError(f"ranks diverged: weight sha256 per rank {digests}")
    ckpt = out / "generator.safetensors"
    if ctx.main:
        last_sample = _save_generator(ckpt, o, cfg, ds, nets, evaluator, report, ctx, device, z_fixed, step,
                                      elapsed=elapsed_before + wall, images_per_s=ips_total)
        append_jsonl(out / "metrics.jsonl", {"event": "end", "step": step, "d_loss": round(report.last_d, 6),
                                             "g_loss": round(report.last_g, 6), "images_per_s": round(ips_total, 1),
                                             "elapsed": round(elapsed_before + wall, 3), "world_size": ctx.world,
                                             "rank_sha256": digests})
    distributed.barrier(ctx)
    return TrainResult(out, ckpt, last_sample, ds.describe(), step, start, wall, ips_total, report.last_d, report.last_g,
                       ctx.world, str(device), _params(nets.G), _params(nets.D), digests,
                       report.last_eval if ctx.main else None)


def step_runner(opts: TrainOptions) -> tuple[Callable[[int], None], int, torch.device]:
    """One training step (D step, G step, EMA) as a function of the step number, built as train() builds it
    (data, networks, torch.compile) but in one process, with no run folder, for timing
    (benchmarks/train_speed.py). Returns (run_step, real images per step, device); run_step does not
    synchronize the device: the caller does before reading a clock."""
    o = opts.resolved()
    cfg = validate(o)
    ctx = Dist()
    device = resolve_device(o.device, distributed.Env())
    if o.amp == "fp16" and device.type != "cuda":
        raise GanDeployError("--amp fp16 needs a CUDA device", f"device {device}", expected="--amp bf16 or none on the CPU")
    ds = _load_data(o, ctx)
    nets = _build(o, cfg, device, ctx)
    _check_batch_memory(o, nets, cfg, device)
    _wrap(nets, o, device, ctx)
    data = torch.from_numpy(ds.images).to(device).contiguous(memory_format=nets.fmt)
    batches = Batches(data, o.batch_size, o.seed, ctx.rank, ctx.world)

    def run_step(step: int) -> None:
        with _FirstStepErrors(o, device) if step == 0 else contextlib.nullcontext():
            _, fake = d_step(nets, o, batches, step)
            g_step(nets, o, fake)
        ema_update(nets.ema, nets.G, ema_decay_at(step + 1, o.ema_decay))

    return run_step, o.n_critic * o.batch_size, device  # type: ignore[operator]


# -- set up ------------------------------------------------------------------------------------------------------

def _load_data(o: TrainOptions, ctx: Dist) -> Any:
    from gan_deploy.data.sources import load_dataset

    ds = load_dataset(o.data, o.image_size, o.channels)
    per_rank = len(ds) // ctx.world
    if per_rank < o.batch_size:
        raise GanDeployError("batch size larger than the data set", f"--batch-size {o.batch_size}", expected=f"at most {per_rank} ({len(ds)} images" + (f" / {ctx.world} processes)" if ctx.world > 1 else ")"), hint="lower --batch-size or add data")
    return ds


@dataclass
class _Nets:
    """The networks, their optimizers and the step's randomness: everything a training step touches."""

    G: nn.Module
    D: nn.Module
    ema: nn.Module  # the saved generator: an average of G's weights
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scalers: dict[str, torch.amp.GradScaler]  # "G", "D"; enabled for fp16 only
    gen: torch.Generator  # this rank's training randomness (latents, wgan-gp's interpolation weights): checkpointed
    loss: ModuleType  # a gan_deploy.train.losses module
    fmt: torch.memory_format  # of the networks and the data
    latent_dim: int
    device: torch.device
    amp_dtype: torch.dtype | None
    # what the steps call, set by _wrap: DDP and/or torch.compile around G and D, or the bare networks
    G_run: Callable[..., torch.Tensor] | None = None
    D_run: Callable[..., torch.Tensor] | None = None
    D_for_g: Callable[..., torch.Tensor] | None = None  # the G step's D: bare (frozen weights, nothing to all-reduce)

    def autocast(self) -> torch.autocast:  # a fresh context each time: an autocast object is not re-entrant
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def _build(o: TrainOptions, cfg: GeneratorConfig, device: torch.device, ctx: Dist) -> _Nets:
    from gan_deploy.nets.networks import build_discriminator, build_generator, init_weights

    loss = losses.get(o.loss)
    # The same initial weights on every rank, without disturbing the caller's global RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(o.seed)
        G = build_generator(cfg).apply(init_weights).to(device)
        D = build_discriminator(cfg, o.disc_width, norm=loss.CRITIC_BATCH_NORM).apply(init_weights).to(device)
    # NHWC activations: the convolutions run ~1.5-2x faster on CPU (oneDNN) and use tensor cores well on GPU.
    # Except under torch.compile on CUDA: there Inductor's backward of a convolution whose channels_last tensors
    # have ambiguous strides (size-1 dimensions: G's [B, Z, 1, 1] input, D's [B, 1, 1, 1] logits; such a tensor
    # is both NCHW- and NHWC-contiguous) fails a stride assertion in aten.convolution_backward ("expected size
    # 256==256, stride 16==1": the gradient of D's last [B, 256, 4, 4] input came out NCHW where NHWC was
    # assumed). NCHW networks and data leave nothing ambiguous. What that costs on a GPU is unmeasured
    # (benchmarks/train_speed.py measures compile vs eager); on the CPU, where Inductor handles channels_last,
    # compiled runs keep it.
    fmt = (torch.channels_last if o.arch == "dcgan" and not (o.compile and device.type == "cuda")
           else torch.contiguous_format)
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)  # type: ignore[call-overload]
    ema = copy.deepcopy(G).requires_grad_(False)
    fused = device.type == "cuda"  # fused Adam: one kernel for all parameters on GPU; the CPU default is fine
    opt_g = torch.optim.Adam(G.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), fused=fused or None)
    opt_d = torch.optim.Adam(D.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), fused=fused or None)
    scalers = {k: torch.amp.GradScaler(device.type, enabled=o.amp == "fp16") for k in ("G", "D")}
    gen = torch.Generator(device=device).manual_seed(distributed.rank_seed(o.seed, ctx.rank))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o.amp)
    return _Nets(G, D, ema, opt_g, opt_d, scalers, gen, loss, fmt, cfg.latent_dim, device, amp_dtype)


def _check_batch_memory(o: TrainOptions, n: _Nets, cfg: GeneratorConfig, device: torch.device) -> None:
    """--batch-size against the free memory where training runs: per image, every activation of G and of D (on a
    real and on a fake image) kept for the backward pass, about as much again for their gradients and as much
    for autograd's temporaries (3x, a rough upper bound). One line naming the largest batch that fits."""
    from gan_deploy.core.hardware import check_fits, host_available_bytes

    def activations(module: nn.Module, x: torch.Tensor) -> int:
        total = 0

        def hook(_m, _inp, out) -> None:
            nonlocal total
            if isinstance(out, torch.Tensor):
                total += out.numel() * 4  # float32 (autocast halves some: an upper bound)
        leaves = [m for m in module.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        was = module.training
        try:
            with torch.no_grad():
                module.eval()(x)  # batch norm in eval mode: its running statistics are not touched
        finally:
            for h in handles:
                h.remove()
            module.train(was)
        return total

    with torch.random.fork_rng(devices=[]):  # no RNG drawn either: the run is unchanged
        z = torch.zeros(1, cfg.latent_dim, device=device)
        was = n.G.training
        with torch.no_grad():
            img = n.G.eval()(z)
        n.G.train(was)
        per_image = 3 * (activations(n.G, z) + 2 * activations(n.D, img)) + 4 * (cfg.latent_dim + 2 * img[0].numel())
    if device.type == "cuda":
        free: int | None = int(torch.cuda.mem_get_info(device)[0])
    else:
        free = host_available_bytes()
    check_fits("--batch-size", o.batch_size, per_image, free, "GPU" if device.type == "cuda" else "host",
               "image: G's and D's activations on real and fake images, their gradients and autograd's temporaries")


def _resume(path: Path, o: TrainOptions, n: _Nets, ctx: Dist) -> tuple[int, float]:
    """Load the state saved at `path` into the bare networks; returns (step, seconds trained before)."""
    start, elapsed_before = load_state(path, o, n.G, n.D, n.ema, n.opt_g, n.opt_d, n.scalers, n.gen, ctx)
    if start >= o.steps:
        raise GanDeployError("run already trained that far", f"--steps {o.steps}", expected=f"more than the {start} steps done", hint="--steps is the total to reach, not the number to add")
    return start, elapsed_before


def _wrap(n: _Nets, o: TrainOptions, device: torch.device, ctx: Dist) -> None:
    """What the steps call: DDP (all-reduces gradients, broadcasts rank 0's BN buffers at every forward)
    and torch.compile around the bare networks."""
    n.G_run, n.D_run = n.G, n.D
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        n.G_run, n.D_run = DDP(n.G, device_ids=ids), DDP(n.D, device_ids=ids)
    n.D_for_g = n.D  # the G step uses the bare D with frozen weights: no D gradients to compute or all-reduce
    if o.compile:
        n.G_run = torch.compile(n.G_run)
        if n.loss.penalty is None:  # a penalty needs double backward, which torch.compile does not support
            n.D_run, n.D_for_g = torch.compile(n.D_run), torch.compile(n.D)


def _open_run_folder(out: Path, o: TrainOptions, ctx: Dist, resumed_at: int | None) -> None:
    """Every check has passed: only now is anything removed or written."""
    if ctx.main:
        if resumed_at is None and o.overwrite and run_started(out):
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        if resumed_at is not None:
            trim_metrics(out / "metrics.jsonl", resumed_at)
    distributed.barrier(ctx)


def _params(m: nn.Module) -> int:
    from gan_deploy.nets.networks import count_parameters

    return count_parameters(m)


# -- one step --------------------------------------------------------------------------------------------------

def d_step(n: _Nets, o: TrainOptions, batches: Batches, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n_critic discriminator updates, each on a fresh real batch. Returns the last d_loss (detached) and, with
    one update per step, the fake batch with its graph, which the G step reuses (one G forward per step)."""
    B, Z = o.batch_size, n.latent_dim
    fake = None
    for k in range(o.n_critic):  # type: ignore[arg-type]
        real = batches.get(step * o.n_critic + k)  # type: ignore[operator]  # [B, C, H, W]
        z = torch.randn(B, Z, generator=n.gen, device=n.device)  # [B, Z]
        if o.n_critic == 1:
            with n.autocast():
                fake = n.G_run(z)  # type: ignore[misc]  # [B, C, H, W], kept with its graph
            fake_d = fake.detach()
        else:
            with torch.no_grad(), n.autocast():
                fake_d = n.G(z)
        with n.autocast():
            # two D calls, not one on cat([real, fake]): batch norm must see pure real / pure fake batches
            d_loss = n.loss.d_loss(n.D_run(real).float(), n.D_run(fake_d).float())  # type: ignore[misc]
        if n.loss.penalty is not None:
            d_loss = d_loss + o.gp_weight * n.loss.penalty(n.D_run, real, fake_d.float(), n.gen, n.scalers["D"], n.autocast)
        n.opt_d.zero_grad(set_to_none=True)
        n.scalers["D"].scale(d_loss).backward()
        n.scalers["D"].step(n.opt_d)
        n.scalers["D"].update()
    return d_loss.detach(), fake


def g_step(n: _Nets, o: TrainOptions, fake: torch.Tensor | None) -> torch.Tensor:
    """One generator update (on d_step's fake batch if it kept one, else on a new one); returns g_loss (detached)."""
    if fake is None:
        z = torch.randn(o.batch_size, n.latent_dim, generator=n.gen, device=n.device)
        with n.autocast():
            fake = n.G_run(z)  # type: ignore[misc]
    n.D.requires_grad_(False)  # G's loss needs gradients through D, not for D's weights
    with n.autocast():
        g_loss = n.loss.g_loss(n.D_for_g(fake).float())  # type: ignore[misc]
    n.opt_g.zero_grad(set_to_none=True)
    n.scalers["G"].scale(g_loss).backward()
    n.scalers["G"].step(n.opt_g)
    n.scalers["G"].update()
    n.D.requires_grad_(True)
    return g_loss.detach()


class _FirstStepErrors(contextlib.AbstractContextManager):
    """The first step is where torch.compile compiles (forward and backward) and where every op meets
    --deterministic for the first time: their failures there are the user's options, so they become one line
    naming the option (with the original exception chained for a traceback from Python)."""

    def __init__(self, o: TrainOptions, device: torch.device):
        self.o, self.device = o, device

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: object) -> None:
        if e is None or not isinstance(e, Exception) or isinstance(e, (GanDeployError, torch.OutOfMemoryError)):
            return  # nothing raised, Ctrl-C, ours already, or out of memory (not the option's fault)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if self.o.deterministic and "deterministic" in str(e):
            raise GanDeployError("--deterministic: an operation has no deterministic implementation", first, expected="deterministic kernels for every training op", hint="drop --deterministic (CUDA runs are then not bitwise reproducible)") from e
        if self.o.compile:
            raise GanDeployError("--compile failed in the first training step", f"{type(e).__name__}: {first}", expected=f"torch.compile (Inductor) to compile the networks on {self.device}", hint="drop --compile: the eager networks train the same model") from e


# -- what a run reports ----------------------------------------------------------------------------------------------

class _Report:
    """What a run tells while it trains: a progress bar (on a terminal, or --progress) or a line per sample grid
    and score (logs, CI), and the records of metrics.jsonl; only rank 0 shows or writes. Also the run's clock:
    images/s leaves out the seconds spent scoring in the loop (eval_s)."""

    def __init__(self, o: TrainOptions, ctx: Dist, out: Path, device: torch.device, start: int, elapsed_before: float,
                 images_per_step: int, desc: str):
        self.o, self.ctx, self.metrics, self.device = o, ctx, out / "metrics.jsonl", device
        self.elapsed_before, self.images_per_step = elapsed_before, images_per_step
        # progress (core.progress): None -> a bar on a terminal, else a line per sample grid (logs, CI); True -> bar;
        # False -> silent
        self.bar = None
        if ctx.main and show_bar(o.progress):
            from tqdm import tqdm

            # disable=False: an explicit --progress wins over a TQDM_DISABLE left in the environment
            self.bar = tqdm(total=o.steps, initial=start, unit="step", dynamic_ncols=True, desc=desc,
                            disable=False)
        self.say_lines = ctx.main and o.progress is None and not sys.stderr.isatty()
        self.status = {"train": "", "eval": ""}  # the bar's postfix, in two parts updated at different steps
        self.sum_d = torch.zeros((), device=device)  # loss sums since the last record, on the device: no sync per step
        self.sum_g = torch.zeros((), device=device)
        self.n_acc, self.last_d, self.last_g = 0, float("nan"), float("nan")
        self.last_eval: dict[str, Any] | None = None
        self.eval_s = 0.0  # seconds spent scoring inside the loop
        self.t_log, self.step_log = 0.0, start

    def start_clock(self) -> None:
        from gan_deploy.core.timing import Stopwatch

        self._sw = Stopwatch().__enter__()

    def elapsed(self) -> float:
        """Seconds since start_clock (this invocation's loop, scoring included)."""
        return self._sw.elapsed()

    def line(self, msg: str) -> None:
        if self.say_lines:
            print(msg, file=sys.stderr, flush=True)

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("  ".join(v for v in self.status.values() if v), refresh=False)

    def losses(self, step: int, d_loss: torch.Tensor, g_loss: torch.Tensor) -> None:
        """Add one step's losses; every --log-every steps (and at the last) write their mean and images/s."""
        o = self.o
        self.sum_d += d_loss
        self.sum_g += g_loss
        self.n_acc += 1
        if step % o.log_every == 0 or step == o.steps:
            self.last_d, self.last_g = (self.sum_d / self.n_acc).item(), (self.sum_g / self.n_acc).item()  # .item() syncs: only here
            self.sum_d.zero_()
            self.sum_g.zero_()
            self.n_acc = 0
            now = self.elapsed()
            ips = (step - self.step_log) * self.images_per_step / max(now - self.eval_s - self.t_log, 1e-9)
            self.t_log, self.step_log = now - self.eval_s, step
            if self.ctx.main:
                rec = {"step": step, "d_loss": round(self.last_d, 6), "g_loss": round(self.last_g, 6),
                       "images_per_s": round(ips, 1), "elapsed": round(self.elapsed_before + now, 3)}
                if self.device.type == "cuda":
                    rec["gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
                append_jsonl(self.metrics, rec)
                self.status["train"] = f"d {self.last_d:.3f} g {self.last_g:.3f} {ips:.0f} img/s"
                self._show()
        if self.bar is not None:
            self.bar.update(1)

    def samples(self, step: int, path: Path) -> None:
        self.line(f"  step {step}/{self.o.steps}: d_loss {self.last_d:.3f} g_loss {self.last_g:.3f}, "
                  f"{self.elapsed_before + self.elapsed():.0f}s, samples {path}")

    def eval(self, rec: dict[str, Any]) -> float:
        """Log a quality score (an "eval" record); returns the seconds it took."""
        self.last_eval = rec
        append_jsonl(self.metrics, rec)
        self.status["eval"] = f"FD {rec['fd']:.1f}±{rec['fd_spread'] or 0:.1f}"
        self._show()
        self.line(f"  step {rec['step']}/{self.o.steps}: {quality_text(rec)} ({rec['n']} images, {rec['seconds']:.1f} s)")
        return float(rec["seconds"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _samples_and_score(step: int, o: TrainOptions, cfg: GeneratorConfig, n: _Nets, evaluator: Evaluator | None,
                       report: _Report, out: Path, z_fixed: torch.Tensor) -> Path | None:
    """The sample grid and the quality score when due (not at the last step: the end does both); the path of
    a grid written, else None."""
    sample_now = report.ctx.main and o.sample_every and step % o.sample_every == 0 and step != o.steps
    eval_now = evaluator is not None and step % o.eval_every == 0 and step != o.steps
    if not (sample_now or eval_now):
        return None
    standing = standing_stats(n.ema, cfg.latent_dim, o.seed, n.device)  # shared by both
    path = None
    if sample_now:
        path = _save_samples(out / "samples" / f"step_{step:08d}.png", standing, z_fixed, cfg)
        report.samples(step, path)
    if eval_now:
        assert evaluator is not None
        report.eval_s += report.eval(evaluator(standing, step))
    return path


# -- the end ----------------------------------------------------------------------------------------------------------

def _save_generator(ckpt: Path, o: TrainOptions, cfg: GeneratorConfig, ds: Any, n: _Nets, evaluator: Evaluator | None,
                    report: _Report, ctx: Dist, device: torch.device, z_fixed: torch.Tensor, step: int, elapsed: float,
                    images_per_s: float) -> Path:
    """The last sample grid, the final score, and the EMA generator with its train metadata; returns the grid."""
    from gan_deploy.artifacts.checkpoint import save_checkpoint

    final = standing_stats(n.ema, cfg.latent_dim, o.seed, device)
    grid = _save_samples(ckpt.parent / "samples" / f"step_{step:08d}.png", final, z_fixed, cfg)
    quality: dict[str, Any] = {}
    if evaluator is not None:
        report.eval(evaluator(final, step))  # the loop leaves the last step to this: the weights being saved
        q = report.last_eval
        assert q is not None
        quality = {"final_fd": q["fd"], "final_fd_spread": q["fd_spread"], "final_precision": q["precision"],
                   "final_recall": q["recall"], "eval_samples": q["n"], "eval_reference_images": q["n_reference"],
                   "eval_bootstrap": q["bootstrap"], "eval_every": o.eval_every, "classifier_sha256": evaluator.clf.sha256}
    facts = {"data_source": ds.source, "dataset_size": len(ds), "world_size": ctx.world,
             "global_batch_size": o.batch_size * ctx.world, "device": str(device), "bn_standing_stats": list(BN_CALIBRATION),
             "wall_time_s": round(elapsed, 2), "images_per_s": round(images_per_s, 1), "torch": torch.__version__, **quality}
    save_checkpoint(ckpt, final, cfg, train=train_record(o, ds.name, step, facts))
    return grid


# TrainOptions fields that say how this command was invoked, not how the generator was trained
_INVOCATION_ONLY = ("out", "resume", "overwrite", "progress")


def train_record(o: TrainOptions, dataset: str, steps: int, facts: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's "train" metadata: the run's options (o.to_dict(), resolved, without the invocation-only
    ones) at the top level, with `dataset` (the data set's name) and `steps` (steps trained), and the run's facts
    under "extra" (data source and size, processes, resolved device, wall time, images/s, torch version, final
    quality score). "extra" also repeats data, arch, n_critic, gp_weight (None unless wgan-gp), amp and compile:
    checkpoints written before TrainOptions was the record kept them there, and readers look there."""
    rec = {k: v for k, v in o.to_dict().items() if k not in _INVOCATION_ONLY}
    rec.update(dataset=dataset, steps=steps)
    rec["extra"] = {"data": str(o.data), "arch": o.arch, "n_critic": o.n_critic,
                    "gp_weight": o.gp_weight if o.loss == "wgan-gp" else None, "amp": o.amp, "compile": o.compile,
                    **facts}
    return rec


def _fixed_latents(seed: int, latent_dim: int) -> np.ndarray:
    from gan_deploy.core.latents import latents_range

    return latents_range(seed, 0, SAMPLE_COUNT, latent_dim)  # [64, Z]: the same images at every sample step


def _save_samples(path: Path, m: nn.Module, z: torch.Tensor, cfg: GeneratorConfig) -> Path:
    """The 8x8 grid of `m` (an eval-mode generator) on the fixed latents z [64, Z]."""
    from gan_deploy.core.images import save_grid, to_uint8

    with torch.no_grad():
        x = m(z).float().cpu().numpy()  # [64, C, H, W] in [-1, 1]
    return save_grid(path, to_uint8(x, cfg.value_range), nrow=8)


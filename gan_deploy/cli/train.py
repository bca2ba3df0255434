"""`gan-deploy train`: parse the options, call gan_deploy.train.train(), print the summary."""
from __future__ import annotations

import os

import click

from gan_deploy.cli.options import command, device_option, input_path_option, output_option, seed_option
from gan_deploy.data.sources import BUILTIN
from gan_deploy.nets.config import ARCHS
from gan_deploy.train.options import AMP_MODES, DEFAULT_STEPS, EVAL_MIN_SAMPLES, LOSSES, TrainOptions

_D = TrainOptions()  # the defaults live in TrainOptions; the options below only show them


@command("train")
@input_path_option("--data", specials=BUILTIN, dir_okay=True, default=_D.data, show_default=True,
              help="digits (built in), a folder of images, an .npy/.npz array, or an MNIST IDX file "
                   "(train-images-idx3-ubyte[.gz]; its labels file beside it is picked up).")
@output_option("--out", "-o", kind="train-folder", default=None,
              help="Run folder. Default: runs/<dataset>_<arch>.")
@click.option("--arch", type=click.Choice(list(ARCHS)), default=_D.arch, show_default=True)
@click.option("--loss", type=click.Choice(list(LOSSES)), default=_D.loss, show_default=True,
              help="bce: non-saturating GAN loss; hinge; wgan-gp: Wasserstein + gradient penalty (critic without batch norm).")
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULT_STEPS, show_default=True,
              help="Generator updates in total (with --resume: the total to reach).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=_D.batch_size, show_default=True,
              help="Images per discriminator update, per process (global batch = processes x this).")
@click.option("--image-size", type=click.IntRange(min=4), default=_D.image_size, show_default=True,
              help="Images are resized to this square size (dcgan: a power of two).")
@click.option("--channels", type=click.Choice(["1", "3"]), default=str(_D.channels), show_default=True,
              help="1: grayscale, 3: RGB.")
@click.option("--latent-dim", type=click.IntRange(min=1), default=_D.latent_dim, show_default=True, help="Latent size Z.")
@click.option("--width", type=click.IntRange(min=1), default=_D.width, show_default=True,
              help="Generator width (dcgan: channels of its last hidden layer; 64 is ~0.9M parameters at 32x32).")
@click.option("--disc-width", type=click.IntRange(min=1), default=None, help="Discriminator width. Default: --width.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_D.lr, show_default=True, help="Adam learning rate (G and D).")
@click.option("--beta1", type=click.FloatRange(0, 1, max_open=True), default=_D.beta1, show_default=True)
@click.option("--beta2", type=click.FloatRange(0, 1, max_open=True), default=_D.beta2, show_default=True)
@click.option("--n-critic", type=click.IntRange(min=1), default=None,
              help="Discriminator updates per generator update. Default: 5 for wgan-gp, else 1.")
@click.option("--gp-weight", type=click.FloatRange(min=0), default=_D.gp_weight, show_default=True, help="wgan-gp penalty weight.")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=_D.ema_decay, show_default=True,
              help="Decay of the generator weight average that is saved (0: save the raw generator).")
@seed_option(default=_D.seed)
@device_option(default=_D.device)
@click.option("--amp", type=click.Choice(list(AMP_MODES)), default=_D.amp, show_default=True,
              help="Mixed precision. fp16 (with a gradient scaler) needs CUDA.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the networks (slow start; the gain on a GPU is unmeasured: benchmarks/train_speed.py).")
@click.option("--deterministic/--no-deterministic", default=_D.deterministic,
              help="Bit-identical runs on one GPU: deterministic cuDNN/cuBLAS kernels, no autotuning, no TF32 "
                   "(CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set). Costs speed (how much is unmeasured). Without it "
                   "CUDA runs are not bitwise reproducible. No effect on the CPU, which is deterministic already.")
@click.option("--sample-every", type=click.IntRange(min=0), default=_D.sample_every, show_default=True,
              help="Steps between sample grids (samples/step_N.png); 0: only at the end.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=_D.checkpoint_every, show_default=True,
              help="Steps between training-state checkpoints (state/) for --resume; 0: only at the end.")
@click.option("--log-every", type=click.IntRange(min=1), default=_D.log_every, show_default=True,
              help="Steps between metrics.jsonl records.")
@click.option("--eval-every", type=click.IntRange(min=0), default=_D.eval_every, show_default=True,
              help="Steps between quality scores of the EMA generator against the training data (FD ± spread, "
                   "precision, recall; also at step 0 and at the end) in metrics.jsonl and the progress; 0: off.")
@click.option("--eval-samples", type=click.IntRange(min=EVAL_MIN_SAMPLES), default=_D.eval_samples, show_default=True,
              help="Generated images per quality score (the same latents every time; compare FDs only at the same n).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint, with its saved options.")
@click.option("--overwrite", is_flag=True, help="Replace a finished or unfinished run in --out.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar. Default: a bar on a terminal, otherwise a line per sample grid.")
@click.pass_context
def train(ctx: click.Context, **kw: object) -> None:
    """Train a GAN generator; the run folder gets generator.safetensors + .json (the EMA generator), sample
    grids from fixed latents, metrics.jsonl and resumable state.

    \b
    Examples:
      gan-deploy train                                  # digits, dcgan, 1500 steps: ~6 min on 2 CPU cores
      gan-deploy train --data ~/mnist/train-images-idx3-ubyte.gz --steps 5000
      gan-deploy train --data faces/ --channels 3 --image-size 64 --loss hinge --out runs/faces
      gan-deploy train --out runs/digits_dcgan --resume --steps 4000     # continue to 4000 steps
      gan-deploy train --eval-every 150 --out runs/curve    # FD vs steps in runs/curve/metrics.jsonl
      torchrun --nproc-per-node 2 -m gan_deploy train --batch-size 32   # DDP: global batch 2 x 32

    \b
    Multi-process (torchrun): --batch-size is per process, --steps counts optimizer steps (the same on
    every process), each process trains on its own share of every epoch, only process 0 writes files.
    Ctrl-C finishes the current step, saves the state, and prints how to --resume.
    A resumed run continues bit for bit on the CPU, and on one GPU with --deterministic.
    """
    # OMP_WAIT_POLICY=PASSIVE is set for every command in cli/main.py, before torch loads (below)
    from gan_deploy.train import options_for_resume
    from gan_deploy.train import train as run_training

    typed = {k for k in kw if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    kw["channels"] = int(kw["channels"])  # type: ignore[call-overload]
    kw["out"] = str(kw["out"]) if kw["out"] is not None else None
    kw["data"] = str(kw["data"])  # a path (InputPath, for the output check) or a built-in name; the options keep text
    kw["compile"] = kw.pop("compile_")
    typed = {"compile" if k == "compile_" else k for k in typed}
    if kw["resume"]:
        # only what was typed: everything else comes from the run being resumed
        opts = options_for_resume({k: v for k, v in kw.items() if k in typed})
    else:
        opts = TrainOptions(**kw)  # type: ignore[arg-type]
    result = run_training(opts)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process gets here; one summary is enough
        click.echo(result.summary())

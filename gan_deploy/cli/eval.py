"""`gan-deploy eval`: parse the options, call gan_deploy.quality.evaluate.evaluate(), print the report.

Kept free of imports from gan_deploy.cli.main (which imports this module at its end), so either can be imported first.
"""
from __future__ import annotations

import click

from gan_deploy.backends import CHOICES as BACKEND_CHOICES
from gan_deploy.cli.options import (
    artifact_options,
    backend_option,
    command,
    device_option,
    input_path_option,
    json_option,
    seed_option,
    torch_precision_option,
    write_json,
)
from gan_deploy.core.errors import GanDeployError
from gan_deploy.data.sources import BUILTIN


@command("eval", short_help="Quality score: FD, precision, recall vs real data or another backend.")
@artifact_options(checkpoint_help="Generator checkpoint (.safetensors with its .json). Default: the shipped digits_dcgan (package data). "
                                  "With --onnx/--engine and --against-backend: the checkpoint the reference backend runs.",
                  onnx_help="ONNX generator to score.", engine_help="TensorRT engine to score.")
@input_path_option("--images", exists=True, dir_okay=True, default=None,
              help="Score image files instead of a generator: a `gan-deploy generate` folder (its manifest.csv is "
                   "followed), any folder of images, or an .npy/.npz array.")
@input_path_option("--reference", "-r", specials=BUILTIN, dir_okay=True, default="digits", show_default=True,
              help="What to score against: digits (built in), a folder of images (e.g. a `generate` output), "
                   "an .npy/.npz array or an MNIST IDX file.")
@click.option("--against-backend", type=click.Choice([b for b in BACKEND_CHOICES if b != "auto"]), default=None,
              help="Score against the same latents run on this backend instead (paired; e.g. eager = FP32 "
                   "PyTorch): the quantization gate's comparison.")
@backend_option(help="Backend that generates the scored images.")
@torch_precision_option(help="Compute precision of --backend eager/compile.")
@device_option(help="auto, cpu, cuda or cuda:N (generation only; features are computed on the CPU).")
@click.option("-n", "--num", "n", type=int, default=2000, show_default=True,
              help="Generated images to score (latents 0..n-1 of --seed); with --images every file is scored.")
@seed_option(help="Latent seed; also seeds the bootstrap and the halves split.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=10, show_default=True,
              help="Bootstrap resamples behind the ± spread (0: no spread).")
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours for the precision/recall manifolds.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--no-context", is_flag=True, help="Skip the context scores (real-vs-real halves, untrained generator, noise floor).")
@json_option()
def eval_cmd(checkpoint, onnx, engine, value_range, images, reference, against_backend, backend, precision, device, n,
             seed, bootstrap, k, batch_size, no_context, json_out) -> None:
    """Score generated images: Fréchet distance (FD ± bootstrap spread), precision and recall in the feature
    space of the digits classifier shipped in models/ (no Inception weights needed).

    FD 0 means the same feature statistics; lower is better. Precision: share of generated images that look
    like the reference; recall: share of the reference's variety covered (mode collapse lowers it). For
    context the real data is scored against itself (two halves) and an untrained generator against it.

    \b
    Examples:
      gan-deploy eval                                   # shipped generator vs the digits
      gan-deploy eval -c runs/digits_dcgan/generator.safetensors -n 5000 --json q.json
      gan-deploy eval --onnx g_int8.onnx -c g.safetensors --against-backend eager
                                                        # quantized vs FP32 eager, same latents
      gan-deploy eval --backend eager --precision fp16 --against-backend eager
      gan-deploy eval --images samples/                 # a `gan-deploy generate` folder vs the digits
      gan-deploy eval --images samples/ --reference other_samples/
    """
    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.artifacts.spec import parse_value_range
    from gan_deploy.quality.evaluate import EvalOptions, evaluate

    if images is not None and (checkpoint or onnx or engine):
        raise GanDeployError("--images and a generator were both given", f"--images {images}", expected="one thing to score", hint="drop --checkpoint/--onnx/--engine, or drop --images")
    # --json against the inputs and their sidecars: cli.options.Command checked it before this body ran
    if json_out is not None and images is not None and images.is_dir():
        from gan_deploy.core.outputs import is_within
        if is_within(json_out, images):
            raise GanDeployError("--json would write into the scored --images folder", str(json_out),
                                 expected="a file outside it", hint="write the report beside the folder, e.g. --json eval.json")
    artifact = against = None
    if images is None:
        # with --onnx/--engine, --checkpoint names the reference (eager) side, not what is scored
        artifact = load_artifact(None if (onnx or engine) else checkpoint, onnx, engine, parse_value_range(value_range))
        if against_backend and artifact.kind != "checkpoint" and (onnx or engine):
            from gan_deploy.backends import runner_class
            if artifact.kind not in runner_class(against_backend).accepts:
                against = load_artifact(checkpoint)  # the FP32 checkpoint (default: the shipped one)
    opts = EvalOptions(backend=backend, device=device, precision=precision, images=images, reference=reference,
                       against_backend=against_backend, against_artifact=against, n=n, seed=seed, k=k, bootstrap=bootstrap,
                       context=not no_context, batch_size=batch_size)
    report = evaluate(artifact, opts)
    click.echo(report.summary())
    write_json(json_out, report.to_dict())

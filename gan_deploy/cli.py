"""The `gan-deploy` command line. Commands only parse, call one library function, and print.

Every GanDeployError becomes a one-line `Error: ...` and exit code 2; Ctrl-C becomes exit code 130.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__
from .errors import GanDeployError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GanDeployError as e:
            click.secho(f"Error: {e.one_line()}", err=True, fg="red")
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("\nInterrupted: files written so far are complete; nothing half-written was left.", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gan-deploy")
def main() -> None:
    """Take a GAN generator from PyTorch to fast, verified inference.

    \b
    Typical flow:
      gan-deploy train                      # or use the shipped models/digits_dcgan
      gan-deploy export                     # -> models/digits_dcgan.onnx, checked against eager
      gan-deploy generate -n 1000 --out samples/
      gan-deploy bench                      # eager vs torch.compile vs onnxruntime
    """


# -- shared option bundles --------------------------------------------------------------------------

def artifact_options(f: Callable) -> Callable:
    """--checkpoint / --onnx / --engine / --value-range: which generator to run."""
    f = click.option("--value-range", "value_range", type=click.Choice(["-1,1", "0,1"]), default=None,
                     help="Output range of a foreign ONNX generator without gan-deploy metadata (default -1,1).")(f)
    f = click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="TensorRT engine built by `gan-deploy build-engine`.")(f)
    f = click.option("--onnx", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="ONNX generator: ours from `export`, or any with input [N,Z] and output [N,C,H,W].")(f)
    f = click.option("--checkpoint", "-c", type=click.Path(path_type=Path), default=None,
                     help="Generator checkpoint (.safetensors with its .json). Default: the shipped models/digits_dcgan.")(f)
    return f


def load_artifact_from_options(checkpoint, onnx, engine, value_range):
    from .artifact import load_artifact, parse_value_range
    return load_artifact(checkpoint, onnx, engine, parse_value_range(value_range))


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(f)


# -- commands -------------------------------------------------------------------------------------

@main.command()
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), default=None,
              help="Checkpoint to export. Default: the shipped models/digits_dcgan.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write. Default: beside the checkpoint, with .onnx.")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Max |onnxruntime - eager| allowed on the [-1,1] image scale.")
@click.option("--factory", default=None,
              help="Your own generator: 'package.module:callable' or 'path/to/file.py:ClassName'.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="Constructor arguments for --factory, as JSON.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights for --factory: .safetensors, or a state dict (loaded with weights_only=True).")
@click.option("--latent-dim", type=click.IntRange(min=1), default=None, help="Latent size Z for --factory, if the model has no latent_dim/nz attribute.")
@click.option("--value-range", type=click.Choice(["-1,1", "0,1"]), default="-1,1", show_default=True,
              help="Output range of a --factory generator (tanh: -1,1; sigmoid: 0,1).")
def export(checkpoint, out, opset, tolerance, factory, kwargs_json, weights, latent_dim, value_range) -> None:
    """Export a generator to ONNX with a dynamic batch axis, verified against eager PyTorch.

    Runs onnx.checker, then the same latents through onnxruntime and PyTorch; nothing is written if they
    differ by more than --tolerance. The ONNX metadata records the generator config and the sha256 of
    the checkpoint it came from.

    \b
    Examples:
      gan-deploy export
      gan-deploy export -c runs/mine/generator.safetensors -o mine.onnx
      gan-deploy export --factory examples/my_gan.py:Generator --kwargs '{"nz": 100}' \\
                        --weights netG.pth --out netG.onnx
    """
    import json

    from .artifact import parse_value_range
    from .export import onnx_from_checkpoint, onnx_from_factory

    if factory:
        try:
            kwargs = json.loads(kwargs_json)
        except json.JSONDecodeError as e:
            raise GanDeployError("--kwargs is not valid JSON", kwargs_json, 'an object such as {"nz": 100}', str(e)) from None
        if not isinstance(kwargs, dict):
            raise GanDeployError("--kwargs must be a JSON object", kwargs_json, 'an object such as {"nz": 100}', None)
        if out is None:
            raise GanDeployError("--out is required with --factory", None, "an .onnx file name", None)
        report = onnx_from_factory(factory, out, kwargs, weights, latent_dim, parse_value_range(value_range), opset, tolerance)
    else:
        report = onnx_from_checkpoint(checkpoint, out, opset, tolerance)
    click.echo(report.summary())


def run() -> None:
    main(prog_name="gan-deploy")

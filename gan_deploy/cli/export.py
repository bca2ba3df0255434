"""`gan-deploy export`: PyTorch -> ONNX, checked against eager."""
from __future__ import annotations

import click

from gan_deploy.cli.options import DEFAULT_VALUE_RANGE, checkpoint_option, command, input_path_option, output_option, value_range_option
from gan_deploy.core.errors import GanDeployError
from gan_deploy.export.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, MIN_OPSET


@command("export", short_help="PyTorch -> ONNX (dynamic batch), checked against eager.")
@checkpoint_option(help="Checkpoint to export. Default: the shipped digits_dcgan (package data).")
@output_option("--out", "-o", kind="onnx", default=None,
              help="ONNX file to write. Default: beside the checkpoint, with .onnx (the shipped one: models/digits_dcgan.onnx in the working folder).")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=DEFAULT_OPSET, show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE, show_default=True,
              help="Max |onnxruntime - eager| allowed on the [-1,1] image scale.")
@click.option("--factory", default=None,
              help="Your own generator: 'package.module:callable' or 'path/to/file.py:ClassName'.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="Constructor arguments for --factory, as JSON.")
@input_path_option("--weights", default=None,
              help="Weights for --factory: .safetensors, or a state dict (loaded with weights_only=True).")
@click.option("--latent-dim", type=click.IntRange(min=1), default=None, help="Latent size Z for --factory, if the model has no latent_dim/nz attribute.")
@value_range_option(default=DEFAULT_VALUE_RANGE, help="Output range of a --factory generator (tanh: -1,1; sigmoid: 0,1).")
def export(checkpoint, out, opset, tolerance, factory, kwargs_json, weights, latent_dim, value_range) -> None:
    """Export a generator to ONNX with a dynamic batch axis, verified against eager PyTorch.

    Runs onnx.checker, then the same latents through onnxruntime and PyTorch; nothing is written if they
    differ by more than --tolerance. The ONNX metadata records the generator config and the sha256 of
    the checkpoint it came from.

    \b
    Examples:
      gan-deploy export
      gan-deploy export -c runs/mine/generator.safetensors -o mine.onnx
      gan-deploy export --factory examples/pytorch_dcgan_tutorial.py:Generator --kwargs '{"nz": 100}' \\
                        --weights netG.pth --out netG.onnx
    """
    import json

    from gan_deploy.artifacts import parse_value_range
    from gan_deploy.export.onnx import onnx_from_checkpoint, onnx_from_factory

    if factory:
        try:
            kwargs = json.loads(kwargs_json)
        except json.JSONDecodeError as e:
            raise GanDeployError("--kwargs is not valid JSON", kwargs_json, expected='an object such as {"nz": 100}', hint=str(e)) from None
        if not isinstance(kwargs, dict):
            raise GanDeployError("--kwargs must be a JSON object", kwargs_json, expected='an object such as {"nz": 100}')
        if out is None:
            raise GanDeployError("--out is required with --factory", None, expected="an .onnx file name", hint="add e.g. --out my_generator.onnx")
        report = onnx_from_factory(factory, out, kwargs=kwargs, weights=weights, latent_dim=latent_dim,
                                   value_range=parse_value_range(value_range), opset=opset, tolerance=tolerance)  # type: ignore[arg-type]
    else:
        report = onnx_from_checkpoint(checkpoint, out, opset=opset, tolerance=tolerance)
    click.echo(report.summary())



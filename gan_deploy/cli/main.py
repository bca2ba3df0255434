"""The `gan-deploy` command line. Commands only parse, call one library function, and print.

Every GanDeployError, and every usage error click finds (a value out of range, an unknown option), becomes a
one-line `Error: ...` and exit code 2; Ctrl-C becomes exit code 130.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import click

from gan_deploy import __version__
from gan_deploy.core.errors import GanDeployError

# Idle OpenMP threads sleep instead of spin-waiting. Set before any command imports torch: on a machine
# shared with other work (or with our own writer threads), spinning threads get descheduled mid-region and
# eager PyTorch ran 2-4x slower (measured: batch 64 on 2 cores, 218 ms -> 47 ms). onnxruntime's pool gets
# the same policy (backends/onnxruntime.py). A value the user sets wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            _show_warnings_as_lines()
            try:
                return super().invoke(ctx)
            except GanDeployError as e:
                click.secho(f"Error: {e.one_line()}", err=True, fg="red")
                ctx.exit(EXIT_USER_ERROR)
            except click.UsageError as e:  # click's own (a value out of range, an unknown option): one line too
                where = e.ctx.command_path if e.ctx is not None else "gan-deploy"
                message = e.format_message()
                end = "" if message.endswith((".", "?", "!")) else "."
                click.secho(f"Error: {message}{end} Note: see `{where} --help`", err=True, fg="red")
                ctx.exit(EXIT_USER_ERROR)
            except KeyboardInterrupt:
                click.echo("\nInterrupted: files written so far are complete; nothing half-written was left.", err=True)
                ctx.exit(EXIT_INTERRUPTED)


def _show_warnings_as_lines() -> None:
    """Our warnings (GanDeployWarning: NaN images, a value range that does not fit) as one `warning: ...` line each
    on stderr, every time; libraries' warnings (torch's deprecations, pickle notices) are not the user's business
    on the command line and are dropped (Python callers still see them)."""
    import sys

    from gan_deploy.core.errors import GanDeployWarning

    if not sys.warnoptions:  # -W or PYTHONWARNINGS given: the user asked to see them
        warnings.simplefilter("ignore")
    warnings.simplefilter("always", GanDeployWarning)
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, GanDeployWarning):
            click.secho(f"warning: {message}", err=True, fg="yellow")
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gan-deploy")
def main() -> None:
    """Take a GAN generator from PyTorch to fast, verified inference.

    \b
    Typical flow:
      gan-deploy train                      # or use the shipped digits_dcgan
      gan-deploy export                     # -> models/digits_dcgan.onnx, checked against eager
      gan-deploy generate -n 1000 --out samples/
      gan-deploy bench                      # eager vs torch.compile vs onnxruntime
    """


def run() -> None:
    main(prog_name="gan-deploy")


def _register() -> None:
    """Every command module defines click commands and imports only cli.options; this is the one list of them."""
    from gan_deploy.cli.bench import bench
    from gan_deploy.cli.eval import eval_cmd
    from gan_deploy.cli.export import export
    from gan_deploy.cli.generate import generate
    from gan_deploy.cli.precision import build_engine, quantize
    from gan_deploy.cli.serve import serve, triton_repo
    from gan_deploy.cli.train import train

    # the group's command list shows each command's short_help; click would cut train's long first sentence to
    # "Train a GAN generator; the run folder gets..." (its own short_help belongs in cli/train.py)
    if not train.short_help:
        train.short_help = "Train a GAN generator (built-in digits or your images)."
    for cmd in (train, export, quantize, build_engine, generate, bench, eval_cmd, serve, triton_repo):
        main.add_command(cmd)


_register()

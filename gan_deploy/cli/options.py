"""Option bundles shared by several commands, each declared once. Choices come from the library's own lists
(the backend registry, the value ranges, the image formats), so adding a backend changes no command."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from gan_deploy.artifacts.spec import VALUE_RANGES
from gan_deploy.backends import CHOICES as BACKEND_CHOICES
from gan_deploy.core.errors import GanDeployError

VALUE_RANGE_HELP = "Output range of a foreign ONNX generator without gan-deploy metadata (default -1,1)."


def value_range_option(f: Callable, default: str | None = None, help: str = VALUE_RANGE_HELP) -> Callable:
    return click.option("--value-range", "value_range", type=click.Choice(list(VALUE_RANGES)), default=default,
                        show_default=default is not None, help=help)(f)


def artifact_options(f: Callable) -> Callable:
    """--checkpoint / --onnx / --engine / --value-range: which generator to run (at most one of the first three)."""
    f = value_range_option(f)
    f = click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="TensorRT engine built by `gan-deploy build-engine`.")(f)
    f = click.option("--onnx", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="ONNX generator: ours from `export`, or any with input [N,Z] and output [N,C,H,W].")(f)
    f = click.option("--checkpoint", "-c", type=click.Path(path_type=Path), default=None,
                     help="Generator checkpoint (.safetensors with its .json). Default: the shipped digits_dcgan.")(f)
    return f


def load_artifact_from_options(checkpoint: Path | None, onnx: Path | None, engine: Path | None,
                               value_range: str | None) -> Any:
    from gan_deploy.artifacts import load_artifact, parse_value_range
    return load_artifact(checkpoint, onnx, engine, parse_value_range(value_range))


def device_option(f: Callable, default: str = "auto", help: str = "auto, cpu, cuda or cuda:N.") -> Callable:
    return click.option("--device", default=default, show_default=True, help=help)(f)


def backend_option(f: Callable, help: str = "auto = the fastest backend available for this artifact on this device.") -> Callable:
    return click.option("--backend", type=click.Choice(list(BACKEND_CHOICES)), default="auto", show_default=True, help=help)(f)


def json_option(f: Callable, help: str = "Also write the report as JSON.") -> Callable:
    return click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help=help)(f)


def int_list(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> tuple[int, ...] | None:
    """Callback for comma-separated positive integers such as 1,16,64,256."""
    if value is None or value == "":
        return None
    try:
        sizes = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers such as 1,16,64,256") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: expected integers >= 1, such as 1,16,64,256")
    return sizes


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """Write a report as JSON (atomically) and say where."""
    if path:
        from gan_deploy.core.fileio import atomic_write_text
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        click.echo(f"wrote {path}", err=True)


def one_of(flags: dict[str, bool], allowed: str) -> str:
    """The one flag set among mutually exclusive flags (--int8 / --fp16 ...)."""
    chosen = [k for k, v in flags.items() if v]
    if len(chosen) != 1:
        raise GanDeployError("choose exactly one precision", " ".join(f"--{c}" for c in chosen) or "none given",
                             expected=allowed)
    return chosen[0]


def check_report_outputs(outputs: dict[str, Path | None], inputs: list[Path | None]) -> None:
    """Report files (--json, --plot ...): writable, none of the inputs, not two options on one file. Checked
    before the work, so a long run never ends in "permission denied" or replaces its own input."""
    from gan_deploy.core.outputs import check_output_file, check_replaceable, refuse_inputs_as_outputs, same_file

    given = [(opt, Path(p)) for opt, p in outputs.items() if p is not None]
    for i, (opt, p) in enumerate(given):
        check_output_file(p, option=opt)
        refuse_inputs_as_outputs([p], inputs, option=opt)
        if opt == "--json" or p.suffix.lower() == ".png":
            check_replaceable(p, "json" if opt == "--json" else "png", option=opt)
        for opt2, p2 in given[i + 1:]:
            if same_file(p, p2):
                raise GanDeployError(f"{opt} and {opt2} name the same file", str(p), expected="a file each",
                                     hint=f"e.g. {opt} report.json {opt2} report.png")

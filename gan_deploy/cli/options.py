"""Every option more than one command takes, declared once here; commands only add their own. Choices, ranges
and defaults come from the library's own constants (the backend registry, the value ranges, the seed bound,
the calibration default), so a change there changes every command at once. tests/test_cli_options.py fails
when two commands declare one option name with a different type, range or default (except the differences it
lists, each with its reason)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from gan_deploy.artifacts.spec import VALUE_RANGES, GeneratorSpec
from gan_deploy.backends import CHOICES as BACKEND_CHOICES
from gan_deploy.backends.torch_common import TORCH_PRECISIONS
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import MAX_SEED
from gan_deploy.precision.calibrate import DEFAULT_CALIB_SAMPLES, MIN_CALIB_SAMPLES
from gan_deploy.precision.gate import DEFAULT_GATE_SAMPLES, GATE_SEED, THRESHOLDS

F = TypeVar("F", bound=Callable[..., Any])

# the range a generator that declares none has (GeneratorSpec's default): "-1,1"
DEFAULT_VALUE_RANGE = next(k for k, v in VALUE_RANGES.items() if v == GeneratorSpec.value_range)
# calibration feeds batches of CALIB_BATCH latents; the library refuses fewer than a quarter batch

CHECKPOINT_HELP = "Generator checkpoint (.safetensors with its .json). Default: the shipped digits_dcgan."
ONNX_HELP = "ONNX generator: ours from `export`, or any with input [N,Z] and output [N,C,H,W]."
ENGINE_HELP = "TensorRT engine built by `gan-deploy build-engine`."
VALUE_RANGE_HELP = f"Output range of a foreign ONNX generator without gan-deploy metadata (default {DEFAULT_VALUE_RANGE})."
DEVICE_HELP = "auto, cpu, cuda or cuda:N."
BACKEND_HELP = ("auto = the fastest backend available for this artifact on this device; on a CPU with a batch size, "
                "onnxruntime and OpenVINO are timed on this artifact once and the choice is kept a week (docs/precision.md).")
JSON_HELP = "Also write the report as JSON."


# -- paths: every path a command reads or writes is declared with one of these two types -------------------------

class InputPath(click.Path):
    """A file or folder the command reads. With its sidecar (<stem>.json of a model) it is protected: no output of
    the command may be it (artifacts.writes.check_outputs, run by `Command` before the command body).
    `specials`: words the option also takes that are not paths (e.g. train --data digits)."""

    def __init__(self, *, specials: tuple[str, ...] = (), **kw: Any):
        kw.setdefault("path_type", Path)
        super().__init__(**kw)
        self.specials = specials

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value in self.specials:
            return value
        return super().convert(value, param, ctx)


class OutputPath(click.Path):
    """A path the command writes, of one kind of artifacts.writes.KINDS (a callable picks the kind from the
    command's parameters, e.g. quantize -o is an INT8 or an FP16 model). Checked before the command body."""

    def __init__(self, kind: str | Callable[[dict[str, Any]], str], *, specials: tuple[str, ...] = (), **kw: Any):
        from gan_deploy.artifacts.writes import KINDS

        kinds = [kind] if isinstance(kind, str) else list(getattr(kind, "kinds", ()))
        assert kinds and all(k in KINDS for k in kinds), f"declare the output kind(s): {kinds}"
        folder = KINDS[kinds[0]].folder
        kw.setdefault("path_type", Path)
        super().__init__(file_okay=not folder, dir_okay=folder, **kw)
        self.kind, self.kinds, self.specials = kind, tuple(kinds), specials

    def kind_for(self, params: dict[str, Any]) -> str:
        return self.kind if isinstance(self.kind, str) else self.kind(params)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value in self.specials:
            return value
        return super().convert(value, param, ctx)


def kind_by(choose: Callable[[dict[str, Any]], str], *kinds: str) -> Callable[[dict[str, Any]], str]:
    """An output kind that depends on other options; `kinds` lists every kind it can return (for the tests)."""
    choose.kinds = kinds  # type: ignore[attr-defined]
    return choose


def option_name(p: click.Parameter) -> str:
    return max(p.opts, key=len) if p.opts else str(p.name)


def declared_paths(ctx: click.Context) -> tuple[list[Any], list[Path]]:
    """(outputs, inputs) of this invocation, from the parameters' declared types."""
    from gan_deploy.artifacts.writes import Output

    outputs, inputs = [], []
    for p in ctx.command.params:
        value = ctx.params.get(p.name) if p.name else None
        if value is None:
            continue
        values = list(value) if isinstance(value, (tuple, list)) else [value]
        paths = [Path(v) for v in values if isinstance(v, Path)]
        if isinstance(p.type, OutputPath):
            outputs += [Output(option_name(p), v, p.type.kind_for(ctx.params)) for v in paths]
        elif isinstance(p.type, InputPath):
            inputs += paths
    return outputs, inputs


class Command(click.Command):
    """A gan-deploy command: before its body runs, every path it was asked to write goes through the one check
    (artifacts.writes.check_outputs): never an input or an input's sidecar, never an existing file of another
    kind. tests/test_cli_writes.py proves every command is one and every path option is declared."""

    def invoke(self, ctx: click.Context) -> Any:
        from gan_deploy.artifacts.writes import check_outputs

        outputs, inputs = declared_paths(ctx)
        if outputs:
            check_outputs(outputs, inputs)
        return super().invoke(ctx)


def command(name: str | None = None, **kw: Any) -> Callable[[F], Command]:
    """click.command with the output check (`Command`)."""
    return click.command(name, cls=Command, **kw)  # type: ignore[return-value]


def input_path_option(*decls: str, **kw: Any) -> Callable[[F], F]:
    type_kw = {k: kw.pop(k) for k in ("exists", "dir_okay", "file_okay", "specials") if k in kw}
    type_kw.setdefault("dir_okay", False)
    return click.option(*decls, type=InputPath(**type_kw), **kw)


def output_option(*decls: str, kind: str | Callable[[dict[str, Any]], str], **kw: Any) -> Callable[[F], F]:
    specials = kw.pop("specials", ())
    return click.option(*decls, type=OutputPath(kind, specials=specials), **kw)


def _apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    """One decorator from several, listed in the order `--help` shows them."""
    def decorate(f: F) -> F:
        for o in reversed(options):
            f = o(f)
        return f
    return decorate


def checkpoint_option(help: str = CHECKPOINT_HELP) -> Callable[[F], F]:
    return click.option("--checkpoint", "-c", type=InputPath(), default=None, help=help)


def value_range_option(default: str | None = None, help: str = VALUE_RANGE_HELP) -> Callable[[F], F]:
    """--value-range, choices from artifacts.spec.VALUE_RANGES. No default where the artifact's own metadata
    decides (None); export passes DEFAULT_VALUE_RANGE, since there it describes the model being written."""
    return click.option("--value-range", "value_range", type=click.Choice(list(VALUE_RANGES)), default=default,
                        show_default=default is not None, help=help)


def artifact_options(*, engine: bool = True, checkpoint_help: str = CHECKPOINT_HELP, onnx_help: str = ONNX_HELP,
                     engine_help: str = ENGINE_HELP, value_range_help: str = VALUE_RANGE_HELP) -> Callable[[F], F]:
    """The artifact choice: --checkpoint / --onnx / --engine (at most one; the library refuses two) and
    --value-range. `engine=False` for commands that take an FP32 source model (quantize, build-engine)."""
    options = [checkpoint_option(checkpoint_help),
               input_path_option("--onnx", default=None, help=onnx_help)]
    if engine:
        options.append(input_path_option("--engine", default=None, help=engine_help))
    options.append(value_range_option(help=value_range_help))
    return _apply(options)


def load_artifact_from_options(checkpoint: Path | None, onnx: Path | None, engine: Path | None,
                               value_range: str | None) -> Any:
    from gan_deploy.artifacts import load_artifact, parse_value_range
    return load_artifact(checkpoint, onnx, engine, parse_value_range(value_range))


def device_option(default: str = "auto", help: str = DEVICE_HELP) -> Callable[[F], F]:
    return click.option("--device", default=default, show_default=True, help=help)


def backend_option(help: str = BACKEND_HELP) -> Callable[[F], F]:
    return click.option("--backend", type=click.Choice(list(BACKEND_CHOICES)), default="auto", show_default=True, help=help)


def torch_precision_option(help: str) -> Callable[[F], F]:
    """--precision of the PyTorch backends (eager, compile): backends.torch_common.TORCH_PRECISIONS."""
    return click.option("--precision", type=click.Choice(list(TORCH_PRECISIONS)), default="fp32", show_default=True, help=help)


def json_option(help: str = JSON_HELP) -> Callable[[F], F]:
    return output_option("--json", "json_out", kind="json", default=None, help=help)


def seed_option(default: int = 0, help: str | None = None) -> Callable[[F], F]:
    """--seed: every command accepts the seeds core.latents accepts, 0 .. MAX_SEED (2**63 - 1)."""
    return click.option("--seed", type=click.IntRange(0, MAX_SEED), default=default, show_default=True, help=help)


def calib_samples_option(help: str) -> Callable[[F], F]:
    """--calib-samples: latents from the prior that calibrate INT8 activation ranges (precision.quantize's default)."""
    return click.option("--calib-samples", type=click.IntRange(min=MIN_CALIB_SAMPLES), default=DEFAULT_CALIB_SAMPLES,
                        show_default=True, help=help)


def precision_flags(helps: dict[str, str]) -> Callable[[F], F]:
    """One flag per precision (--int8, --fp16, --fp32), in the order of `helps`; `chosen_precision` picks the
    one given. The keys are the library's precisions for the command (tests/test_cli_options.py checks)."""
    return _apply([click.option(f"--{p}", p, is_flag=True, help=h) for p, h in helps.items()])


def chosen_precision(flags: dict[str, bool]) -> str:
    """The one precision flag set: "choose exactly one precision" otherwise, naming them all."""
    names = [f"--{p}" for p in flags]
    return one_of(flags, names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1])


def _fd_ratio(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> float | str | None:
    if value is None:
        return None
    if value.lower() == "none":
        return "none"
    try:
        v = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or 'none'") from None
    if v < 0:
        raise click.BadParameter("must be >= 0")
    return v


def _gate_default(field: str) -> str:
    """A threshold's default per precision, from precision.gate.THRESHOLDS: "[default: int8 20, fp16/fp32 30]"."""
    by_value: dict[str, list[str]] = {}
    for precision, t in THRESHOLDS.items():
        v = getattr(t, field)
        by_value.setdefault("none" if v is None else f"{v:g}", []).append(precision)
    if len(by_value) == 1:
        return f"[default: {next(iter(by_value))}]"
    return "[default: " + ", ".join(f"{'/'.join(ps)} {v}" for v, ps in by_value.items()) + "]"


def gate_options(f: F) -> F:
    """Thresholds of the quality gate (quantize, build-engine); unset ones take the precision's defaults
    (precision.gate.THRESHOLDS, which the help text shows)."""
    return _apply([
        click.option("--gate-samples", type=click.IntRange(min=32), default=DEFAULT_GATE_SAMPLES, show_default=True,
                     help=f"Images compared with eager FP32 (gate latents, seed {GATE_SEED}; never the calibration ones)."),
        click.option("--max-nonfinite", type=click.IntRange(min=0), default=None,
                     help=f"Most NaN/Inf pixels allowed. {_gate_default('max_nonfinite')}"),
        click.option("--max-saturation-increase", type=click.FloatRange(min=0, max=1), default=None,
                     help="Most extra share of pixels at the value range's ends vs FP32 (solid-colour failure). "
                          + _gate_default("max_saturation_increase")),
        click.option("--min-psnr-worst", type=float, default=None,
                     help=f"Lowest per-image PSNR allowed, dB, peak = range span. {_gate_default('min_psnr_worst')}"),
        click.option("--min-psnr-median", type=float, default=None,
                     help=f"Lowest median per-image PSNR, dB. {_gate_default('min_psnr_median')}"),
        click.option("--max-fd-ratio", callback=_fd_ratio, default=None, metavar="FLOAT|none",
                     help="Most FD(candidate, FP32) / FD(FP32, FP32 of fresh latents) in the quality score's feature "
                          f"space; 'none' skips the quality score. {_gate_default('max_fd_ratio')}"),
    ])(f)


def int_list(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> tuple[int, ...] | None:
    """Callback for comma-separated positive integers such as 1,16,64,256."""
    if value is None:
        return None
    if not value.strip():  # given, but empty: not the same as leaving the option out
        raise click.BadParameter(f"{value!r}: expected comma-separated integers such as 1,16,64,256")
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



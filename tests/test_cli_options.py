"""Each CLI option is declared once (gan_deploy/cli/options.py) and means the same in every command.

The walk below compares every option that two commands share by name: its type (choices, range, path rules),
default, flag-ness, aliases and parameter name. A declaration copied into a command and then edited (a seed
range, a default) fails here. Differences that are meant are listed in INTENDED with the reason."""
import click
import pytest

from gan_deploy.cli.main import main

# option -> (the attributes allowed to differ between commands, why)
INTENDED = {
    "--out": ({"type", "default", "show_default"}, "each command writes its own kind of output (a file, a folder)"),
    "--batch-size": ({"default"}, "the best batch differs: scoring features (eval), inference (generate), training"),
    "--num": ({"type", "default"}, "eval: with --images -n is ignored, and run_eval refuses too few images itself"),
    "--device": ({"default"}, "build-engine needs a GPU (TensorRT), so its default is cuda, not auto"),
    "--max-batch-size": ({"default"}, "serve: one backend call per batch; triton-repo: the ONNX model's max_batch_size"),
    "--gate-samples": ({"type", "default"}, "bench shows the gate's figures only when asked (0 = off); quantize and "
                                            "build-engine run the gate itself, which needs at least 32 images"),
    "--value-range": ({"default", "show_default"}, "export describes the model it writes (tanh by default); "
                                                   "elsewhere the artifact's own metadata decides"),
    "--latent-dim": ({"default", "show_default"}, "train: Z of the new model; export: for --factory, read from the "
                                                  "model's latent_dim/nz attribute unless given"),
}


def _signature(p: click.Parameter) -> dict:
    assert isinstance(p, click.Option)
    info = p.type.to_info_dict()
    return {
        "name": p.name,
        "opts": tuple(sorted(p.opts)),
        "secondary_opts": tuple(sorted(p.secondary_opts)),
        "type": info,
        "default": p.default,
        "show_default": p.show_default,
        "is_flag": p.is_flag,
        "multiple": p.multiple,
        "callback": getattr(p.callback, "__qualname__", None),
    }


def _long_name(p: click.Parameter) -> str:
    return max(p.opts, key=lambda o: (o.startswith("--"), len(o)))


def _shared_options(commands: dict[str, click.Command]) -> dict[str, dict[str, dict]]:
    """option name -> {command: signature}, for options two or more commands declare."""
    seen: dict[str, dict[str, dict]] = {}
    for cmd_name, cmd in commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option):
                seen.setdefault(_long_name(p), {})[cmd_name] = _signature(p)
    return {k: v for k, v in seen.items() if len(v) > 1}


def _differences(by_command: dict[str, dict]) -> set[str]:
    first, *rest = by_command.values()
    return {k for sig in rest for k in sig if sig[k] != first[k]}


def _undeclared_differences(commands: dict[str, click.Command]) -> list[str]:
    bad = []
    for opt, by_command in sorted(_shared_options(commands).items()):
        allowed = INTENDED.get(opt, (set(), ""))[0]
        for attr in sorted(_differences(by_command) - allowed):
            values = ", ".join(f"{c}: {sig[attr]!r}" for c, sig in by_command.items())
            bad.append(f"{opt} differs in {attr} ({values})")
    return bad


def test_shared_options_are_declared_alike():
    bad = _undeclared_differences(main.commands)
    assert not bad, "declare the option once in gan_deploy/cli/options.py, or list the difference in INTENDED: " + "; ".join(bad)


def test_every_intended_difference_still_exists():
    """An INTENDED entry that no longer differs is stale: it would hide a future copy-paste."""
    shared = _shared_options(main.commands)
    for opt, (attrs, _why) in INTENDED.items():
        assert opt in shared, f"{opt} is no longer shared: drop it from INTENDED"
        assert _differences(shared[opt]) == attrs, f"{opt}: differs in {_differences(shared[opt])}, INTENDED says {attrs}"


def test_the_walk_catches_a_copied_declaration():
    """A command that copies --seed with its own range, and one that copies --json with a new default, fail."""
    def cmd(*options):
        f = lambda **kw: None  # noqa: E731
        for o in options:
            f = o(f)
        return click.command()(f)

    from gan_deploy.cli.options import json_option, seed_option

    good = cmd(seed_option(), json_option())
    copied_seed = cmd(click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True))
    copied_json = cmd(click.option("--json", "json_out", type=click.Path(dir_okay=False), default="r.json"))
    assert _undeclared_differences({"a": good, "b": cmd(seed_option(help="other words"))}) == []
    bad = _undeclared_differences({"a": good, "b": copied_seed, "c": copied_json})
    assert any(b.startswith("--seed differs in type") for b in bad), bad
    assert any(b.startswith("--json differs in default") for b in bad), bad


def test_defaults_and_ranges_come_from_the_library():
    from gan_deploy.artifacts.spec import VALUE_RANGES
    from gan_deploy.core.latents import MAX_SEED
    from gan_deploy.engine.build import DEFAULT_PROFILE, ENGINE_PRECISIONS
    from gan_deploy.precision.quantize import DEFAULT_CALIB_SAMPLES, QUANTIZE_PRECISIONS

    params = {(name, p.name): p for name, cmd in main.commands.items() for p in cmd.params}
    for name in ("train", "generate", "bench", "eval"):  # one range: every seed core.latents takes, no other
        seed = params[(name, "seed")]
        assert seed.type.convert(str(MAX_SEED), seed, None) == MAX_SEED
        with pytest.raises(click.BadParameter):
            seed.type.convert(str(MAX_SEED + 1), seed, None)
    for name in ("quantize", "build-engine"):
        assert params[(name, "calib_samples")].default == DEFAULT_CALIB_SAMPLES
    for name in ("export", "generate", "eval", "quantize", "triton-repo"):
        assert list(params[(name, "value_range")].type.choices) == list(VALUE_RANGES), name  # type: ignore[attr-defined]
    assert [params[("build-engine", f"{b}_batch")].default for b in ("min", "opt", "max")] == list(DEFAULT_PROFILE)
    # one flag per precision the operation makes, no more, no fewer
    flags = {name: {p.name for p in main.commands[name].params if getattr(p, "is_flag", False) and p.name in
                    ("int8", "fp16", "fp32", "bf16", "tf32")} for name in ("quantize", "build-engine")}
    assert flags == {"quantize": set(QUANTIZE_PRECISIONS), "build-engine": set(ENGINE_PRECISIONS)}



# command -> the options object it builds (a public API name); CLI parameter -> field where the names differ
OPTIONS_OBJECT = {"generate": "GenerateOptions", "bench": "BenchOptions", "quantize": "QuantizeOptions",
                  "build-engine": "EngineOptions", "train": "TrainOptions"}
FIELD = {"min_time": "min_time_s", "max_time": "max_time_s", "workspace": "workspace_mib"}


def test_cli_defaults_are_the_options_objects_defaults():
    """Where a command's option and its options object both have a default, they are one value (the CLI's comes
    from the library); None in the object means the library decides, and is not compared."""
    import dataclasses

    import gan_deploy

    bad = []
    for cmd_name, cls_name in OPTIONS_OBJECT.items():
        fields = {f.name: f.default for f in dataclasses.fields(getattr(gan_deploy, cls_name))
                  if f.default is not dataclasses.MISSING and f.default is not None}
        for p in main.commands[cmd_name].params:
            name = FIELD.get(p.name or "", p.name)
            if name not in fields or p.default is None or getattr(p, "is_flag", False) or p.multiple:
                continue
            value = p.callback(None, p, p.default) if p.callback else p.type.convert(p.default, p, None)
            lib = fields[name]
            if type(value) is not type(lib):  # Path("samples") vs "samples", --channels "1" vs 1
                value, lib = str(value), str(lib)
            if value != lib:
                bad.append(f"{cmd_name} {p.opts[0]}: {value!r}, {cls_name}.{name}: {lib!r}")
    assert not bad, "take the default from the library: " + "; ".join(bad)

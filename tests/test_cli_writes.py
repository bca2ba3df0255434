"""One place decides what a command may write (artifacts/writes.py, run by cli.options.Command before every
command body). These tests walk every option of every command: a path option declared with a plain click.Path,
a command that is not a `Command`, or an output that can name an input or an unrelated file fails here."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from gan_deploy.artifacts.writes import KINDS, Output, check_outputs
from gan_deploy.cli.main import main
from gan_deploy.cli.options import Command, InputPath, OutputPath, option_name
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.resources import asset_path as asset

COMMANDS = dict(sorted(main.commands.items()))

# Text options that name no file the command writes (each with why). A new text option must be added here,
# or declared with input_path_option / output_option: that is the point of this list.
NOT_PATHS = {
    ("bench", "--backends"): "backend names", ("bench", "--batch-sizes"): "numbers", ("bench", "--device"): "a device",
    ("bench", "--precisions"): "precision names", ("eval", "--device"): "a device", ("export", "--factory"): "module:attr",
    ("export", "--kwargs"): "JSON", ("generate", "--device"): "a device", ("generate", "--shard"): "K/N",
    ("generate", "--tar-prefix"): "a file name prefix inside --out", ("quantize", "--max-fd-ratio"): "a number",
    ("build-engine", "--max-fd-ratio"): "a number", ("build-engine", "--device"): "a device", ("quantize", "--device"): "a device",
    ("serve", "--device"): "a device", ("serve", "--host"): "an address", ("serve", "--ray-address"): "a Ray address",
    ("serve", "--app-name"): "a name", ("serve", "--route-prefix"): "a URL prefix", ("train", "--device"): "a device",
    ("triton-repo", "--name"): "a model name inside --out", ("triton-repo", "--preferred-batch-sizes"): "numbers",
    ("train", "--channels"): "a choice", ("bench", "--variant-name"): "a label",
}


def _params(kind):
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and isinstance(p.type, kind):
                yield name, p


def test_every_command_runs_the_output_check():
    assert COMMANDS, "no commands registered"
    for name, cmd in COMMANDS.items():
        assert isinstance(cmd, Command), f"{name}: declare it with cli.options.command so its outputs are checked"


def test_every_path_option_is_declared_as_an_input_or_an_output():
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if isinstance(p.type, click.Path):
                assert isinstance(p.type, (InputPath, OutputPath)), \
                    f"{name} {option_name(p)}: use input_path_option or output_option (cli/options.py), not click.Path"


def test_every_text_option_is_known_not_to_be_a_path():
    unknown = [(name, option_name(p)) for name, cmd in COMMANDS.items() for p in cmd.params
               if isinstance(p, click.Option) and p.type is click.STRING and (name, option_name(p)) not in NOT_PATHS]
    assert not unknown, f"text options that may name a path: declare them with input_path_option/output_option, or add to NOT_PATHS: {unknown}"


def test_output_kinds_are_known():
    for name, p in _params(OutputPath):
        assert all(k in KINDS for k in p.type.kinds), (name, option_name(p))


@pytest.fixture()
def inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for ext in ("safetensors", "json"):
        shutil.copy(asset(f"digits_dcgan.{ext}"), tmp_path / f"g.{ext}")
    np.save(tmp_path / "data.npy", np.zeros((8, 16, 16), np.uint8))
    (tmp_path / "notes.txt").write_text("mine\n")
    return tmp_path


def _input_args(name: str, d: Path) -> list[str]:
    opts = {o for p in COMMANDS[name].params for o in p.opts}
    if "--checkpoint" in opts:
        return ["--checkpoint", str(d / "g.safetensors")]
    assert "--data" in opts, f"{name}: give this test an input option of the command"
    return ["--data", str(d / "data.npy")]


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


OUTPUT_OPTIONS = [(name, option_name(p)) for name, p in _params(OutputPath)]


@pytest.mark.parametrize("name,opt", OUTPUT_OPTIONS, ids=[f"{n} {o}" for n, o in OUTPUT_OPTIONS])
def test_no_output_option_can_name_an_input_or_its_sidecar(inputs, name, opt):
    d = inputs
    args = _input_args(name, d)
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    victim = d / ("data.npy" if "--data" in args else "g.json")
    code, out = _run([name, *args, opt, str(victim)])
    assert code == 2, (name, opt, out)
    assert "Traceback" not in out and out.strip().count("\n") == 0, out
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    if "--data" not in args:  # the weights themselves, and through a symlink and a hard link
        for target in ("g.safetensors",):
            os.symlink(d / target, d / "alias")
            os.link(d / target, d / "hard")
            for path in ("alias", "hard", f"sub/../{target}"):
                (d / "sub").mkdir(exist_ok=True)
                code, out = _run([name, *args, opt, str(d / path)])
                assert code == 2, (name, opt, path, out)
            assert (d / target).read_bytes() == before[target]


FILE_OUTPUTS = [(name, option_name(p), KINDS[p.type.kinds[0]].suffix or ".txt") for name, p in _params(OutputPath)
                if not KINDS[p.type.kinds[0]].folder]


@pytest.mark.parametrize("name,opt,suffix", FILE_OUTPUTS, ids=[f"{n} {o}" for n, o, _ in FILE_OUTPUTS])
def test_no_file_output_replaces_an_unrelated_file(inputs, name, opt, suffix):
    victim = inputs / f"notes{suffix}"
    victim.write_text("mine\n")
    code, out = _run([name, *_input_args(name, inputs), opt, str(victim)])
    assert code == 2 and "names an existing file that is not" in out, (name, opt, out)
    assert victim.read_text() == "mine\n"


def test_the_issue_cases(inputs):
    d = inputs
    code, out = _run(["export", "-c", str(d / "g.safetensors"), "-o", str(d / "g.onnx")])
    assert code == 0, out
    fp32 = (d / "g.onnx").read_bytes()
    code, out = _run(["quantize", "--int8", "-c", str(d / "g.safetensors"), "-o", str(d / "g.onnx")])
    assert code == 2 and "not an INT8 ONNX model" in out, out
    assert (d / "g.onnx").read_bytes() == fp32
    code, out = _run(["export", "-c", str(d / "g.safetensors"), "-o", str(d / "g.onnx")])  # an earlier export: replaced
    assert code == 0, out
    code, out = _run(["serve", "-c", str(d / "g.safetensors"), "--write-config", str(d / "serve.yaml")])
    assert code == 0, out
    code, out = _run(["serve", "-c", str(d / "g.safetensors"), "--write-config", str(d / "serve.yaml")])  # its own: replaced
    assert code == 0, out


def test_check_outputs_rules(tmp_path):
    a = tmp_path / "a.safetensors"
    a.write_bytes(b"w")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(GanDeployError, match="would overwrite an input"):
        check_outputs([Output("--json", tmp_path / "a.json", "json")], [a])  # the sidecar of an input
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(GanDeployError, match="broken symlink"):
        check_outputs([Output("--json", tmp_path / "dangling", "json")], [])
    with pytest.raises(GanDeployError, match="name the same file"):
        check_outputs([Output("--json", tmp_path / "r.json", "json"), Output("--plot", tmp_path / "x/../r.json", "png")], [])
    with pytest.raises(GanDeployError, match="is a folder"):
        check_outputs([Output("--json", tmp_path, "json")], [])
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "m.onnx").write_bytes(b"x")
    with pytest.raises(GanDeployError, match="holds"):
        check_outputs([Output("--out", tmp_path / "repo", "triton-repo")], [tmp_path / "repo" / "m.onnx"])
    check_outputs([Output("--out", tmp_path / "repo", "generate-folder")], [tmp_path / "repo" / "m.onnx"])  # writes beside it
    (tmp_path / "old.json").write_text('{"rows": []}')
    check_outputs([Output("--json", tmp_path / "old.json", "json")], [a])  # an earlier report: may be replaced
    with pytest.raises(ValueError):
        Output("--x", tmp_path / "x", "no-such-kind")

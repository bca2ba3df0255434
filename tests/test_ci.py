"""CI runs what the README tells a contributor to run, in a brand-new venv (issue 17): the README's test command,
verbatim, after `python3 -m venv` and its activation, so nothing of the machine's own Python is relied on."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    """The first line of the ```bash block after the README's "Run the tests" heading."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"\*\*Run the tests\*\*.*?```bash\n(.*?)\n", text, re.S)
    assert m, "the README lost its **Run the tests** block"
    return m.group(1).strip()


def ci_lines() -> list[str]:
    return [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim_in_a_brand_new_venv():
    cmd = readme_test_command()
    assert "pytest" in cmd and "pip install" in cmd, cmd
    lines = ci_lines()
    assert cmd in lines, f".ci/run does not run the README's test command {cmd!r}"
    at = lines.index(cmd)
    venv = [i for i, ln in enumerate(lines) if re.search(r"\bpython3? -m venv\b", ln) and "--system-site-packages" not in ln]
    activate = [i for i, ln in enumerate(lines) if re.match(r"(\.|source) .*/bin/activate\b", ln)]
    assert venv and activate and venv[0] < activate[0] < at, ".ci/run must make a fresh venv and activate it before the test command"
    # nothing between the activation and the command installs into (or reuses) another environment
    assert not any("pip install" in ln for ln in lines[activate[0] + 1:at])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_script_is_valid_bash():
    r = subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

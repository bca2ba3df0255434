"""A wheel built from the repository, installed into a fresh virtual environment, runs the README's main job:
the shipped models travel as package data and the outputs land in the working directory, not the package."""
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def venv_over_this_environment(env_dir: Path, wheel: Path) -> Path:
    """A new venv with `wheel` installed (without its dependencies) that sees the dependencies (torch,
    onnxruntime...) of the environment running the tests, and no other gan_deploy; returns its python.

    Not `system_site_packages=True`: that exposes the *base* interpreter's site-packages, which inside a venv (CI
    runs the tests in a brand-new one) has none of the dependencies. Instead a .pth file in the new venv lists
    this interpreter's site-packages folders. Its lines only append those folders to sys.path, after the new
    venv's own site-packages: the wheel installed there wins, and the .pth files in them (an editable install
    of this checkout: `pip install -e .`) are not run, so the checkout cannot be imported by mistake. The wheel
    goes in first: pip, seeing this environment's gan-deploy through the .pth, would call it already installed."""
    import site
    import sysconfig

    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # without PYTHONPATH: a checkout on it (and the gan_deploy.egg-info that building the wheel leaves there)
    # would make pip call gan-deploy installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    listed = subprocess.run([str(py), "-c", "import gan_deploy; print(gan_deploy.__file__)"], capture_output=True, text=True,
                            env=env, cwd=env_dir)
    assert str(env_dir) in listed.stdout, listed.stdout + listed.stderr
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    ours += [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    dirs = list(dict.fromkeys(d for d in ours if Path(d).is_dir() and Path(d).resolve() != Path(purelib).resolve()))
    (Path(purelib) / "_outer_environment.pth").write_text("".join(f"{d}\n" for d in dirs))
    return py


def _has_setuptools(major: int) -> bool:
    """Whether this environment has setuptools >= `major` (a venv of Python 3.12+ starts without it)."""
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


@pytest.mark.slow
def test_wheel_installs_and_runs_the_main_job(tmp_path):
    wheels = tmp_path / "wheels"
    # the setuptools of this environment when it has one that builds us (offline); else pip's isolated build env
    isolation = ["--no-build-isolation"] if _has_setuptools(64) else []
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("gan_deploy-*.whl")
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "gan_deploy/assets/digits_dcgan.safetensors" in names and "gan_deploy/assets/digits_classifier.json" in names
    assert "gan_deploy/py.typed" in names

    env_dir = tmp_path / "venv"
    py = venv_over_this_environment(env_dir, wheel)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import gan_deploy; print(gan_deploy.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert str(env_dir) in where.stdout, where.stdout + where.stderr  # the installed copy, not the checkout
    package = Path(where.stdout.strip()).parent
    before = sorted(p.name for p in package.rglob("*") if "__pycache__" not in p.parts)

    gd = [str(env_dir / "bin" / "gan-deploy")]
    for args in (["export"], ["generate", "-n", "20", "-b", "8", "--out", "samples", "--grid", "samples_grid.png"]):
        r = subprocess.run(gd + args, cwd=work, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"gan-deploy {' '.join(args)}: {r.stdout}{r.stderr}"
    assert (work / "models" / "digits_dcgan.onnx").is_file()
    assert len(list((work / "samples").glob("*.png"))) == 20 and (work / "samples_grid.png").is_file()
    after = sorted(p.name for p in package.rglob("*") if "__pycache__" not in p.parts)
    assert after == before, "a command wrote into the installed package"

"""A wheel built from the repository, installed into a fresh virtual environment, runs the README's main job:
the shipped models travel as package data and the outputs land in the working directory, not the package."""
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_runs_the_main_job(tmp_path):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("gan_deploy-*.whl")
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "gan_deploy/assets/digits_dcgan.safetensors" in names and "gan_deploy/assets/digits_classifier.json" in names
    assert "gan_deploy/py.typed" in names

    env_dir = tmp_path / "venv"
    # the dependencies (torch, onnxruntime...) come from this interpreter's site-packages; gan_deploy from the wheel
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
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

"""gan_deploy.train on a CUDA GPU: resume under --deterministic, --compile, --amp fp16/bf16, more processes than GPUs.

Skipped without CUDA (every test is marked gpu). Runs are tiny like tests/test_train.py's (width 8, latent 8,
16x16 images, a few steps); --compile's first step compiles, which takes the longest (tens of seconds).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gan_deploy.core.errors import GanDeployError
from gan_deploy.train import TrainOptions, options_for_resume, state, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parent.parent
TINY = {"width": 8, "latent_dim": 8, "image_size": 16, "batch_size": 16, "log_every": 2, "progress": False, "eval_every": 0,
        "sample_every": 0, "checkpoint_every": 0, "device": "cuda"}


def tiny(out: Path, **kw) -> TrainOptions:
    return TrainOptions(out=str(out), **{**TINY, "steps": 6, **kw})


def state_of(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "state" / f"step_{step:08d}.safetensors"))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("loss", ["bce", "wgan-gp"])
def test_deterministic_cuda_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch, loss):
    k = 4 if loss != "wgan-gp" else 2
    full = train(tiny(tmp_path / "full", steps=2 * k, loss=loss, deterministic=True))
    again = train(tiny(tmp_path / "again", steps=2 * k, loss=loss, deterministic=True))
    assert same_tensors(state_of(full.out, 2 * k), state_of(again.out, 2 * k))  # two runs, the same bits
    half = train(tiny(tmp_path / "half", steps=k, loss=loss, deterministic=True))
    placed = []
    real = state.place_optimizer_state

    def place_and_keep(opt):
        real(opt)
        placed.append(opt)

    monkeypatch.setattr(state, "place_optimizer_state", place_and_keep)
    rest = train(options_for_resume({"out": str(half.out), "steps": 2 * k}))  # keeps --deterministic from the run
    assert rest.start_step == k and rest.device.startswith("cuda")
    # the resumed optimizer state sits where fused Adam wants it (the crash this guards against was
    # "params, grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and layout")
    for opt in placed:
        for group in opt.param_groups:
            assert group["fused"] is True
            for p in group["params"]:
                for key, v in opt.state[p].items():
                    if key == "step":
                        assert v.device == p.device and v.dtype == torch.float32
                    else:
                        assert (v.device, v.dtype, v.stride()) == (p.device, p.dtype, p.stride()), key
    assert same_tensors(state_of(full.out, 2 * k), state_of(rest.out, 2 * k))  # G, D, EMA, Adam, RNG
    assert same_tensors(load_file(str(full.checkpoint)), load_file(str(rest.checkpoint)))


def test_resume_on_cuda_without_deterministic_runs(tmp_path):
    half = train(tiny(tmp_path / "half", steps=3))
    rest = train(options_for_resume({"out": str(half.out), "steps": 5}))
    assert rest.steps == 5 and np.isfinite([rest.d_loss, rest.g_loss]).all()


def test_compile_on_cuda_trains(tmp_path):
    r = train(tiny(tmp_path / "compiled", steps=4, compile=True))
    assert r.steps == 4 and np.isfinite([r.d_loss, r.g_loss]).all()
    # and it resumes (a compiled run's state is the bare networks' state)
    rest = train(options_for_resume({"out": str(r.out), "steps": 6}))
    assert rest.steps == 6 and np.isfinite([rest.d_loss, rest.g_loss]).all()


@pytest.mark.parametrize("amp,loss", [("fp16", "bce"), ("bf16", "bce"), ("fp16", "wgan-gp"), ("bf16", "hinge")])
def test_amp_on_cuda_trains(tmp_path, amp, loss):
    r = train(tiny(tmp_path / f"{amp}_{loss}", steps=4 if loss != "wgan-gp" else 2, amp=amp, loss=loss))
    assert np.isfinite([r.d_loss, r.g_loss]).all()
    if amp == "fp16":  # the scalers' state goes into the checkpoint, and a resume continues from it
        rest = train(options_for_resume({"out": str(r.out), "steps": r.steps + 2}))
        assert np.isfinite([rest.d_loss, rest.g_loss]).all()


def test_more_processes_than_gpus_is_one_line(tmp_path, monkeypatch):
    n = torch.cuda.device_count()
    for k, v in {"WORLD_SIZE": n + 1, "RANK": n, "LOCAL_RANK": n, "LOCAL_WORLD_SIZE": n + 1}.items():
        monkeypatch.setenv(k, str(v))
    with pytest.raises(GanDeployError) as e:
        train(tiny(tmp_path / "x"))
    msg = e.value.one_line()
    assert f"{n + 1} processes" in msg and f"for {n} GPU" in msg and f"--nproc-per-node {n}" in msg and "--device cpu" in msg
    assert not (tmp_path / "x").exists()


def test_torchrun_with_more_processes_than_gpus_fails_cleanly(tmp_path):
    n = torch.cuda.device_count()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n + 1),
           "-m", "gan_deploy", "train", "--width", "8", "--latent-dim", "8", "--image-size", "16", "--batch-size", "16",
           "--steps", "2", "--no-progress", "--eval-every", "0", "--device", "cuda", "--out", str(tmp_path / "x")]
    p = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "Error: more processes than GPUs on this machine" in out, out[-3000:]
    assert "invalid device ordinal" not in out

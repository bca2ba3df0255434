"""gan_deploy.train and `gan-deploy train`: run folder, determinism, resume equivalence, refusals, DDP over gloo.

Every run is tiny (width 8, latent 8, 16x16 images, tens of steps) so the whole file stays well under a minute.
The quality score during training (--eval-every) is off in TINY (it costs ~1 s a run) and on where it is tested.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from gan_deploy.artifacts.checkpoint import load_generator, read_checkpoint
from gan_deploy.cli.main import main
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import sha256_file
from gan_deploy.train import TrainOptions, options_for_resume, state, train
from gan_deploy.train.evaluator import EVAL_BOOTSTRAP
from gan_deploy.train.losses import bce
from gan_deploy.train.options import EVAL_MIN_SAMPLES
from gan_deploy.train.state import iter_metrics

REPO = Path(__file__).resolve().parent.parent
TINY = dict(width=8, latent_dim=8, image_size=16, batch_size=16, log_every=5, progress=False, eval_every=0)
TINY_CLI = ["--width", "8", "--latent-dim", "8", "--image-size", "16", "--batch-size", "16", "--log-every", "5",
            "--no-progress", "--eval-every", "0"]


def tiny(out: Path, **kw) -> TrainOptions:
    return TrainOptions(out=str(out), **{**TINY, "steps": 10, "sample_every": 5, "checkpoint_every": 5, **kw})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def state_of(out: Path, step: int) -> dict[str, torch.Tensor]:
    return weights(out / "state" / f"step_{step:08d}.safetensors")


@pytest.fixture(scope="module")
def small_npy(tmp_path_factory) -> Path:
    """40 random 16x16 'images': a data set that loads instantly."""
    p = tmp_path_factory.mktemp("data") / "blobs.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, size=(40, 16, 16), dtype=np.uint8))
    return p


# -- the run folder ---------------------------------------------------------------------------------------

def test_run_folder_contents(tmp_path):
    r = train(tiny(tmp_path / "run"))
    out = tmp_path / "run"
    assert r.steps == 10 and r.start_step == 0 and r.world_size == 1 and r.out == out
    assert r.checkpoint == out / "generator.safetensors"
    ck = read_checkpoint(r.checkpoint)
    assert ck.sha256 == sha256_file(r.checkpoint)
    assert ck.config.arch == "dcgan" and ck.config.latent_dim == 8 and ck.config.image_size == 16
    t = ck.meta["train"]
    assert (t["dataset"], t["steps"], t["seed"], t["loss"], t["batch_size"]) == ("digits", 10, 0, "bce", 16)
    assert t["extra"]["arch"] == "dcgan" and t["extra"]["dataset_size"] == 1797 and t["extra"]["world_size"] == 1
    # the record is the run's options (resolved) plus its facts; the keys checkpoints have always had stay
    opts = TrainOptions(out=str(out), **{**TINY, "steps": 10, "sample_every": 5, "checkpoint_every": 5}).resolved().to_dict()
    assert {k: t[k] for k in opts if k not in ("out", "resume", "overwrite", "progress", "steps")} == \
        {k: v for k, v in opts.items() if k not in ("out", "resume", "overwrite", "progress", "steps")}
    assert "out" not in t and "progress" not in t and t["disc_width"] == 8 and t["n_critic"] == 1
    assert {"data", "data_source", "dataset_size", "arch", "n_critic", "gp_weight", "world_size", "global_batch_size",
            "amp", "device", "compile", "bn_standing_stats", "wall_time_s", "images_per_s", "torch"} <= t["extra"].keys()
    assert t["extra"]["device"] == "cpu" and t["extra"]["gp_weight"] is None and t["extra"]["torch"] == torch.__version__
    G = load_generator(r.checkpoint)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, 1, 16, 16) and x.abs().max() <= 1
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000005.png", "step_00000010.png"]
    assert r.samples == out / "samples" / "step_00000010.png"
    from PIL import Image
    assert Image.open(r.samples).size == ((8 * (16 + 2) + 2) * 2,) * 2  # 8x8 grid, 2 px pad, shown 2x
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in recs[:-1]] == [5, 10]
    assert {"d_loss", "g_loss", "images_per_s", "elapsed"} <= recs[0].keys()
    assert recs[-1]["event"] == "end" and len(recs[-1]["rank_sha256"]) == 1
    assert all(np.isfinite(rec["d_loss"]) and np.isfinite(rec["g_loss"]) for rec in recs)
    # checkpoints every 5 steps, older ones dropped once a newer one is complete
    assert sorted(p.name for p in (out / "state").iterdir()) == ["step_00000010.json", "step_00000010.safetensors"]
    assert not list(out.rglob(".gan-deploy-tmp-*"))  # no temporary files left behind


def test_saved_generator_is_the_ema_not_the_raw_generator(tmp_path):
    r = train(tiny(tmp_path / "run"))
    saved, raw = weights(r.checkpoint), state_of(r.out, 10)
    name = "net.0.weight"
    assert torch.equal(saved[name], raw[f"EMA.{name}"])
    assert not torch.equal(saved[name], raw[f"G.{name}"])


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = train(tiny(tmp_path / "a", steps=6))
    b = train(tiny(tmp_path / "b", steps=6))
    c = train(tiny(tmp_path / "c", steps=6, seed=1))
    assert sha256_file(a.checkpoint) == sha256_file(b.checkpoint)
    assert a.rank_sha256 == b.rank_sha256 != c.rank_sha256


@pytest.mark.parametrize("loss", ["bce", "hinge", "wgan-gp"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, loss):
    k = 6 if loss != "wgan-gp" else 3
    full = train(tiny(tmp_path / "full", steps=2 * k, loss=loss, checkpoint_every=0))
    half = train(tiny(tmp_path / "half", steps=k, loss=loss, checkpoint_every=0))
    assert half.steps == k
    rest = train(options_for_resume({"out": str(tmp_path / "half"), "steps": 2 * k}))
    assert rest.start_step == k and rest.steps == 2 * k
    assert same_tensors(state_of(full.out, 2 * k), state_of(rest.out, 2 * k))  # G, D, EMA, Adam moments, RNG
    assert same_tensors(weights(full.checkpoint), weights(rest.checkpoint))
    recs = [json.loads(s) for s in (rest.out / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in recs if "event" not in r]
    assert logged == sorted(set(logged)) and logged[-1] == 2 * k  # the log runs on past the resume, no repeats
    assert [r for r in recs if "event" in r] == recs[-1:]  # one end record: the first run's was dropped


def _check_optimizer_state(opt: torch.optim.Optimizer) -> int:
    """Every state tensor shaped like its parameter has the parameter's device, dtype and strides; `step` is on
    the parameter's device (float32) for fused/capturable Adam, else on the CPU. Returns how many were checked."""
    n = 0
    for group in opt.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            for k, v in opt.state[p].items():
                if k == "step":
                    assert v.device == (p.device if on_device else torch.device("cpu")), (k, v.device)
                    assert not on_device or v.dtype == torch.float32
                else:
                    assert (v.device, v.dtype, v.shape, v.stride()) == (p.device, p.dtype, p.shape, p.stride()), k
                n += 1
    return n


def test_resume_places_optimizer_state_like_its_parameters(tmp_path, monkeypatch):
    # channels_last conv weights: their Adam moments come back from safetensors contiguous (NCHW) and must be
    # given the parameters' strides again (fused Adam on CUDA checks device, dtype and strides)
    train(tiny(tmp_path / "run", steps=3, checkpoint_every=0))
    seen = []
    real = state.place_optimizer_state

    def place_and_keep(opt):
        real(opt)
        seen.append(opt)

    monkeypatch.setattr(state, "place_optimizer_state", place_and_keep)
    train(options_for_resume({"out": str(tmp_path / "run"), "steps": 4}))
    assert len(seen) == 2  # G's and D's
    assert any(p.dim() == 4 and not p.is_contiguous() for opt in seen for g in opt.param_groups for p in g["params"])
    assert all(_check_optimizer_state(opt) > 0 for opt in seen)


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_state_goes_to_the_parameters_device(fused):
    # a stand-in for CUDA: parameters on the "meta" device, the saved state on the CPU in float64 and NCHW
    w = torch.nn.Parameter(torch.empty(4, 3, 2, 2, device="meta").to(memory_format=torch.channels_last))
    b = torch.nn.Parameter(torch.empty(4, device="meta"))
    opt = torch.optim.Adam([w, b], lr=1e-3)
    opt.param_groups[0]["fused"] = fused or None  # as _build sets it on CUDA
    saved_group = {k: v for k, v in opt.state_dict()["param_groups"][0].items()}
    saved_group["fused"] = None  # the state was saved by a CPU run
    meta = {"state": {"0": {}, "1": {}}, "param_groups": [json.loads(json.dumps(saved_group))]}
    tensors = {}
    for i, shape in enumerate([(4, 3, 2, 2), (4,)]):
        tensors[f"opt.{i}.step"] = torch.tensor(7.0)
        tensors[f"opt.{i}.exp_avg"] = torch.ones(shape, dtype=torch.float64)
        tensors[f"opt.{i}.exp_avg_sq"] = torch.ones(shape, dtype=torch.float64)
    state.optim_join(opt, tensors, meta, "opt")
    assert opt.param_groups[0]["fused"] == (fused or None)  # this run's implementation, not the saved one
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert _check_optimizer_state(opt) == 6
    assert opt.state[w]["exp_avg"].device.type == "meta"


def test_wgan_gp_critic_has_no_batch_norm(tmp_path):
    r = train(tiny(tmp_path / "run", loss="wgan-gp", steps=2))
    keys = state_of(r.out, 2).keys()
    assert any(k.startswith("D.") for k in keys) and not any(k.startswith("D.") and "running_mean" in k for k in keys)
    assert any(k.startswith("G.") and "running_mean" in k for k in keys)


def test_ctrl_c_saves_the_finished_step_and_resume_matches(tmp_path, monkeypatch):
    full = train(tiny(tmp_path / "full", steps=12, checkpoint_every=0))
    real_d_loss = bce.d_loss
    calls = {"n": 0}

    def d_loss_then_interrupt(*args):  # Ctrl-C arrives in the middle of step 7, between D forward and backward
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return real_d_loss(*args)

    handler_before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(bce, "d_loss", d_loss_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "cut", steps=12, checkpoint_every=0))
    monkeypatch.setattr(bce, "d_loss", real_d_loss)
    # step 7 was finished, then saved; nothing of the final outputs was written
    assert sorted(p.name for p in (tmp_path / "cut" / "state").iterdir()) == ["step_00000007.json", "step_00000007.safetensors"]
    assert not (tmp_path / "cut" / "generator.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # the deferring handler is gone
    rest = train(options_for_resume({"out": str(tmp_path / "cut")}))
    assert rest.start_step == 7 and rest.steps == 12
    assert same_tensors(state_of(full.out, 12), state_of(rest.out, 12))


def test_bf16_autocast_and_mlp_arch_train(tmp_path):
    r = train(tiny(tmp_path / "bf16", steps=4, amp="bf16", sample_every=0))
    assert np.isfinite([r.d_loss, r.g_loss]).all()
    r = train(tiny(tmp_path / "mlp", steps=4, arch="mlp", loss="hinge", sample_every=0))
    assert read_checkpoint(r.checkpoint).config.arch == "mlp"


def test_other_data_sources_train(tmp_path, small_npy):
    r = train(tiny(tmp_path / "run", data=str(small_npy), steps=3, channels=3))
    assert read_checkpoint(r.checkpoint).config.channels == 3
    assert read_checkpoint(r.checkpoint).meta["train"]["dataset"] == "blobs"


def test_the_loss_registry_is_the_one_list_of_losses():
    from gan_deploy.cli.train import train as command
    from gan_deploy.train import losses

    choices = next(p for p in command.params if p.name == "loss").type.choices
    assert tuple(choices) == losses.LOSSES == tuple(losses.REGISTRY)
    for name in losses.LOSSES:
        m = losses.get(name)
        assert callable(m.d_loss) and callable(m.g_loss) and m.N_CRITIC >= 1 and isinstance(m.CRITIC_BATCH_NORM, bool)
        assert m.penalty is None or callable(m.penalty)
        assert TrainOptions(loss=name).resolved().n_critic == m.N_CRITIC
    # the CLI reads the options (and the loss names) without loading torch
    code = "import sys, gan_deploy.train, gan_deploy.train.options; assert 'torch' not in sys.modules, 'torch loaded'"
    p = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_the_train_package_imports_only_what_it_may():
    import ast

    allowed = {"core", "nets", "data", "artifacts", "quality", "train"}
    for path in (REPO / "gan_deploy" / "train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
            for name in names:
                parts = name.split(".")
                if parts[0] == "gan_deploy":
                    assert len(parts) > 1 and parts[1] in allowed, f"{path} imports {name}"


# -- refusals ----------------------------------------------------------------------------------------------

def _err(opts: TrainOptions) -> str:
    with pytest.raises(GanDeployError) as e:
        train(opts)
    return e.value.one_line()


def test_refuses_to_overwrite_a_run(tmp_path):
    out = tmp_path / "run"
    first = train(tiny(out, steps=2))
    (out / "my_notes.txt").write_text("mine")
    msg = _err(tiny(out, steps=2))
    assert "already holds a finished run" in msg and str(out) in msg and "--overwrite" in msg and "--resume" in msg
    assert sha256_file(first.checkpoint) == read_checkpoint(first.checkpoint).sha256  # untouched
    train(tiny(out, steps=3, overwrite=True))
    assert read_checkpoint(out / "generator.safetensors").meta["train"]["steps"] == 3
    assert (out / "my_notes.txt").read_text() == "mine"  # only the run's own files were replaced
    assert not (out / "state" / "step_00000002.json").exists()


def test_refuses_to_overwrite_an_unfinished_run(tmp_path):
    out = tmp_path / "run"
    (out / "state").mkdir(parents=True)
    assert "already holds an unfinished run" in _err(tiny(out))


def test_bad_settings(tmp_path, small_npy):
    out = tmp_path / "x"
    msg = _err(tiny(out, data=str(small_npy), batch_size=64))
    assert "batch size larger than the data set" in msg and "64" in msg and "40" in msg
    msg = _err(tiny(out, arch="gan"))
    assert "unknown architecture" in msg and "'gan'" in msg and "dcgan" in msg
    msg = _err(tiny(out, amp="fp16", device="cpu"))
    assert "--amp fp16 needs a CUDA device" in msg and "bf16" in msg
    msg = _err(tiny(out, steps=-5))
    assert "bad steps: -5" in msg and ">= 1" in msg
    msg = _err(tiny(out, image_size=24))
    assert "power of two" in msg and "24" in msg and "--arch mlp" in msg
    assert "unknown loss" in _err(tiny(out, loss="lsgan"))
    assert "bad learning rate" in _err(tiny(out, lr=0.0))
    assert "--resume and --overwrite" in _err(tiny(out, resume=True, overwrite=True))
    assert "nothing to resume" in _err(tiny(out, resume=True))
    assert "unknown device" in _err(tiny(out, device="tpu"))
    if not torch.cuda.is_available():
        assert "CUDA requested but not available" in _err(tiny(out, device="cuda"))
    assert "data not found" in _err(tiny(out, data=str(tmp_path / "missing")))
    assert not out.exists()  # nothing written by a refused run


def test_resume_refusals(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, steps=4))
    msg = _err(options_for_resume({"out": str(out), "steps": 4}))
    assert "already trained that far" in msg and "4" in msg
    with pytest.raises(GanDeployError, match="cannot change --loss when resuming"):
        options_for_resume({"out": str(out), "steps": 8, "loss": "hinge"})
    msg = _err(TrainOptions(**{**tiny(out, steps=8).__dict__, "resume": True, "width": 16}))
    assert "cannot change width" in msg


# -- the command line ----------------------------------------------------------------------------------------

def test_cli_train_then_resume(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(main, ["train", "--out", str(out), "--steps", "6", "--sample-every", "3", *TINY_CLI])
    assert res.exit_code == 0, res.output
    assert "Trained 6 steps" in res.output and str(out / "generator.safetensors") in res.output
    res = runner.invoke(main, ["train", "--out", str(out), "--steps", "6", *TINY_CLI])
    assert res.exit_code == 2 and "Error: run folder already holds a finished run" in res.output
    assert "Traceback" not in res.output
    # --resume takes the saved options: only --steps is needed
    res = runner.invoke(main, ["train", "--out", str(out), "--resume", "--steps", "10"])
    assert res.exit_code == 0, res.output
    assert "Trained 10 steps (resumed at 6)" in res.output
    full = train(tiny(tmp_path / "full", steps=10, sample_every=3))
    assert same_tensors(weights(full.checkpoint), weights(out / "generator.safetensors"))
    res = runner.invoke(main, ["train", "--out", str(out), "--resume", "--steps", "12", "--loss", "hinge"])
    assert res.exit_code == 2 and "cannot change --loss when resuming" in res.output


def test_cli_errors_are_one_line(tmp_path, small_npy):
    runner = CliRunner()
    cases = [
        (["--data", str(tmp_path / "nope")], "Error: data not found"),
        (["--data", str(small_npy), "--batch-size", "100"], "Error: batch size larger than the data set"),
        (["--amp", "fp16", "--device", "cpu"], "Error: --amp fp16 needs a CUDA device"),
        (["--image-size", "24"], "Error: dcgan image size must be a power of two: 24"),
        (["--steps", "-5"], "Invalid value for '--steps'"),
        (["--arch", "gan"], "Invalid value for '--arch'"),
    ]
    for args, text in cases:
        res = runner.invoke(main, ["train", "--out", str(tmp_path / "o"), *TINY_CLI, *args])
        assert res.exit_code == 2, (args, res.output)
        assert text in res.output and "Traceback" not in res.output, (args, res.output)


def test_cli_help_has_examples():
    res = CliRunner().invoke(main, ["train", "--help"])
    assert res.exit_code == 0
    assert "gan-deploy train --data ~/mnist/train-images-idx3-ubyte.gz --steps 5000" in res.output
    assert "torchrun --nproc-per-node 2 -m gan_deploy train" in res.output


# -- two processes: DistributedDataParallel over gloo ---------------------------------------------------------

@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is unavailable")
def test_two_processes_gloo_stay_in_sync(tmp_path, small_npy):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "gan_deploy", "train", *TINY_CLI, "--data", str(small_npy), "--out", str(out), "--steps", "5",
           "--sample-every", "0", "--log-every", "1", "--eval-every", "2", "--eval-samples", "64"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("Trained 5 steps") == 1  # only rank 0 prints
    assert "x 2 processes" in p.stdout
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("event") != "eval"] == [1, 2, 3, 4, 5, 5]
    # rank 0 alone scores, at step 0, every 2 steps and at the end, while rank 1 waits at the next all-reduce
    assert [r["step"] for r in recs if r.get("event") == "eval"] == [0, 2, 4, 5]
    assert "quality:" in p.stdout
    end = recs[-1]
    assert end["event"] == "end" and end["world_size"] == 2
    assert len(end["rank_sha256"]) == 2 and end["rank_sha256"][0] == end["rank_sha256"][1]
    extra = read_checkpoint(out / "generator.safetensors").meta["train"]["extra"]
    assert extra["world_size"] == 2 and extra["global_batch_size"] == 32
    st = json.loads((out / "state" / "step_00000005.json").read_text())
    assert st["world_size"] == 2 and st["step"] == 5
    assert {"rng.latent.rank0", "rng.latent.rank1"} <= state_of(out, 5).keys()
    # the ranks drew different latents (per-rank seeds) yet hold the same weights
    assert not torch.equal(state_of(out, 5)["rng.latent.rank0"], state_of(out, 5)["rng.latent.rank1"])
    # a single process cannot resume a 2-process run: the data shards and per-rank latents would differ
    with pytest.raises(GanDeployError, match="different number of processes"):
        train(options_for_resume({"out": str(out), "steps": 8}))


# -- the quality score during training (--eval-every) ----------------------------------------------------------

def evals(out: Path) -> list[dict]:
    return [r for r in iter_metrics(out / "metrics.jsonl") if r.get("event") == "eval"]


def test_eval_records_at_step_0_every_n_steps_and_the_end(tmp_path, capsys):
    r = train(tiny(tmp_path / "run", eval_every=4, eval_samples=64, progress=None))
    recs = evals(r.out)
    assert [e["step"] for e in recs] == [0, 4, 8, 10]
    for e in recs:
        assert np.isfinite([e["fd"], e["fd_spread"]]).all() and e["fd"] > 0 and e["fd_spread"] > 0
        assert 0 <= e["precision"] <= 1 and 0 <= e["recall"] <= 1
        assert (e["n"], e["n_reference"], e["bootstrap"]) == (64, 1797, EVAL_BOOTSTRAP) and e["seconds"] > 0
    # the final score travels with the generator and into the summary
    assert r.quality == recs[-1]
    extra = read_checkpoint(r.checkpoint).meta["train"]["extra"]
    assert (extra["final_fd"], extra["final_fd_spread"], extra["final_precision"], extra["final_recall"]) == \
        (recs[-1]["fd"], recs[-1]["fd_spread"], recs[-1]["precision"], recs[-1]["recall"])
    assert extra["eval_samples"] == 64 and extra["eval_every"] == 4 and len(extra["classifier_sha256"]) == 64
    assert "quality:   FD " in r.summary() and "at step 10" in r.summary()
    # no terminal: one progress line per score
    err = capsys.readouterr().err
    assert "step 4/10: FD " in err and "step 10/10: FD " in err
    # the "end" record stays last, the log records are unchanged
    all_recs = list(iter_metrics(r.out / "metrics.jsonl"))
    assert all_recs[-1]["event"] == "end"
    assert [x["step"] for x in all_recs if "event" not in x] == [5, 10]


def test_eval_off_writes_no_scores(tmp_path):
    r = train(tiny(tmp_path / "run", steps=3))
    assert evals(r.out) == [] and r.quality is None
    assert "final_fd" not in read_checkpoint(r.checkpoint).meta["train"]["extra"]
    assert "quality:" not in r.summary()


def test_eval_does_not_change_the_training_trajectory(tmp_path, capsys):
    # two torch threads (conftest sets one): the score runs its classifier on one thread and switches back,
    # so this also checks that the switch leaves training's arithmetic alone
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        on = train(tiny(tmp_path / "on", steps=8, eval_every=3, eval_samples=64, progress=True))
        off = train(tiny(tmp_path / "off", steps=8))
    finally:
        torch.set_num_threads(threads)
    assert [e["step"] for e in evals(on.out)] == [0, 3, 6, 8] and evals(off.out) == []
    # G, D, EMA, Adam moments and the latent RNG state at the end, and the saved generator: bit-identical
    assert same_tensors(state_of(on.out, 8), state_of(off.out, 8))
    assert same_tensors(weights(on.checkpoint), weights(off.checkpoint))
    assert on.rank_sha256 == off.rank_sha256
    assert "FD " in capsys.readouterr().err  # the progress bar shows the latest score


def test_eval_with_resume_keeps_earlier_scores_and_the_weights(tmp_path):
    full = train(tiny(tmp_path / "full", steps=12, eval_every=3, eval_samples=64, checkpoint_every=0))
    half = train(tiny(tmp_path / "half", steps=5, eval_every=3, eval_samples=64, checkpoint_every=0))
    rest = train(options_for_resume({"out": str(half.out), "steps": 12}))
    assert same_tensors(weights(full.checkpoint), weights(rest.checkpoint))
    # the first invocation's scores up to its last step stay (step 5 was its end), the resumed one adds 6, 9, 12
    got = evals(rest.out)
    assert [e["step"] for e in got] == [0, 3, 5, 6, 9, 12]
    # a score depends only on the weights: the same steps score the same in both runs
    want = {e["step"]: e for e in evals(full.out)}
    for e in got:
        if e["step"] in want:
            assert {k: v for k, v in e.items() if k != "seconds"} == {k: v for k, v in want[e["step"]].items() if k != "seconds"}
    assert [r["event"] for r in iter_metrics(rest.out / "metrics.jsonl") if r.get("event") == "end"] == ["end"]


def test_trim_metrics_on_resume_keeps_scores_up_to_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    recs = [{"event": "eval", "step": 0, "fd": 9.0}, {"step": 5, "d_loss": 1.0}, {"event": "eval", "step": 6, "fd": 8.0},
            {"step": 10, "d_loss": 1.0}, {"event": "eval", "step": 9, "fd": 7.0}, {"event": "end", "step": 10}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 11, "d_lo')  # + a line cut short
    state.trim_metrics(path, 6)
    assert list(iter_metrics(path)) == recs[:3]


def test_eval_on_rgb_16x16_data(tmp_path, small_npy):
    r = train(tiny(tmp_path / "rgb", data=str(small_npy), channels=3, steps=3, eval_every=2, eval_samples=64))
    recs = evals(r.out)
    assert [e["step"] for e in recs] == [0, 2, 3] and recs[-1]["n_reference"] == 40
    assert all(np.isfinite(e["fd"]) for e in recs)
    assert read_checkpoint(r.checkpoint).config.channels == 3


def test_eval_refusals(tmp_path):
    out = tmp_path / "x"
    assert "bad eval_every: -1" in _err(tiny(out, eval_every=-1))
    msg = _err(tiny(out, eval_every=5, eval_samples=10))
    assert "bad eval_samples: 10" in msg and ">= 32" in msg
    few = tmp_path / "few.npy"
    np.save(few, np.random.default_rng(0).integers(0, 256, size=(20, 16, 16), dtype=np.uint8))
    msg = _err(tiny(out, data=str(few), eval_every=5))
    assert "data set too small for the quality score" in msg and "20 images" in msg and "--eval-every 0" in msg
    assert not out.exists()
    train(tiny(out, data=str(few), steps=2))  # with the score off the same data trains
    from gan_deploy.quality.features import MIN_SAMPLES
    assert EVAL_MIN_SAMPLES == MIN_SAMPLES  # the torch-free copy the CLI checks against


def test_cli_eval_options(tmp_path):
    runner = CliRunner()
    for args, text in [(["--eval-every", "-1"], "Invalid value for '--eval-every'"),
                       (["--eval-samples", "10"], "Invalid value for '--eval-samples'")]:
        res = runner.invoke(main, ["train", "--out", str(tmp_path / "o"), *TINY_CLI, *args])
        assert res.exit_code == 2 and text in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()
    res = runner.invoke(main, ["train", "--out", str(tmp_path / "o"), "--steps", "4", *TINY_CLI,
                               "--eval-every", "2", "--eval-samples", "64"])
    assert res.exit_code == 0, res.output
    assert "quality:   FD " in res.output
    assert [e["step"] for e in evals(tmp_path / "o")] == [0, 2, 4]
    assert "--eval-every" in runner.invoke(main, ["train", "--help"]).output


# -- GPU-facing checks that run on the CPU (tests/test_train_gpu.py runs the real thing on a GPU) --------------

def _fake_gpus(monkeypatch, n: int) -> None:
    """Pretend torch sees n GPUs; any real CUDA call would still fail, so these checks must come first."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def _torchrun_env(monkeypatch, world: int, rank: int, local_world: int | None = None) -> None:
    for k, v in {"WORLD_SIZE": world, "RANK": rank, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": local_world or world}.items():
        monkeypatch.setenv(k, str(v))


@pytest.mark.parametrize("rank", [0, 1])
def test_more_processes_than_gpus_is_one_line_before_any_cuda_call(tmp_path, monkeypatch, rank):
    _fake_gpus(monkeypatch, 1)
    _torchrun_env(monkeypatch, 2, rank)
    out = tmp_path / "x"
    for device in ("cuda", "auto"):
        msg = _err(tiny(out, device=device))
        assert "more processes than GPUs on this machine: 2 processes" in msg and "for 1 GPU" in msg, msg
        assert "--nproc-per-node 1" in msg and "--device cpu" in msg
    msg = _err(tiny(out, device="cuda:0"))
    assert "would put every process on one GPU" in msg and "--device cuda" in msg
    assert not out.exists()


def test_torchrun_environment_is_checked(tmp_path, monkeypatch, small_npy):
    out = tmp_path / "x"
    cases = [({"WORLD_SIZE": "abc"}, "bad WORLD_SIZE in the environment: 'abc'", "an integer >= 1"),
             ({"WORLD_SIZE": "0"}, "bad WORLD_SIZE in the environment: '0'", "an integer >= 1"),
             ({"WORLD_SIZE": "2", "RANK": "2"}, "bad RANK in the environment: '2'", "0 .. 1"),
             ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "bad LOCAL_RANK in the environment: '-1'", "0 .. 1"),
             ({"WORLD_SIZE": "2", "RANK": "x1"}, "bad RANK", "0 .. 1"),
             ({"RANK": "1"}, "bad RANK in the environment: '1'", "0 .. 0"),
             ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "3"}, "bad LOCAL_WORLD_SIZE", "1 .. 2")]
    for env, text, expected in cases:
        with monkeypatch.context() as m:
            for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                m.delenv(k, raising=False)
            for k, v in env.items():
                m.setenv(k, v)
            msg = _err(tiny(out, data=str(small_npy)))
            assert text in msg and expected in msg and "torchrun" in msg, (env, msg)
    # and on the command line: one line, no traceback
    res = CliRunner().invoke(main, ["train", "--out", str(out), *TINY_CLI], env={"WORLD_SIZE": "abc"})
    assert res.exit_code == 2 and "Error: bad WORLD_SIZE in the environment: 'abc'" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


def test_a_compile_failure_in_the_first_step_is_one_line(tmp_path, monkeypatch):
    class Broken:  # what torch.compile returns when Inductor fails: it raises at the first call
        def __init__(self, model, **kw):
            self.model = model

        def __call__(self, *a, **kw):
            raise RuntimeError("InductorError: AssertionError: expected size 256==256, stride 16==1 at dim=1\nmore")

    monkeypatch.setattr(torch, "compile", Broken)
    msg = _err(tiny(tmp_path / "x", compile=True))
    assert msg.startswith("--compile failed in the first training step: RuntimeError: InductorError") and "more" not in msg
    assert "drop --compile" in msg
    res = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "y"), *TINY_CLI, "--compile"])
    assert res.exit_code == 2 and "Error: --compile failed in the first training step" in res.output, res.output
    assert "Traceback" not in res.output
    # without --compile a first-step failure stays what it is (a bug, with its traceback)
    monkeypatch.setattr(bce, "d_loss", Broken(None))
    with pytest.raises(RuntimeError, match="InductorError"):
        train(tiny(tmp_path / "z"))


def test_deterministic_on_the_cpu_changes_nothing_and_is_not_fixed_on_resume(tmp_path):
    from gan_deploy.train.options import FIXED_ON_RESUME

    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    plain = train(tiny(tmp_path / "plain", steps=6, checkpoint_every=0))
    det = train(tiny(tmp_path / "det", steps=6, checkpoint_every=0, deterministic=True))
    assert same_tensors(weights(plain.checkpoint), weights(det.checkpoint))
    assert same_tensors(state_of(plain.out, 6), state_of(det.out, 6))
    assert read_checkpoint(det.checkpoint).meta["train"]["deterministic"] is True
    # the process-wide torch flags are put back
    assert flags == (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert "deterministic" not in FIXED_ON_RESUME
    half = train(tiny(tmp_path / "half", steps=3, checkpoint_every=0, deterministic=True))
    rest = train(options_for_resume({"out": str(half.out), "steps": 6, "deterministic": False}))
    assert same_tensors(weights(plain.checkpoint), weights(rest.checkpoint))
    res = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "cli"), "--steps", "2", *TINY_CLI, "--deterministic"])
    assert res.exit_code == 0, res.output
    assert "--deterministic" in CliRunner().invoke(main, ["train", "--help"]).output


def test_deterministic_mode_sets_and_restores_the_torch_flags(monkeypatch):
    from gan_deploy.train.device import deterministic_mode

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_mode(True, "cpu"):
        assert torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # nothing for cuBLAS on a CPU run
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True, "auto"):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.allow_tf32
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's choice stays
    with deterministic_mode(True, "cuda"):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    with deterministic_mode(False, "cuda"):
        assert not torch.are_deterministic_algorithms_enabled()


def test_train_speed_benchmark_runs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_speed", REPO / "benchmarks" / "train_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    assert bench.main(["--device", "cpu", "--modes", "eager", "--amp", "none,bf16", "--width", "8", "--latent-dim", "8",
                       "--image-size", "16", "--batch-size", "16", "--steps", "2", "--reps", "2", "--warmup", "1",
                       "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r["setting"] for r in rec["results"]] == ["eager", "eager + bf16"]
    assert all(len(r["images_per_s"]) == 2 and r["median_images_per_s"] > 0 for r in rec["results"])
    assert rec["compile_over_eager"] == {}  # no compiled setting asked for

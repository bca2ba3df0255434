"""Our own files read back after a hand edit, a truncation or a swap: `train --resume` on a tampered state ends in
one line naming the field (exit 2), never a KeyError or TypeError; `--resume --overwrite` is refused, not dropped."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gan_deploy.cli.main import main
from gan_deploy.train import TrainOptions, train

TINY = dict(width=8, latent_dim=8, image_size=16, batch_size=16, log_every=5, progress=False, eval_every=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("state") / "run"
    train(TrainOptions(out=str(out), steps=4, sample_every=0, checkpoint_every=4, **TINY))
    return out


def _tampered(run: Path, tmp_path: Path, edit) -> Path:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    (js,) = sorted((out / "state").glob("step_*.json"))
    meta = json.loads(js.read_text())
    edit(meta)
    js.write_text(json.dumps(meta))
    return out


def _del(*keys):
    def edit(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return edit


def _set(value, *keys):
    def edit(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


CASES = {
    "no step": (_del("step"), "'step'"),
    "no world_size": (_del("world_size"), "'world_size'"),
    "no weights_sha256": (_del("weights_sha256"), "'weights_sha256'"),
    "no optimizers": (_del("optimizers"), "'optimizers'"),
    "no G optimizer": (_del("optimizers", "G"), "optimizers.G"),
    "param_groups not a list": (_set("x", "optimizers", "D", "param_groups"), "param_groups"),
    "lr a string": (_set("fast", "optimizers", "G", "param_groups", 0, "lr"), "param_groups.lr"),
    "step a string": (_set("4", "step"), "step='4'"),
    "negative step": (_set(-1, "step"), "step=-1"),
    "elapsed a list": (_set([], "elapsed_s"), "elapsed_s"),
    "sha not hex": (_set("abc", "weights_sha256"), "weights_sha256"),
    "no options": (_del("options"), "'options'"),
    "option missing": (_del("options", "latent_dim"), "options.latent_dim"),
    "option of the wrong type": (_set("0.0002", "options", "lr"), "options.lr"),
    "int option a bool": (_set(True, "options", "width"), "options.width"),
    "scaler not an object": (_set({"G": 3}, "scalers"), "scalers.G"),
    "version a string": (_set("1", "version"), "version"),
    "newer version": (_set(99, "version"), "newer gan-deploy"),
    "wrong format": (_set("something-else", "format"), "not a gan-deploy training state"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_training_state_is_one_line(run, tmp_path, case):
    edit, needle = CASES[case]
    out = _tampered(run, tmp_path, edit)
    res = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--steps", "6"])
    assert res.exit_code == 2, (case, res.output, res.exception)
    assert "Traceback" not in res.output and res.output.count("\n") == 1, res.output
    assert needle in res.output, res.output


def test_a_state_that_is_not_json_is_one_line(run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    (js,) = sorted((out / "state").glob("step_*.json"))
    js.write_text('{"format": "gan-deploy-train-state", "step": ')
    res = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--steps", "6"])
    assert res.exit_code == 2 and "not valid JSON" in res.output, res.output


def test_the_untampered_state_resumes(run, tmp_path):
    out = _tampered(run, tmp_path, lambda meta: None)
    res = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--steps", "6"])
    assert res.exit_code == 0, res.output
    assert "resumed at 4" in res.output


def test_resume_with_overwrite_is_refused_not_dropped(run, tmp_path):
    out = _tampered(run, tmp_path, lambda meta: None)
    res = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--overwrite", "--steps", "6"])
    assert res.exit_code == 2 and "--resume and --overwrite contradict each other" in res.output, res.output
    assert (out / "generator.safetensors").exists()  # nothing was started over


# -- generate.json: the validated reader accepts every record a real run writes, and refuses a tampered one ----------

@pytest.mark.parametrize("args", [[], ["--sink", "tar", "--tar-shard-size", "3", "--tar-prefix", "p"], ["--sink", "array"],
                                  ["--format", "jpg", "--shard", "1/2", "--backend", "eager"]])
def test_every_record_a_run_writes_reads_back(tiny_checkpoint, tmp_path, args):
    from gan_deploy.generate.journal import read_record

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["generate", "-c", str(tiny_checkpoint), "-n", "7", "-b", "2", "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    assert read_record(out)["n"] == 7
    res = CliRunner().invoke(main, ["generate", "--out", str(out), "--resume"])
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output


@pytest.mark.parametrize("key,value,needle", [("n", "7", "n='7'"), ("start", -1, "start=-1"), ("image", [16, 16], "image=[16, 16]"),
                                              ("jpeg_encoder", "gpu", "jpeg_encoder='gpu'"), ("device", "tpu", "device='tpu'"),
                                              ("latent_dim", 0, "latent_dim=0"),
                                              # a JSON integer too large for a float: was an OverflowError traceback
                                              ("value_range", [-1, 10**400], "value_range=[-1, 1000")])
def test_a_tampered_run_record_is_one_line_naming_the_file_and_field(tiny_checkpoint, tmp_path, key, value, needle):
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["generate", "-c", str(tiny_checkpoint), "-n", "7", "-b", "2", "--out", str(out)]).exit_code == 0
    rec = json.loads((out / "generate.json").read_text())
    rec[key] = value
    (out / "generate.json").write_text(json.dumps(rec))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    res = CliRunner().invoke(main, ["generate", "--out", str(out), "--resume"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert needle in res.output and "generate.json" in res.output, res.output
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing written


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_state_file_that_is_a_fifo_or_a_device_is_one_line_not_a_hang(tmp_path):
    """Found by an attack on auto's cache: a FIFO in a file's place blocked the read for good, a link to /dev/zero
    (size 0 by stat) was read until the memory ran out. Only regular files are read, and at most the bound."""
    from gan_deploy.core.errors import GanDeployError
    from gan_deploy.core.jsonio import read_document

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    for p in (fifo, zero):
        with pytest.raises(GanDeployError, match="is not a regular file"):
            read_document(p, "x", 1, what="a test document", hint="none")


def test_a_cache_folder_that_names_an_unknown_user_runs_without_a_cache(monkeypatch):
    """GAN_DEPLOY_CACHE_DIR=~nouser/x was a RuntimeError traceback from pathlib."""
    import warnings

    from gan_deploy.core import usercache

    monkeypatch.setenv(usercache.ENV_CACHE_DIR, "~no-such-user-gan-deploy/x")
    monkeypatch.setattr(usercache, "_warned", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert usercache.cache_dir("auto") is None
    assert any("running without a cache" in str(w.message) for w in seen)

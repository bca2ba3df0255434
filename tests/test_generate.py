import csv
import os

import numpy as np
import pytest

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import TMP_PREFIX
from gan_deploy.core.images import decode
from gan_deploy.generate.pipeline import GenerateInterrupted, GenerateOptions, generate, parse_shard, shard_indices


def _pixels(folder):
    return {p.name: decode(p) for p in sorted(folder.iterdir()) if p.suffix == ".png"}


def test_files_manifest_and_grid(tiny_checkpoint, tmp_path):
    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    rep = generate(runner, GenerateOptions(n=23, out=tmp_path / "out", batch_size=5, seed=4, grid=tmp_path / "grid.png", progress=False))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files[:2] == ["000000.png", "000001.png"] and len(files) == 25 and "manifest.csv" in files and "generate.json" in files
    rows = list(csv.DictReader(open(tmp_path / "out" / "manifest.csv")))
    assert [int(r["index"]) for r in rows] == list(range(23)) and rows[5] == {"index": "5", "seed": "4", "file": "000005.png"}
    assert rep.n_written == 23 and decode(tmp_path / "out" / "000000.png").shape == (16, 16, 1)
    assert decode(tmp_path / "grid.png").ndim == 3


def test_same_files_whatever_batch_size_or_backend(tiny_checkpoint, tmp_path):
    art = load_artifact(tiny_checkpoint)
    generate(make_runner("onnxruntime", art), GenerateOptions(n=20, out=tmp_path / "a", batch_size=20, seed=9, progress=False))
    generate(make_runner("onnxruntime", art), GenerateOptions(n=20, out=tmp_path / "b", batch_size=3, seed=9, progress=False))
    generate(make_runner("eager", art), GenerateOptions(n=20, out=tmp_path / "c", batch_size=7, seed=9, progress=False))
    a, b, c = _pixels(tmp_path / "a"), _pixels(tmp_path / "b"), _pixels(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys() and len(a) == 20
    for k in a:
        # float differences ~1e-8 can only flip a pixel that sits exactly on a rounding boundary
        assert np.abs(a[k].astype(int) - b[k]).max() <= 1 and np.abs(a[k].astype(int) - c[k]).max() <= 1
    generate(make_runner("onnxruntime", art), GenerateOptions(n=20, out=tmp_path / "d", batch_size=20, seed=10, progress=False))
    assert any(not np.array_equal(a[k], v) for k, v in _pixels(tmp_path / "d").items())


def test_refuses_non_empty_folder_unless_overwrite(tiny_checkpoint, tmp_path):
    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(GanDeployError, match="not empty.*--overwrite"):
        generate(runner, GenerateOptions(n=2, out=tmp_path, progress=False))
    generate(runner, GenerateOptions(n=2, out=tmp_path, overwrite=True, progress=False))
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_output_path_that_is_a_file(tiny_checkpoint, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(GanDeployError, match="output path is a file"):
        generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)), GenerateOptions(n=2, out=tmp_path / "f", progress=False))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_output_folder_not_writable(tiny_checkpoint, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(GanDeployError, match="not writable"):
        generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)), GenerateOptions(n=2, out=ro, progress=False))


def test_ctrl_c_leaves_only_complete_files(tiny_checkpoint, tmp_path):
    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    (tmp_path / f"{TMP_PREFIX}000000.png").write_bytes(b"half")  # left by an earlier killed run

    def interrupt(b0):
        if b0 >= 8:
            raise KeyboardInterrupt
    with pytest.raises(GenerateInterrupted) as e:
        generate(runner, GenerateOptions(n=100, out=tmp_path, batch_size=4, progress=False, overwrite=True), on_batch=interrupt)
    rep = e.value.report
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.startswith(TMP_PREFIX)]
    pngs = [n for n in names if n.endswith(".png")]
    assert rep.interrupted and len(pngs) == rep.n_written >= 4
    for n in pngs:
        assert decode(tmp_path / n).shape == (16, 16, 1)  # every file is a complete image
    listed = [r["file"] for r in csv.DictReader(open(tmp_path / "manifest.csv"))]
    assert listed == pngs


def test_shards_union_is_byte_identical(tiny_checkpoint, tmp_path):
    art = load_artifact(tiny_checkpoint)
    generate(make_runner("onnxruntime", art), GenerateOptions(n=30, out=tmp_path / "all", batch_size=4, progress=False, manifest=False))
    for k in range(3):
        generate(make_runner("onnxruntime", art), GenerateOptions(n=30, out=tmp_path / "shards", batch_size=4, shard=(k, 3), overwrite=True, progress=False, manifest=False))
    whole = {p.name: p.read_bytes() for p in (tmp_path / "all").iterdir()}
    union = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    assert whole == union and len(whole) == 30


def test_shard_arithmetic():
    assert parse_shard("1/4") == (1, 4)
    spans = [shard_indices(1000, 64, (k, 4)) for k in range(4)]
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(s[0] % 64 == 0 for s in spans)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(GanDeployError, match="bad --shard"):
            parse_shard(bad)


def test_formats(tiny_checkpoint, tmp_path):
    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    generate(runner, GenerateOptions(n=3, out=tmp_path / "n", fmt="npy", progress=False))
    generate(runner, GenerateOptions(n=3, out=tmp_path / "j", fmt="jpg", progress=False))
    assert decode(tmp_path / "n" / "000002.npy").shape == (16, 16, 1)
    assert decode(tmp_path / "j" / "000002.jpg").shape == (16, 16, 1)
    png = tmp_path / "p"
    generate(runner, GenerateOptions(n=3, out=png, progress=False))
    assert np.array_equal(decode(png / "000002.png"), decode(tmp_path / "n" / "000002.npy"))


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_real_signal_stops_cleanly(tiny_checkpoint, tmp_path, signame):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM on the real CLI process: exit 130, only complete files."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "gan_deploy", "generate", "-c", str(tiny_checkpoint), "-n", "2000000",
                          "--out", str(out), "-b", "64"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and len(list(out.glob("*.png"))) > 100):
        time.sleep(0.05)
    p.send_signal(getattr(signal, signame))
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    names = sorted(f.name for f in out.iterdir())
    assert not [n for n in names if n.startswith(TMP_PREFIX)]
    pngs = [n for n in names if n.endswith(".png")]
    assert 100 < len(pngs) < 2000000
    assert [r["file"] for r in csv.DictReader(open(out / "manifest.csv"))] == pngs
    assert decode(out / pngs[-1]).shape == (16, 16, 1)

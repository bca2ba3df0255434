import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner, unavailable_reason
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import TMP_PREFIX
from gan_deploy.core.images import decode
from gan_deploy.generate import GenerateInterrupted, GenerateOptions, generate
from gan_deploy.generate.options import parse_shard, shard_indices
from gan_deploy.generate.outdir import LOCK, OutputLock


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
    spans = [shard_indices(1000, 1, (k, 4)) for k in range(4)]
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert [b - a for a, b in spans] == [250] * 4  # image indices, not batches: the batch size plays no part
    assert [shard_indices(1000, 64, (k, 4)) for k in range(4)] == [(0, 256), (256, 512), (512, 768), (768, 1000)]  # tar shards of 64: 16 units
    assert [shard_indices(3, 1, (k, 5)) for k in range(5)] == [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)]
    for bad in ("4/4", "x", "1/0", "-1/2", "", "/", "+1/4", "1_0/20", "\u0663/4", " 0/4"):  # "" and "/": a job array's unset variables, not the whole run
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


@pytest.mark.parametrize("signame,kind", [("SIGINT", "thread"), ("SIGTERM", "thread"), ("SIGINT to the group", "process")])
def test_real_signal_stops_cleanly(tiny_checkpoint, tmp_path, signame, kind):
    """Ctrl-C (SIGINT; a terminal sends it to the whole process group, encoder processes included) or a scheduler's
    SIGTERM on the real CLI process: exit 130, only complete files, all of them listed."""
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "gan_deploy", "generate", "-c", str(tiny_checkpoint), "-n", "2000000",
                          "--out", str(out), "-b", "64", "--writer-kind", kind], stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and len(list(out.glob("*.png"))) > 100):
        time.sleep(0.05)
    if signame == "SIGINT to the group":
        os.killpg(p.pid, signal.SIGINT)
    else:
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


# -- the defects of the issue, reproduced -----------------------------------------------------------------------



def _listed(folder, name="manifest.csv"):
    return [r["file"] for r in csv.DictReader(open(folder / name))]


def _complete_pngs(folder):
    """The .png files that decode completely, sorted."""
    ok = []
    for p in sorted(folder.glob("*.png")):
        try:
            decode(p)
            ok.append(p.name)
        except Exception:
            pass
    return ok


def test_temp_files_never_follow_a_planted_symlink(tiny_checkpoint, tmp_path):
    """Before: temporary names were predictable (.gan-deploy-tmp-000000.png) and opened with O_TRUNC, no O_EXCL: a
    symlink planted there redirected the write outside the folder. Now names are random (or there is no name:
    O_TMPFILE), creation is O_EXCL | O_NOFOLLOW, and a symlink at a final name is replaced, not written through."""
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    for i in range(6):
        (out / f"{TMP_PREFIX}{i:06d}.png").symlink_to(victim)  # the old predictable temporary names
    (out / "000003.png").symlink_to(victim)  # and a final name
    generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)), GenerateOptions(n=6, out=out, batch_size=2, overwrite=True, progress=False))
    assert victim.read_text() == "precious"
    assert not (out / "000003.png").is_symlink() and decode(out / "000003.png").shape == (16, 16, 1)
    assert not list(out.glob(TMP_PREFIX + "*"))  # the planted ones were swept (the links, never their targets)


def test_exclusive_temp_refuses_an_existing_name(tmp_path, monkeypatch):
    from gan_deploy.core import fileio

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "planted").symlink_to(victim)
    monkeypatch.setattr(fileio, "temp_name", lambda suffix="": "planted")  # as if the random name were guessed
    fd = fileio.open_dir(tmp_path)
    with pytest.raises(FileExistsError):
        fileio.create_temp(fd)
    w = fileio.FolderWriter(tmp_path)
    w.tmpfile = False  # the portable path: an exclusively created temporary name, then rename
    with pytest.raises(FileExistsError):
        w.write("x.png", b"data")
    os.close(fd)
    assert victim.read_text() == "precious" and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_folder_in_the_way_leaves_complete_files_and_their_manifest(tiny_checkpoint, tmp_path, kind):
    """Before: a failed write stopped the run with files but no manifest (or the previous run's beside them)."""
    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    out = tmp_path / "out"
    generate(runner, GenerateOptions(n=30, out=out, batch_size=5, seed=1, progress=False))  # a previous run's manifest
    (out / "000012.png").unlink()
    (out / "000012.png").mkdir()  # a folder where a file should go
    with pytest.raises(GanDeployError, match=r"writing images failed: .*000012\.png \(Is a directory\)"):
        generate(runner, GenerateOptions(n=30, out=out, batch_size=5, seed=2, overwrite=True, progress=False, writer_kind=kind, writers=2))
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert {r["seed"] for r in rows} == {"2"}  # this run's manifest, not the previous one's
    listed = [r["file"] for r in rows]
    assert "000012.png" not in listed and "000010.png" in listed and listed == sorted(listed)
    for name in listed:  # every listed file is complete and is this run's (seed 2)
        assert decode(out / name).shape == (16, 16, 1)
    assert not list(out.glob(TMP_PREFIX + "*")) and not (out / LOCK).exists()


def test_disk_full_leaves_complete_files_and_their_manifest(tiny_checkpoint, tmp_path, monkeypatch):
    from gan_deploy.core import fileio

    real, calls = fileio.write_all, []

    def write_all(fd, data):
        calls.append(1)
        if len(calls) > 17:  # the manifest's header, the run record, then 15 images fit
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)
    monkeypatch.setattr(fileio, "write_all", write_all)
    monkeypatch.setattr("gan_deploy.generate.journal.write_all", real)  # the manifest itself still fits
    out = tmp_path / "out"
    with pytest.raises(GanDeployError, match="No space left on device") as e:
        generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)),
                 GenerateOptions(n=40, out=out, batch_size=5, progress=False, writer_kind="thread", writers=1))
    assert "complete images are listed" in str(e.value)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == _complete_pngs(out) == _listed(out) and 0 < len(pngs) < 40
    assert not list(out.glob(TMP_PREFIX + "*"))


def _rlimit_fsize(limit):
    def pre():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_tar_and_array_on_a_file_size_limit(tiny_checkpoint, tmp_path):
    """A real write error (EFBIG past RLIMIT_FSIZE) in a real process: one line, exit 2, only complete shards listed;
    the array's space is reserved before the first batch, so it fails there, with nothing half done."""
    base = [sys.executable, "-m", "gan_deploy", "generate", "-c", str(tiny_checkpoint), "-b", "20"]
    out = tmp_path / "tar"
    r = subprocess.run(base + ["-n", "2000", "--sink", "tar", "--tar-shard-size", "100", "--out", str(out)], capture_output=True, text=True,
                       preexec_fn=_rlimit_fsize(100_000), timeout=120)  # a shard of 100 samples is ~190 kB: none fits
    assert r.returncode == 2 and "Traceback" not in r.stderr and "writing images failed" in r.stderr, r.stderr
    assert "File too large" in r.stderr
    assert not list(out.glob("*.tar")) and _listed(out) == [] and not list(out.glob(TMP_PREFIX + "*"))
    out = tmp_path / "array"
    r = subprocess.run(base + ["-n", "2000", "--sink", "array", "--out", str(out)], capture_output=True, text=True,
                       preexec_fn=_rlimit_fsize(100_000), timeout=120)
    assert r.returncode == 2 and "cannot create the array" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (out / "images.npy").exists() and not (out / "manifest.csv").exists()  # a refused start leaves no record



def test_second_run_into_the_same_folder_is_refused(tiny_checkpoint, tmp_path):
    """Before: two runs into one folder both succeeded and interleaved. Now the folder is locked for the run."""
    out = tmp_path / "out"
    out.mkdir()
    lock = OutputLock(out).acquire()  # another open file description: exactly what a second process has
    try:
        with pytest.raises(GanDeployError, match="another generate is writing into this output folder"):
            generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)), GenerateOptions(n=4, out=out, overwrite=True, progress=False))
    finally:
        lock.release()
    generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)), GenerateOptions(n=4, out=out, overwrite=True, progress=False))


def test_second_process_into_the_same_folder_is_refused(tiny_checkpoint, tmp_path, cli):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "gan_deploy", "generate", "-c", str(tiny_checkpoint), "-n", "2000000", "--out", str(out),
                          "-b", "64"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / LOCK).exists():
            time.sleep(0.05)
        r = cli("generate", "-c", tiny_checkpoint, "-n", 10, "--out", out, "--overwrite")
        assert r.exit_code == 2 and "another generate is writing into this output folder" in r.output and f"pid {p.pid}" in r.output
        # let the first run complete a file before stopping it (on a loaded machine the lock can come seconds earlier)
        while time.time() < deadline and not _complete_pngs(out):
            time.sleep(0.05)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    assert _listed(out) == _complete_pngs(out)  # the first run was not disturbed


def test_outputs_are_checked_before_the_first_batch(tiny_checkpoint, tmp_path, cli):
    """Before: --grid and --json could overwrite the command's own checkpoint, and were checked after all images."""
    ck = tmp_path / "m.safetensors"
    ck.write_bytes(tiny_checkpoint.read_bytes())
    sidecar = ck.with_suffix(".json")
    sidecar.write_bytes(tiny_checkpoint.with_suffix(".json").read_bytes())
    before = ck.read_bytes(), sidecar.read_bytes()
    out = tmp_path / "out"
    cases = [
        (["--grid", ck], "--grid would overwrite an input"),
        (["--json", sidecar], "--json would overwrite an input"),
        (["--grid", tmp_path / "g.png", "--json", tmp_path / "g.png"], "name the same file"),
        (["--grid", out / "000003.png"], "would be overwritten by the run's own files"),
        (["--json", out / "manifest.csv"], "would be overwritten by the run's own files"),
    ]
    for extra, message in cases:
        r = cli("generate", "-c", ck, "-n", 5, "--out", out, *extra)
        assert r.exit_code == 2 and message in r.output, (extra, r.output)
        errors = [line for line in r.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and message in errors[0] and not out.exists()  # one line, before anything was written
    assert (ck.read_bytes(), sidecar.read_bytes()) == before
    with pytest.raises(GanDeployError, match="the sample grid is a folder"):
        generate(make_runner("onnxruntime", load_artifact(ck)), GenerateOptions(n=5, out=out, grid=tmp_path, progress=False))
    assert not out.exists()
    (tmp_path / "g.png").symlink_to(ck)  # a symlink to the checkpoint is the checkpoint
    r = cli("generate", "-c", ck, "-n", 5, "--out", out, "--grid", tmp_path / "g.png")
    assert r.exit_code == 2 and "would overwrite an input" in r.output
    # a checkpoint whose sidecar is named like the run record, inside the output folder
    inside = tmp_path / "o2"
    inside.mkdir()
    (inside / "generate.safetensors").write_bytes(ck.read_bytes())
    (inside / "generate.json").write_bytes(sidecar.read_bytes())
    r = cli("generate", "-c", inside / "generate.safetensors", "-n", 5, "--out", inside, "--overwrite")
    assert r.exit_code == 2 and "would overwrite an input" in r.output
    assert (inside / "generate.json").read_bytes() == sidecar.read_bytes()


def test_an_empty_shard_writes_nothing_and_exits_0(tiny_checkpoint, tmp_path, cli):
    """Before: -n 60 --shard 0/3 exited 2 ("empty job shard"), so a Kubernetes Indexed Job or a Slurm array over
    every K failed. Now every K succeeds; an empty shard (more shards than images) says so in one line."""
    r = cli("generate", "-c", tiny_checkpoint, "-n", 60, "--shard", "0/100", "--out", tmp_path / "o", "--grid", tmp_path / "g.png",
            "--json", tmp_path / "r.json")
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 0 and len(lines) == 1, r.output
    assert "job shard 0/100 is empty: 60 images cut into 100 job shards" in lines[0] and "nothing written" in lines[0]
    assert not any(p.exists() for p in (tmp_path / "o", tmp_path / "g.png", tmp_path / "r.json"))
    r = cli("generate", "-c", tiny_checkpoint, "-n", 60, "--shard", "1/100", "--out", tmp_path / "p")
    assert r.exit_code == 0 and _listed(tmp_path / "p") == ["000000.png"]
    # -n 60 --shard K/3: 20 images each, whatever the batch size (they were whole batches: shard 0/3 was empty at -b 256)
    for k, bs in ((0, 256), (1, 7), (2, 1)):
        rep = generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)),
                       GenerateOptions(n=60, out=tmp_path / f"q{k}", batch_size=bs, shard=(k, 3), progress=False))
        assert (rep.first_index, rep.n_written) == (20 * k, 20)
    # the tar sink's unit is the tar shard: 60 images in tar shards of 25 are 3 units
    rep = generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)),
                   GenerateOptions(n=60, out=tmp_path / "t", sink="tar", sink_options={"shard_size": 25}, shard=(0, 4), progress=False))
    assert rep.empty and "3 tar shards of 25" in rep.summary() and not (tmp_path / "t").exists()


def test_batch_too_large_for_memory_names_the_largest_that_fits(tiny_checkpoint, tmp_path):
    from gan_deploy.backends.memory import USABLE, pixel_bytes_per_image
    from gan_deploy.backends.memory import check_pixels_fit as check_memory

    with pytest.raises(GanDeployError, match=r"batch too large .*expected a batch size of at most \d+"):
        generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)), GenerateOptions(n=10**10, out=tmp_path / "o", batch_size=10**10, progress=False))
    assert not (tmp_path / "o").exists()
    per = pixel_bytes_per_image((64, 64, 3), 100, 2)
    avail = int(1000 * per / USABLE) + 1
    assert check_memory(1000, (64, 64, 3), 100, 2, avail) == 2
    with pytest.raises(GanDeployError, match="at most 1000"):
        check_memory(1001, (64, 64, 3), 100, 2, avail)
    assert check_memory(800, (64, 64, 3), 100, 10, avail) == 5  # fewer ring slots before refusing


def _wait_rows(manifest, k, p, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") > k:
            return
        time.sleep(0.01)
    raise AssertionError("the run finished (or never started) before it could be killed")


def _children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.parametrize("sink,kind", [("folder", "process"), ("tar", "thread"), ("array", "thread")])
def test_sigkill_then_resume_is_byte_identical(tiny_checkpoint, tmp_path, cli, sink, kind):
    """kill -9 of a real run leaves a manifest listing complete images only (and its worker processes die with it);
    --resume finishes the run, and the result is byte for byte the uninterrupted run's."""
    n, b, seed, size = 6000, 50, 3, 500
    ref, out = tmp_path / "ref", tmp_path / "out"
    generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)),  # the uninterrupted run (in this process: same bytes)
             GenerateOptions(n=n, out=ref, batch_size=b, seed=seed, sink=sink, progress=False,
                             sink_options={"shard_size": size} if sink == "tar" else {}))
    cmd = [sys.executable, "-m", "gan_deploy", "generate", "-c", str(tiny_checkpoint), "-n", str(n), "-b", str(b), "--seed", str(seed),
           "--sink", sink, "--writer-kind", kind, "--writers", "2", "--out", str(out)] + (["--tar-shard-size", str(size)] if sink == "tar" else [])
    p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _wait_rows(out / "manifest.csv", size if sink == "tar" else 1, p)
    workers = _children(p.pid)
    p.kill()
    p.wait(timeout=30)
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert 0 < len(rows) < n
    if sink == "folder":
        for r in rows:  # every listed file is complete (and so the same as the uninterrupted run's)
            assert (out / r["file"]).read_bytes() == (ref / r["file"]).read_bytes()
    elif sink == "tar":
        for name in {r["file"] for r in rows}:
            assert (out / name).read_bytes() == (ref / name).read_bytes()
    else:
        a, c = np.load(out / "images.npy", mmap_mode="r"), np.load(ref / "images.npy", mmap_mode="r")
        idx = [int(r["row"]) for r in rows]
        assert np.array_equal(a[idx], c[idx])

    def alive():
        return [w for w in workers if Path(f"/proc/{w}").exists() and "(zombie)" not in Path(f"/proc/{w}/status").read_text()]
    deadline = time.time() + 10
    while time.time() < deadline and alive():
        time.sleep(0.05)
    assert not alive()  # the encoder processes died with the main process
    r = cli("generate", "--out", out, "--resume")  # the model and every setting from generate.json
    assert r.exit_code == 0, r.output
    assert "already complete" in r.output
    assert {q.name: q.read_bytes() for q in out.iterdir()} == {q.name: q.read_bytes() for q in ref.iterdir()}


def test_resume_takes_the_record_and_refuses_other_settings(tiny_checkpoint, tmp_path, cli):
    out = tmp_path / "out"

    def stop(b0):
        if b0 >= 8:
            raise KeyboardInterrupt
    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    with pytest.raises(GenerateInterrupted):
        generate(runner, GenerateOptions(n=40, out=out, batch_size=4, seed=7, progress=False), on_batch=stop)
    r = cli("generate", "-c", tiny_checkpoint, "--out", out, "--resume", "-n", 41)
    assert r.exit_code == 2 and "differs from the interrupted run's" in r.output and "n: 41" in r.output
    with pytest.raises(GanDeployError, match="other settings.*seed"):
        generate(runner, GenerateOptions(n=40, out=out, batch_size=4, seed=8, resume=True, progress=False))
    with pytest.raises(GanDeployError, match="not empty"):
        generate(runner, GenerateOptions(n=40, out=out, batch_size=4, seed=7, progress=False))
    r = cli("generate", "--out", out, "--resume", "--backend", "onnxruntime")  # the model and settings from generate.json
    assert r.exit_code == 0, r.output
    assert _listed(out) == [f"{i:06d}.png" for i in range(40)]
    with pytest.raises(GanDeployError, match="nothing to resume"):
        generate(runner, GenerateOptions(n=4, out=tmp_path / "none", resume=True, progress=False))


def test_precision_option(tiny_checkpoint, tmp_path, cli):
    from gan_deploy.generate import generate_images as run

    art = load_artifact(tiny_checkpoint)
    with pytest.raises(GanDeployError, match="precision fp16 applies to the PyTorch backends only"):
        run(art, GenerateOptions(n=2, out=tmp_path / "a", backend="onnxruntime", precision="fp16", progress=False))
    rep = run(art, GenerateOptions(n=4, out=tmp_path / "b", backend="eager", device="cpu", precision="bf16", progress=False))
    assert rep.n_written == 4 and "bf16" in rep.backend_detail
    r = cli("generate", "-c", tiny_checkpoint, "-n", 2, "--out", tmp_path / "c", "--backend", "onnxruntime", "--precision", "tf32")
    assert r.exit_code == 2 and "applies to the PyTorch backends only" in r.output
    r = cli("generate", "-c", tiny_checkpoint, "-n", 2, "--out", tmp_path / "d", "--precision", "fp8")
    assert r.exit_code == 2 and "fp32" in r.output


def test_cli_sinks_and_json(tiny_checkpoint, tmp_path, cli):
    r = cli("generate", "-c", tiny_checkpoint, "-n", 12, "-b", 5, "--sink", "tar", "--tar-shard-size", 5, "--tar-prefix", "wds",
            "--out", tmp_path / "t", "--json", tmp_path / "r.json", "--grid", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    assert "12 png samples in 3 tar shard(s)" in r.output
    assert sorted(p.name for p in (tmp_path / "t").glob("*.tar")) == ["wds-000000.tar", "wds-000001.tar", "wds-000002.tar"]
    import json
    assert json.loads((tmp_path / "r.json").read_text())["sink"] == "tar" and decode(tmp_path / "g.png").ndim == 3
    r = cli("generate", "-c", tiny_checkpoint, "-n", 12, "--sink", "array", "--format", "png", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "cannot store png" in r.output
    r = cli("generate", "-c", tiny_checkpoint, "-n", 12, "--tar-shard-size", 5, "--out", tmp_path / "f")
    assert r.exit_code == 2 and "need --sink tar" in r.output


def test_an_encoder_process_that_dies_stops_the_run_cleanly(tiny_checkpoint, tmp_path):
    import multiprocessing

    out = tmp_path / "out"
    killed = []

    def kill_one(b0):
        if b0 >= 20 and not killed:
            victim = next(p for p in multiprocessing.active_children() if p.name.startswith("gan-deploy-writer"))
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)
    with pytest.raises(GanDeployError, match="an encoder process died"):
        generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)),
                 GenerateOptions(n=4000, out=out, batch_size=10, progress=False, writer_kind="process", writers=2), on_batch=kill_one)
    assert killed and _listed(out) == _complete_pngs(out)
    assert not multiprocessing.active_children()


def test_a_refusal_is_the_only_line_printed(tiny_checkpoint, tmp_path, cli):
    for args in (["-n", 10, "--writers", 100000], ["-n", 4, "--grid", tmp_path / "notes.txt"], ["-n", 0]):
        (tmp_path / "notes.txt").write_text("mine")
        r = cli("generate", "-c", tiny_checkpoint, "--out", tmp_path / "o", *args)
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_grid_and_report_of_an_earlier_run_are_replaced(tiny_checkpoint, tmp_path, cli):
    for k in range(2):
        r = cli("generate", "-c", tiny_checkpoint, "-n", 4, "--out", tmp_path / f"o{k}", "--grid", tmp_path / "g.png",
                "--json", tmp_path / "r.json")
        assert r.exit_code == 0, r.output


def test_a_batch_larger_than_n_computes_one_batch_of_n(tiny_checkpoint, tmp_path):
    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    generate(runner, GenerateOptions(n=7, out=tmp_path / "a", batch_size=100_000_000, progress=False))  # no memory error
    generate(runner, GenerateOptions(n=7, out=tmp_path / "b", batch_size=7, progress=False))
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").glob("*.png")} == {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.png")}


@pytest.mark.skipif(unavailable_reason("openvino") is not None, reason="openvino is not installed")
def test_openvino_generates_onnxruntimes_images_byte_identical_across_batch_sizes_and_shards(tiny_onnx, tmp_path):
    """generate --backend openvino: the images onnxruntime makes (within a grey level), and the same bytes whatever the
    batch size (OpenVINO compiles a shape per batch size: 1-image and 23-image batches, split across streams at
    >= 16) and whatever the job shards."""
    art = load_artifact(onnx=tiny_onnx)
    opts = dict(n=46, seed=9, progress=False, manifest=False, sink="array")
    generate(make_runner("onnxruntime", art, "cpu"), GenerateOptions(out=tmp_path / "ort", batch_size=23, **opts))
    for b in (23, 1, 16, 5):
        generate(make_runner("openvino", art, "cpu"), GenerateOptions(out=tmp_path / f"ov{b}", batch_size=b, **opts))
    ref = np.load(tmp_path / "ort" / "images.npy")
    ov = np.load(tmp_path / "ov23" / "images.npy")
    assert ov.shape == ref.shape == (46, 16, 16, 1) and np.abs(ov.astype(int) - ref).max() <= 1
    for b in (1, 16, 5):
        assert np.array_equal(np.load(tmp_path / f"ov{b}" / "images.npy"), ov), b
    files = {**opts, "sink": "folder"}
    generate(make_runner("openvino", art, "cpu"), GenerateOptions(out=tmp_path / "all", batch_size=16, **files))
    for k in range(3):
        generate(make_runner("openvino", art, "cpu"), GenerateOptions(out=tmp_path / "shards", batch_size=16, shard=(k, 3),
                                                                      overwrite=True, **files))
    whole = {p.name: p.read_bytes() for p in (tmp_path / "all").iterdir()}
    assert whole == {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()} and len(whole) == 46
    assert np.array_equal(np.stack([decode(tmp_path / "all" / f"{i:06d}.png") for i in range(46)]).reshape(ov.shape), ov)


@pytest.mark.skipif(unavailable_reason("openvino") is not None, reason="openvino is not installed")
def test_cli_generate_with_openvino_and_auto_says_why(cli, tiny_onnx, tmp_path, monkeypatch):
    from gan_deploy.backends import autoprobe
    monkeypatch.setenv("GAN_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GAN_DEPLOY_AUTO_MEASURE", "1")
    monkeypatch.setattr(autoprobe, "busy_reason", lambda *a: None)  # a real probe of a tiny model on a busy test machine
    r = cli("generate", "--onnx", tiny_onnx, "--backend", "openvino", "-n", 7, "-b", 4, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "-> backend openvino" in r.output and len(list((tmp_path / "a").glob("*.png"))) == 7
    r = cli("generate", "--onnx", tiny_onnx, "-n", 7, "-b", 4, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert "(auto on cpu: " in r.output and "measured at batch 4" in r.output, r.output
    assert list((tmp_path / "cache" / "auto").glob("*.json"))


# -- outputs that are not images: the probe batch decides, before anything is written ------------------------------

def _graph(path: Path, act: str, scale: float = 1.0) -> Path:
    """A tiny ONNX generator z [N, 8] -> MatMul(W * scale) -> act -> image [N, 1, 8, 8] (declared range [-1, 1])."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    w = nh.from_array((np.random.default_rng(0).standard_normal((8, 64)) * scale).astype(np.float32), "W")
    shape = nh.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "shape")
    g = h.make_graph([h.make_node("MatMul", ["z", "W"], ["a"]), h.make_node(act, ["a"], ["t"]),
                      h.make_node("Reshape", ["t", "shape"], ["image"])], "g",
                     [h.make_tensor_value_info("z", T.FLOAT, ["N", 8])], [h.make_tensor_value_info("image", T.FLOAT, ["N", 1, 8, 8])],
                     [w, shape])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _black_checkpoint(path: Path, bias: float) -> Path:
    """The tiny DCGAN with its last layer's weights near zero and its bias `bias`: tanh(bias) everywhere."""
    import torch
    from conftest import TINY

    from gan_deploy.artifacts.checkpoint import save_checkpoint
    from gan_deploy.nets.networks import build_generator, init_weights
    torch.manual_seed(0)
    g = build_generator(TINY)
    g.apply(init_weights)
    last = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.mul_(1e-3 if bias > -10 else 0.0)
        last.bias.fill_(bias)
    return save_checkpoint(path, g, TINY).path


def _not_images(kind: str, d: Path) -> list[str]:
    if kind == "nan":  # Log of a Gaussian: half the values NaN
        return ["--onnx", str(_graph(d / "nan.onnx", "Log"))]
    if kind == "huge":  # no tanh and weights x1000: values in the thousands for a [-1, 1] model
        return ["--onnx", str(_graph(d / "huge.onnx", "Identity", 1000.0))]
    if kind == "constant":  # exactly -1 everywhere: every image black
        return ["-c", str(_black_checkpoint(d / "black.safetensors", -30.0))]
    return ["-c", str(_black_checkpoint(d / "dark.safetensors", -5.0))]  # within 1e-4 of -1: black, values inside the range


@pytest.mark.parametrize("kind,figure", [("nan", "% of values NaN/Inf"), ("huge", "100% out of range [-1, 1]"),
                                          ("constant", "nearly black"), ("dark", "nearly black")])
def test_a_model_that_makes_no_images_is_refused_before_writing(cli, tmp_path, kind, figure):
    model = _not_images(kind, tmp_path)
    for args in ([], ["--executor", "ray"]):  # the Ray executor probes on the driver, before Ray starts
        r = cli("generate", *model, "-n", 100, "-b", 32, "--out", tmp_path / "out", *args)
        errors = [x for x in r.output.splitlines() if x.startswith("Error:")]
        assert r.exit_code == 2 and len(errors) == 1, r.output
        assert figure in errors[0] and "in the first 64 image(s)" in errors[0] and "--allow-bad-images" in errors[0], errors[0]
        assert "warning:" not in r.output  # the refusal says it all
        assert not (tmp_path / "out").exists()
    # a folder that was there stays as it was (--overwrite: the refusal comes before the run's files)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    r = cli("generate", *model, "-n", 8, "--out", tmp_path / "out", "--overwrite")
    assert r.exit_code == 2 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"], r.output


@pytest.mark.parametrize("kind", ["nan", "huge", "constant"])
def test_allow_bad_images_writes_them_with_the_warning(cli, tmp_path, kind):
    r = cli("generate", *_not_images(kind, tmp_path), "-n", 8, "--out", tmp_path / "out", "--allow-bad-images")
    assert r.exit_code == 0, r.output
    warnings = [x for x in r.output.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and ("NaN/Inf" in warnings[0] or "value range" in warnings[0]), r.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 8


def test_an_untrained_generator_passes_the_probe(cli, tmp_path):
    """DCGAN's initial weights give near-constant mid-range images: grey, not black; no refusal, no warning."""
    import torch
    from conftest import TINY

    from gan_deploy.artifacts.checkpoint import save_checkpoint
    from gan_deploy.nets.networks import build_generator, init_weights
    torch.manual_seed(1)
    g = build_generator(TINY)
    g.apply(init_weights)
    ck = save_checkpoint(tmp_path / "untrained.safetensors", g, TINY).path
    for backend in ("eager", "onnxruntime"):
        r = cli("generate", "-c", ck, "-n", 8, "--backend", backend, "--out", tmp_path / backend)
        assert r.exit_code == 0 and "warning" not in r.output, r.output


def test_the_probe_uses_the_runs_first_images_in_its_batches(tiny_checkpoint, tmp_path, monkeypatch):
    """A job shard's probe is its own first images, in batches no larger than the run's (memory), and costs
    at most PROBE_IMAGES images."""
    from gan_deploy.backends.base import PROBE_IMAGES

    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    seen: list[int] = []
    real = runner.infer_impl
    monkeypatch.setattr(runner, "infer_impl", lambda z: (seen.append(len(z)), real(z))[1])
    generate(runner, GenerateOptions(n=400, out=tmp_path / "o", batch_size=50, shard=(1, 4), progress=False))
    probe = seen[:2]
    assert probe == [50, 14] and sum(probe) == PROBE_IMAGES


def _children(pid):
    """Live (not zombie) processes whose parent is `pid`, from /proc (psutil is not a dependency)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, ...
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_while_process_writers_start_stops_the_run(tiny_checkpoint, tmp_path, monkeypatch):
    """Before: the encoder processes started with SIGTERM ignored, so `--writers 100000 --writer-kind process` could
    not be stopped while starting them. Now SIGTERM (sent from another thread, as a scheduler's would arrive) during
    the start-up stops starting more, kills and reaps those started, and ends the run interrupted with nothing listed."""
    import multiprocessing
    import threading

    from gan_deploy.generate import pool as pool_mod
    from gan_deploy.generate.options import writer_bound

    writers = min(8, writer_bound("process")[0])
    real, started = pool_mod.start_process, []
    handler_before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's when a Ray test ran earlier in this process

    def slow_start(p):  # a start-up long enough to be interrupted (as thousands of processes would be)
        started.append(p)
        if len(started) == 2:
            threading.Thread(target=lambda: (time.sleep(0.2), os.kill(os.getpid(), signal.SIGTERM))).start()
        time.sleep(0.3)
        real(p)
    monkeypatch.setattr(pool_mod, "start_process", slow_start)
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(GenerateInterrupted) as e:
        generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)),
                 GenerateOptions(n=100, out=out, batch_size=10, progress=False, writer_kind="process", writers=writers))
    assert 2 <= len(started) < writers and time.monotonic() - t0 < 30
    assert e.value.report.n_written == 0 and _listed(out) == []
    assert not multiprocessing.active_children() and not any(p.pid and _alive(p.pid) for p in started)
    assert not list(out.glob(TMP_PREFIX + "*")) and not (out / LOCK).exists()
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the run's handler is gone again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_signal_while_the_collector_thread_starts_stops_the_run(tiny_checkpoint, tmp_path, monkeypatch, kind):
    """Found by the real-run test below: SIGTERM inside Thread.start() of the collector (while it waits for the new
    thread to say it runs) left a thread running that join() refused as "not started": a RuntimeError traceback
    and exit 1 instead of an interrupted run. The signal arrives here exactly in that window, every time."""
    import multiprocessing
    import threading

    real_start = threading.Thread.start
    sent = []

    def start(self):
        if self.name == "gan-deploy-collector" and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)  # delivered now, inside start(), before the thread exists
            time.sleep(0.05)
        real_start(self)
    monkeypatch.setattr(threading.Thread, "start", start)
    out = tmp_path / "out"
    with pytest.raises(GenerateInterrupted) as e:
        generate(make_runner("onnxruntime", load_artifact(tiny_checkpoint)),
                 GenerateOptions(n=40, out=out, batch_size=10, progress=False, writer_kind=kind, writers=2))
    assert sent and e.value.report.n_written == 0 and _listed(out) == []
    assert not multiprocessing.active_children() and not (out / LOCK).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_during_the_start_up_of_a_real_run(tiny_checkpoint, tmp_path):
    """The same with the real command and the real start-up of 8 encoder processes (about 0.3-1 s each here):
    SIGTERM once the model is loaded and the workers are starting; exit 130, no worker left behind."""
    from gan_deploy.generate.options import writer_bound

    writers = min(8, writer_bound("process")[0])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "gan_deploy", "generate", "-c", str(tiny_checkpoint), "-n", "200", "-b", "10",
                             "--writer-kind", "process", "--writers", str(writers), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    try:
        line = proc.stderr.readline()  # "... -> backend ...": every check passed, the workers start next
        assert "-> backend" in line, line
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:  # the first worker has started
            seen.update(_children(proc.pid))
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        for _ in range(20):
            seen.update(_children(proc.pid))
            time.sleep(0.005)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen and proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    time.sleep(0.5)
    assert not [p for p in seen if _alive(p)]


# -- disk space ------------------------------------------------------------------------------------------------

def _on_disk(path: Path) -> int:
    """Bytes the files under `path` take on the disk (allocated blocks), as the estimate counts them."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def test_a_run_larger_than_the_free_disk_space_is_refused_before_anything_is_written(cli, tiny_checkpoint, tmp_path, monkeypatch):
    """`generate -n 10**14` started and ran until the disk was full: now the files are estimated from the first
    images and a run that cannot fit is one line, exit 2, nothing written; --no-space-check starts it anyway."""
    import collections
    import shutil

    real = shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 200_000, 200_000))  # 195 KiB free
    out = tmp_path / "new" / "out"  # not there yet: the free space of the nearest folder that exists
    r = cli("generate", "-c", tiny_checkpoint, "-n", 100, "-b", 10, "--out", out)  # 100 files of 4 KiB: 400 KiB
    assert r.exit_code == 2 and "not enough free disk space" in r.output and "100 images" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1 and not (tmp_path / "new").exists()
    r = cli("generate", "-c", tiny_checkpoint, "-n", 40, "-b", 10, "--out", out)  # 160 KiB: fits
    assert r.exit_code == 0, r.output
    r = cli("generate", "-c", tiny_checkpoint, "-n", 100, "-b", 10, "--out", tmp_path / "forced", "--no-space-check")
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(shutil, "disk_usage", real)


@pytest.mark.parametrize("sink, fmt", [("folder", "png"), ("folder", "jpg"), ("tar", "png"), ("array", "npy")])
def test_the_disk_space_estimate_is_close_to_what_the_run_writes(tiny_checkpoint, tmp_path, sink, fmt):
    from gan_deploy.generate.session import SPACE_SAMPLE, Session

    opts = GenerateOptions(n=300, out=tmp_path / "o", batch_size=50, sink=sink, fmt=fmt, progress=False, manifest=False)
    runner = make_runner("onnxruntime", load_artifact(tiny_checkpoint))
    generate(runner, opts)
    session = Session(opts, runner.spec, [], runner.name, "cpu", "fp32")
    from gan_deploy.core.images import to_uint8
    from gan_deploy.core.latents import latents_range
    sample = to_uint8(runner.infer(latents_range(0, 0, SPACE_SAMPLE, runner.spec.latent_dim)), runner.spec.value_range)
    estimate = session.sink.bytes_needed(sample)
    written = _on_disk(tmp_path / "o") if sink != "array" else (tmp_path / "o" / "images.npy").stat().st_size
    assert 0.8 * written <= estimate <= 1.25 * written, (estimate, written)


def test_a_sink_that_cannot_start_leaves_the_folder_as_it_was(cli, tiny_checkpoint, tmp_path):
    """From an attack: `-n 2**63-1 --sink array --no-space-check` was refused (the array cannot be that large) with a
    negative size in the message, and left generate.json and manifest.csv behind, so the next run was "not empty"."""
    out = tmp_path / "a"
    r = cli("generate", "-c", tiny_checkpoint, "-n", 2**63 - 1, "--sink", "array", "--no-space-check", "--out", out)
    assert r.exit_code == 2 and "cannot create the array" in r.output and "-0.00" not in r.output, r.output
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == [], sorted(p.name for p in out.iterdir())
    r = cli("generate", "-c", tiny_checkpoint, "-n", 5, "--sink", "array", "--out", out)
    assert r.exit_code == 0, r.output

"""Every sink keeps generate's promises: image i depends only on (seed, i); job shards, writer kinds and an
interrupted-then-resumed run give the same bytes as one uninterrupted run; tar shards read back with the
standard tarfile module (and WebDataset, when installed) and the array with np.load(mmap_mode="r")."""
from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pytest

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.images import decode_bytes, encode_batch
from gan_deploy.generate import GenerateInterrupted, GenerateOptions, generate
from gan_deploy.generate.sinks import SINKS, Bitset, sink_class
from gan_deploy.generate.sinks.tar import ustar_header

N, BATCH, SEED, TAR = 23, 5, 4, 7  # 5 batches, the last short; tar shards of 7 straddle batches


@pytest.fixture(scope="module")
def runner(tiny_checkpoint):
    return make_runner("onnxruntime", load_artifact(tiny_checkpoint), "cpu")


def _opts(out, sink, **kw):
    base = dict(n=N, out=out, batch_size=BATCH, seed=SEED, sink=sink, progress=False)
    if sink == "tar":
        base["sink_options"] = {"shard_size": TAR}
    base.update(kw)
    return GenerateOptions(**base)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(runner, tmp_path_factory):
    """One uninterrupted, unsharded run per sink (thread writers): name -> bytes of every file it leaves."""
    base = tmp_path_factory.mktemp("ref")
    out = {}
    for sink in SINKS:
        generate(runner, _opts(base / sink, sink, writer_kind="thread"))
        out[sink] = _files(base / sink)
    return out


def test_registry_and_options():
    assert list(SINKS) == ["folder", "tar", "array"]
    for name in SINKS:
        assert sink_class(name).name == name
    from gan_deploy.core.errors import GanDeployError
    with pytest.raises(GanDeployError, match="unknown sink"):
        sink_class("zip")
    with pytest.raises(GanDeployError, match="bad tar shard size"):
        sink_class("tar").check_options({"shard_size": 0})
    with pytest.raises(GanDeployError, match="bad tar shard prefix"):
        sink_class("tar").check_options({"prefix": "../x"})


def test_tar_shards_read_back_with_tarfile_pixel_for_pixel(reference, tmp_path):
    files = reference["tar"]
    assert sorted(n for n in files if n.endswith(".tar")) == [f"images-{t:06d}.tar" for t in range(4)]  # 23 samples / 7
    folder = reference["folder"]
    pixels = np.load(io.BytesIO(reference["array"]["images.npy"]))  # the array sink's raw pixels
    for t in range(4):
        with tarfile.open(fileobj=io.BytesIO(files[f"images-{t:06d}.tar"])) as tf:
            names = tf.getnames()
            keys = [f"{i:06d}" for i in range(t * TAR, min((t + 1) * TAR, N))]
            assert names == [f"{k}.{ext}" for k in keys for ext in ("png", "json")]  # a sample's members adjacent, in order
            for k in keys:
                png = tf.extractfile(f"{k}.png").read()
                assert png == folder[f"{k}.png"]  # the same bytes as the folder sink's file
                assert np.array_equal(decode_bytes(png, "png"), pixels[int(k)])  # pixel for pixel
                assert json.loads(tf.extractfile(f"{k}.json").read()) == {"index": int(k), "seed": SEED}
                m = tf.getmember(f"{k}.png")
                assert (m.mtime, m.uid, m.gid, m.mode) == (0, 0, 0, 0o644)
    rows = list(csv.DictReader(io.StringIO(files["manifest.csv"].decode())))
    assert rows[8] == {"index": "8", "seed": str(SEED), "file": "images-000001.tar", "member": "000008.png"}
    assert len(rows) == N


def test_tar_shards_read_with_webdataset(reference, tmp_path):
    wds = pytest.importorskip("webdataset", reason="webdataset is not installed (pip install webdataset)")
    for name, data in reference["tar"].items():
        (tmp_path / name).write_bytes(data)
    urls = [str(tmp_path / f"images-{t:06d}.tar") for t in range(4)]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:06d}" for i in range(N)]
    assert all(s["png"] == reference["folder"][f"{s['__key__']}.png"] for s in samples)
    assert json.loads(samples[5]["json"]) == {"index": 5, "seed": SEED}


def test_array_sink_is_one_mmap_npy(reference, tmp_path):
    (tmp_path / "images.npy").write_bytes(reference["array"]["images.npy"])
    a = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert a.shape == (N, 16, 16, 1) and a.dtype == np.uint8
    for i in (0, 7, N - 1):
        assert np.array_equal(a[i], decode_bytes(reference["folder"][f"{i:06d}.png"], "png"))
    rows = list(csv.DictReader(io.StringIO(reference["array"]["manifest.csv"].decode())))
    assert rows[3] == {"index": "3", "seed": str(SEED), "file": "images.npy", "row": "3"} and len(rows) == N


@pytest.mark.parametrize("sink", list(SINKS))
def test_job_shards_give_the_same_bytes(runner, reference, tmp_path, sink):
    parts = [_files(tmp_path / f"s{k}") for k in range(3) if generate(runner, _opts(tmp_path / f"s{k}", sink, shard=(k, 3)))]
    ref = reference[sink]
    if sink == "array":  # each job shard's array holds its own rows: concatenated, they are the one-process array
        rows = np.concatenate([np.load(io.BytesIO(p["images.npy"])) for p in parts])
        assert rows.tobytes() == np.load(io.BytesIO(ref["images.npy"])).tobytes()
        return
    union: dict[str, bytes] = {}
    for p in parts:
        data = {k: v for k, v in p.items() if k not in ("manifest.csv", "generate.json")}
        assert not set(data) & set(union)
        union.update(data)
    assert union == {k: v for k, v in ref.items() if k not in ("manifest.csv", "generate.json")}


def _indices(folder):
    """The image indices a run's manifest lists, in order."""
    return [int(r["index"]) for r in csv.DictReader(open(folder / "manifest.csv"))]


def _pixels_by_index(folder, sink):
    """index -> uint8 pixels of every image a run left (decoded from files, tar members or array rows)."""
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    if sink == "folder":
        return {int(r["index"]): decode_bytes((folder / r["file"]).read_bytes(), "png") for r in rows}
    if sink == "tar":
        out = {}
        for r in rows:
            with tarfile.open(folder / r["file"]) as t:
                out[int(r["index"])] = decode_bytes(t.extractfile(r["member"]).read(), "png")
        return out
    a = np.load(folder / "images.npy")
    return {int(r["index"]): a[int(r["row"])] for r in rows}


def _fleet(runner, base, sink, n, parts, batch_sizes):
    """Every job shard K = 0..parts-1 of an n-image run, shard K with batch_sizes[K % len] (thread writers):
    [(folder, report)], folder None where the shard is empty (then nothing may exist)."""
    runs = []
    for k in range(parts):
        out = base / f"k{k}"
        rep = generate(runner, _opts(out, sink, n=n, batch_size=batch_sizes[k % len(batch_sizes)], shard=(k, parts),
                                     writer_kind="thread", writers=2))
        if rep.empty:
            assert not out.exists() and rep.n_written == 0 and f"job shard {k}/{parts} is empty" in rep.summary()
            runs.append((None, rep))
        else:
            assert rep.n_written == rep.n_requested > 0
            runs.append((out, rep))
    return runs


@pytest.mark.parametrize("sink", list(SINKS))
def test_a_fleet_of_shards_is_one_run(runner, tmp_path, sink):
    """`--shard K/N` for every K, as a Kubernetes Indexed Job or a Slurm array runs it, for several N (one, a few,
    more shards than images or tar shards) and n, batch sizes that do not divide n: the union of the shards is one
    uninterrupted run byte for byte, with no overlap; shard K holds the same indices whatever its batch size (each
    shard its own); an empty shard writes nothing."""
    for n, bs in ((N, BATCH), (10, 4), (1, 3)):
        ref = tmp_path / f"ref{n}"
        generate(runner, _opts(ref, sink, n=n, batch_size=bs, writer_kind="thread"))
        ref_files, ref_pixels = _files(ref), _pixels_by_index(ref, sink)
        for parts in (1, 3, 7, n + 3):
            same = _fleet(runner, tmp_path / f"same{n}-{parts}", sink, n, parts, [bs])
            spans = [(rep.first_index, rep.first_index + rep.n_requested) for _, rep in same if not rep.empty]
            assert spans[0][0] == 0 and spans[-1][1] == n and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            written = [folder for folder, _ in same if folder is not None]
            if sink == "tar":  # a job shard is whole tar shards: at most ceil(n / TAR) shards have images
                assert len(written) == min(parts, -(-n // TAR))
            else:  # one image is the unit: every shard has an image until there are more shards than images
                assert len(written) == min(parts, n)
            # the union, byte for byte: files / tar shards are the reference's, the arrays' rows concatenate to its array
            if sink == "array":
                rows = np.concatenate([np.load(f / "images.npy") for f in written])
                assert rows.tobytes() == np.load(ref / "images.npy").tobytes()
            else:
                union: dict[str, bytes] = {}
                for f in written:
                    data = {k: v for k, v in _files(f).items() if k not in ("manifest.csv", "generate.json")}
                    assert not set(data) & set(union)  # no overlap
                    union.update(data)
                assert union == {k: v for k, v in ref_files.items() if k not in ("manifest.csv", "generate.json")}
            listed = [i for f in written for i in _indices(f)]
            assert listed == list(range(n))  # every index once, in shard order
            # each shard with its own batch size (dividing n or not, above n): the same indices, the same pixels
            # (within the one-level rounding a batch size may cause: test_other_batch_size_same_pixels)
            mixed = _fleet(runner, tmp_path / f"mixed{n}-{parts}", sink, n, parts, [3, bs, 8, n + 1, 1])
            for (f_same, r_same), (f_mixed, r_mixed) in zip(same, mixed):
                assert (r_same.first_index, r_same.n_requested, bool(r_same.empty)) == (r_mixed.first_index, r_mixed.n_requested, bool(r_mixed.empty))
                if f_same is not None:
                    assert _indices(f_mixed) == _indices(f_same)
                    for i, px in _pixels_by_index(f_mixed, sink).items():
                        assert np.abs(px.astype(int) - ref_pixels[i]).max() <= 1


@pytest.mark.parametrize("sink", list(SINKS))
def test_a_shard_interrupted_then_resumed_is_the_shard(runner, tmp_path, sink):
    whole = tmp_path / "whole"
    generate(runner, _opts(whole, sink, shard=(1, 3), batch_size=3))

    def stop(b0):  # shard 1/3 of 23 is [7, 15) (tar: [7, 14)): batches of 3 from 6; stopped after the one at 9
        if b0 >= 9:
            raise KeyboardInterrupt
    out = tmp_path / "out"
    with pytest.raises(GenerateInterrupted) as e:
        generate(runner, _opts(out, sink, shard=(1, 3), batch_size=3, writer_kind="thread"), on_batch=stop)
    assert 0 <= e.value.report.n_written < e.value.report.n_requested
    rep = generate(runner, _opts(out, sink, shard=(1, 3), batch_size=3, resume=True))
    assert rep.n_resumed + rep.n_written == rep.n_requested
    assert _files(out) == _files(whole)  # images, manifest and run record, byte for byte


@pytest.mark.parametrize("sink", list(SINKS))
def test_interrupted_then_resumed_is_byte_identical(runner, reference, tmp_path, sink):
    out = tmp_path / "out"

    def stop(b0):
        if b0 >= 10:
            raise KeyboardInterrupt
    with pytest.raises(GenerateInterrupted) as e:
        generate(runner, _opts(out, sink, writer_kind="thread"), on_batch=stop)
    assert 0 < e.value.report.n_written < N
    rep = generate(runner, _opts(out, sink, resume=True))
    assert rep.n_resumed == e.value.report.n_written and rep.n_written == N - rep.n_resumed
    assert _files(out) == reference[sink]  # images, manifest and run record, byte for byte
    again = generate(runner, _opts(out, sink, resume=True))  # a finished run: nothing to do
    assert again.n_written == 0 and "nothing to do" in again.summary()


@pytest.mark.parametrize("sink", list(SINKS))
def test_process_writers_give_the_same_bytes(runner, reference, tmp_path, sink):
    rep = generate(runner, _opts(tmp_path / "p", sink, writer_kind="process", writers=2))
    assert rep.writer_kind == "process" and rep.writers == 2
    assert _files(tmp_path / "p") == reference[sink]


def test_other_batch_size_same_pixels(runner, reference, tmp_path):
    generate(runner, _opts(tmp_path / "a", "array", batch_size=3))
    a = np.load(tmp_path / "a" / "images.npy")
    ref = np.load(io.BytesIO(reference["array"]["images.npy"]))
    assert np.abs(a.astype(int) - ref).max() <= 1  # float differences can flip a pixel on a rounding boundary


def test_ustar_header_matches_tarfile():
    for name, size in [("000001.png", 0), ("000001.json", 21), ("12345678.npy", 8**11 - 1)]:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = size, 0, 0o644
        assert ustar_header(name, size) == ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def test_encode_batch_equals_encode():
    from gan_deploy.core.images import encode
    x = np.random.default_rng(0).integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    for fmt in ("png", "npy", "jpg"):
        assert encode_batch(x, fmt) == [encode(im, fmt) for im in x]


@pytest.mark.parametrize("page_bits", [8, 16, 40, 1 << 23])
def test_bitset_runs_match_a_bool_array(page_bits):
    rng = np.random.default_rng(page_bits)
    for _ in range(200):
        start = int(rng.integers(0, 20))
        stop = start + int(rng.integers(0, 90))
        bs, ref = Bitset(start, stop, page_bits=page_bits), np.zeros(stop - start, bool)
        for _ in range(5):
            lo = int(rng.integers(start - 3, stop + 3))
            hi = int(rng.integers(lo, stop + 5))
            v = bool(rng.random() < 0.7)
            bs.set_range(lo, hi, v)
            a, b = max(lo, start) - start, max(min(hi, stop) - start, 0)
            if b > a:
                ref[a:b] = v
        extra = rng.integers(start - 5, stop + 5, size=4)
        bs.set_indices(extra)
        ref[extra[(extra >= start) & (extra < stop)] - start] = True
        for value in (True, False):
            got = np.zeros_like(ref)
            for a, b in bs.runs(value=value):
                assert a < b
                got[a - start:b - start] = True
            assert (got == (ref if value else ~ref)).all()
        lo, hi = sorted(int(v) for v in rng.integers(start - 2, stop + 2, size=2))
        assert bs.count(lo, hi) == ref[max(lo, start) - start:max(min(hi, stop) - start, 0)].sum()
        assert bs.count() == ref.sum()
        assert [i for i in range(start - 2, stop + 2) if i in bs] == (np.flatnonzero(ref) + start).tolist()


def test_bitset_memory_grows_with_what_is_done_not_with_what_is_asked():
    bs = Bitset(0, 10**13)  # `generate -n 10000000000000`: 1.25 TB as a flat bitset
    assert bs.allocated_bytes == 0 and bs.count() == 0
    bs.set_range(5 * 10**12, 5 * 10**12 + 1000)
    assert bs.allocated_bytes <= 2 << 20 and bs.count() == 1000 and bs.all(5 * 10**12, 5 * 10**12 + 1000)
    assert next(bs.runs(value=False)) == (0, 5 * 10**12)


def test_bitset_walks_what_is_done_not_the_whole_range():
    """`generate -n 10**15` interrupted: writing the manifest (runs()) stepped through all 120 million pages and never
    ended, as did --resume's check. Now the steps follow the allocated pages; these would take hours otherwise."""
    import time

    n = 2**63 - 1
    bs = Bitset(0, n)
    bs.set_range(0, 3000)
    bs.set_range(n - 10, n)
    t0 = time.process_time()
    assert list(bs.runs()) == [(0, 3000), (n - 10, n)]
    assert list(bs.runs(value=False)) == [(3000, n - 10)]
    assert bs.count(0, n) == 3010 and not bs.all(0, n)
    bs.set_range(0, n, False)  # discard everything: only the allocated pages are touched
    assert bs.count() == 0 and list(bs.runs(value=False)) == [(0, n)]
    assert time.process_time() - t0 < 60  # a bound against the hang, not a speed target (it takes milliseconds)


def test_resume_redoes_what_is_missing_or_cut_short(runner, reference, tmp_path):
    """The journal is checked against the folder: a listed file that is gone is redone, a row cut short ignored."""
    out = tmp_path / "out"

    def stop(b0):
        if b0 >= 10:
            raise KeyboardInterrupt
    with pytest.raises(GenerateInterrupted):
        generate(runner, _opts(out, "folder", writer_kind="thread"), on_batch=stop)
    (out / "000003.png").unlink()
    (out / "000004.png").write_bytes(b"")  # as a power cut can leave it
    with open(out / "manifest.csv", "a") as f:
        f.write("14,4,0000")  # a row cut short
    rep = generate(runner, _opts(out, "folder", resume=True))
    assert rep.n_written == N - 13
    assert _files(out) == reference["folder"]

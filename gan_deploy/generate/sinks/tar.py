"""`--sink tar`: WebDataset-compatible tar shards, {prefix}-000000.tar, ... of `shard_size` samples each.

Sample i is two members, {key}.{fmt} (the image) and {key}.json ({"index": i, "seed": seed}), key = the
zero-padded index, so `webdataset.WebDataset(...)` yields {"__key__", "png", "json"} per sample and the
standard `tarfile` module reads the shards too. Shard t holds samples [t * shard_size, (t + 1) * shard_size).
Headers are POSIX ustar with fixed owner, mode and mtime (0), so the bytes depend only on (seed, i) and the
shard size: two runs, any sharding, executor or resume, produce identical shards.

The encoder workers build each sample's member bytes (header, data, padding) in parallel; the main process
appends them in index order to the shard being written (an anonymous or exclusively created temporary
file), and when a shard has all its samples ends the archive, fsyncs it and links it in under its name:
a shard exists complete or not at all, and the journal lists its samples only then.
"""
from __future__ import annotations

import os
import re
import tarfile
import time
from typing import Any, ClassVar

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import FolderWriter, write_all
from gan_deploy.core.images import FORMATS, decode_bytes, encode_batch
from gan_deploy.generate.sinks.base import Bitset, Encoded, Layout, Result, Sink, SinkWorker, Task, batch_files, file_stat

BLOCK = 512
RECORD = 20 * BLOCK  # tar's record size: the archive is padded to a multiple of it, as GNU tar and tarfile do
_ZERO = bytes(RECORD)


def _template() -> tuple[bytes, int]:
    h = bytearray(BLOCK)
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[136:148] = b"00000000000\0"
    h[148:156] = b"        "  # the checksum is computed with its own field as spaces
    h[156] = 0x30  # "0": regular file
    h[257:265] = b"ustar\x0000"
    # name and size: filled per member; uname, gname, devmajor, devminor: NUL, as tarfile writes them for a regular file
    return bytes(h), sum(h)


_TEMPLATE, _TEMPLATE_SUM = _template()


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte POSIX ustar header of a regular file: mode 0644, owner 0:0, mtime 0 (what
    `tarfile.TarInfo(name)` with size set and those fields writes with `tobuf(tarfile.USTAR_FORMAT)`)."""
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name}")
    size_field = b"%011o\0" % size
    h = bytearray(_TEMPLATE)
    h[0:len(raw)] = raw
    h[124:136] = size_field
    h[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return bytes(h)


def member(name: str, data: bytes) -> bytes:
    """One tar member: header, data, zeros to the next block."""
    return ustar_header(name, len(data)) + data + _ZERO[:-len(data) % BLOCK]


def end_of_archive(size: int) -> bytes:
    """Two zero blocks, then zeros to the next multiple of the record size (`size`: bytes written so far)."""
    total = size + 2 * BLOCK
    return _ZERO[:2 * BLOCK + (-total % RECORD)]


class TarWorker(SinkWorker):
    """Encodes samples into their tar members; returns (bytes of samples [lo, hi) back to back, offsets)."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def handle(self, task: Task, pixels: "np.ndarray | Encoded") -> Result:
        t0 = time.perf_counter()
        lay, fmt = self.layout, self.layout.fmt
        parts: list[bytes] = []
        offsets, pos = [0], 0
        for k, data in enumerate(batch_files(task, pixels, fmt)):
            i = task.lo + k
            key = lay.key(i)
            meta = b'{"index":%d,"seed":%d}' % (i, lay.seed)  # = json.dumps({...}, sort_keys=True, separators=(",", ":"))
            pad_data, pad_meta = -len(data) % BLOCK, -len(meta) % BLOCK
            parts += (ustar_header(f"{key}.{fmt}", len(data)), data, _ZERO[:pad_data], ustar_header(f"{key}.json", len(meta)), meta,
                      _ZERO[:pad_meta])
            pos += 2 * BLOCK + len(data) + pad_data + len(meta) + pad_meta
            offsets.append(pos)
        return Result(task.seq, task.hi, payload=(b"".join(parts), offsets), seconds=time.perf_counter() - t0)


class TarSink(Sink):
    name = "tar"
    formats = FORMATS
    ordered = True
    columns = ("index", "seed", "file", "member")
    options: ClassVar[dict[str, Any]] = {"shard_size": 10000, "prefix": "images"}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        opts = {**cls.options, **options}
        size, prefix = opts["shard_size"], opts["prefix"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise GanDeployError("bad tar shard size", repr(size), expected="samples per tar shard, an integer >= 1")
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", prefix):
            raise GanDeployError("bad tar shard prefix", repr(prefix), expected="letters, digits, . _ - (a file name, no folder)")
        return opts

    @classmethod
    def shard_unit(cls, batch_size: int, options: dict[str, Any]) -> int:
        return cls.check_options(options)["shard_size"]  # a job shard holds whole tar shards (of --tar-shard-size samples)

    def __init__(self, out, layout: Layout, batch_size: int, options: dict[str, Any] | None = None):
        super().__init__(out, layout, batch_size, options)
        self.opts = self.check_options(self.opts)
        self.size, self.prefix = self.opts["shard_size"], self.opts["prefix"]
        self.complete: Bitset | None = None  # on resume: samples of shards already complete (skipped)
        self.files: FolderWriter | None = None
        self.current: tuple[int, int, str | None] | None = None  # (shard, fd, temporary name) being written
        self.next_index = 0
        self.written = 0
        self.shards_written = 0  # by this run (a resumed run skips the complete ones)

    def tar_name(self, t: int) -> str:
        return f"{self.prefix}-{t:06d}.tar"

    def shard_range(self, t: int) -> tuple[int, int]:
        return max(t * self.size, self.layout.start), min((t + 1) * self.size, self.layout.stop)

    def owns(self, name: str) -> bool:
        m = re.fullmatch(re.escape(self.prefix) + r"-(\d{6,})\.tar", name)
        return bool(m) and self.layout.start // self.size <= int(m.group(1)) <= (self.layout.stop - 1) // self.size

    def prepare(self, resume: bool) -> None:
        self.files = FolderWriter(self.out)

    def verify(self, done: Bitset) -> None:
        """The journal lists a shard's samples once the shard is complete: it must be there, whole blocks."""
        lay = self.layout
        for t in range(lay.start // self.size, (lay.stop - 1) // self.size + 1):
            lo, hi = self.shard_range(t)
            st = file_stat(self.out / self.tar_name(t))
            ok = (done.all(lo, hi) and st is not None and st.st_mode & 0o170000 == 0o100000
                  and st.st_size >= 2 * BLOCK and st.st_size % BLOCK == 0)
            if not ok:
                done.set_range(lo, hi, False)
        self.complete = done

    def bytes_needed(self, sample: np.ndarray) -> int:
        """Two members per sample (the image and its JSON), each a header block and its data padded to a block;
        the shards themselves are files, so the per-file rounding is one block per shard, not per image."""
        lay = self.layout
        files = encode_batch(np.ascontiguousarray(sample), lay.fmt)
        meta = len(b'{"index":%d,"seed":%d}' % (max(lay.stop - 1, 0), lay.seed))
        per_sample = sum(2 * BLOCK + len(f) + (-len(f) % BLOCK) + meta + (-meta % BLOCK) for f in files) / len(files)
        return int(per_sample * (lay.stop - lay.start))

    def worker(self) -> SinkWorker:
        return TarWorker(self.layout)

    def commit(self, task: Task, result: Result) -> list[tuple[int, int]]:
        assert self.files is not None, "prepare() first"
        blob, offsets = result.payload
        view = memoryview(blob)
        finished = []
        lo, hi = task.lo, result.done
        for t in range(lo // self.size, (hi - 1) // self.size + 1) if hi > lo else ():
            s0, s1 = self.shard_range(t)
            a, b = max(lo, s0), min(hi, s1)
            if self.complete is not None and self.complete.all(s0, s1):
                continue  # complete before this run (resume): its samples were only computed for their batch
            if self.current is None or self.current[0] != t:
                if a != s0:
                    raise RuntimeError(f"tar shard {t}: samples from {a}, expected from {s0} (commits out of order)")
                self._discard()
                fd, tmp = self.files.open_new()
                self.current, self.next_index, self.written = (t, fd, tmp), s0, 0
            if a != self.next_index:
                raise RuntimeError(f"tar shard {t}: sample {a} after {self.next_index - 1} (commits out of order)")
            chunk = view[offsets[a - lo]:offsets[b - lo]]
            write_all(self.current[1], chunk)
            self.written += len(chunk)
            self.next_index = b
            if b == s1:
                self._finish_shard()
                finished.append((s0, s1))
        return finished

    def _finish_shard(self) -> None:
        assert self.current is not None and self.files is not None
        t, fd, tmp = self.current
        write_all(fd, end_of_archive(self.written))
        self.files.commit(fd, tmp, self.tar_name(t), sync=True)  # durable before the journal lists it
        os.close(fd)
        self.current = None
        self.shards_written += 1

    def _discard(self) -> None:
        if self.current is not None and self.files is not None:
            _, fd, tmp = self.current
            self.current = None
            self.files.discard(fd, tmp)

    def close(self, complete: bool) -> None:
        self._discard()  # a shard still open is partial: never linked in
        if self.files is not None:
            self.files.close()
            self.files = None

    def rows(self, lo: int, hi: int) -> str:
        seed, fmt, w, size = self.layout.seed, self.layout.fmt, self.layout.width, self.size
        return "".join([f"{i},{seed},{self.tar_name(i // size)},{i:0{w}d}.{fmt}\n" for i in range(lo, hi)])

    def read(self, indices: list[int]) -> np.ndarray:
        fmt = self.layout.fmt
        by_tar: dict[int, list[int]] = {}
        for i in indices:
            by_tar.setdefault(i // self.size, []).append(i)
        images = {}
        for t, idx in by_tar.items():
            with tarfile.open(self.out / self.tar_name(t)) as tf:
                for i in idx:
                    f = tf.extractfile(f"{self.layout.key(i)}.{fmt}")
                    assert f is not None
                    images[i] = decode_bytes(f.read(), fmt)
        return np.stack([images[i] for i in indices])

    def describe(self, n_images: int) -> str:
        lay = self.layout
        return f"{n_images} {lay.fmt} samples in {self.shards_written} tar shard(s) of {self.size} to {self.out}/{self.prefix}-*.tar"

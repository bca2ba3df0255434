"""What a generate run leaves beside its images so it can be trusted and finished: the manifest, a journal
appended as images complete, and the run record (generate.json) that `--resume` checks against.

The manifest *is* the journal: manifest.csv starts as its header line (before the first batch, replacing
any older one), then the main process appends the rows of images only once they are complete on disk, one
write per finished batch (or tar shard), fsync'd every `sync_every` seconds after the sink's own data.
So whatever stops the run, kill -9 included, the file lists complete images only; a row cut short by a
power cut is ignored when read. At the end (finished, interrupted or failed) the rows are rewritten
sorted and without repeats, atomically: an uninterrupted run and an interrupted, resumed one leave the
same manifest, byte for byte.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import O_CLOEXEC, O_NOFOLLOW, FolderWriter, write_all
from gan_deploy.core.jsonio import field, is_int, is_number, read_document
from gan_deploy.generate.sinks.base import Bitset, Sink

MANIFEST = "manifest.csv"
RECORD = "generate.json"
RECORD_FORMAT, RECORD_VERSION = "gan-deploy-generate-run", 1


class Journal:
    def __init__(self, fd: int, path: Path, sync: Callable[[], None], sync_every: float):
        self.fd, self.path, self._sync_data, self.sync_every = fd, path, sync, sync_every
        self.last_sync = time.monotonic()

    @classmethod
    def create(cls, out: Path, columns: tuple[str, ...], sync: Callable[[], None], sync_every: float = 1.0) -> "Journal":
        """A new manifest with only its header, in place of any older one (never beside the new images)."""
        files = FolderWriter(out)
        try:
            files.write(MANIFEST, (",".join(columns) + "\n").encode(), sync=True)
        finally:
            files.close()
        return cls(os.open(out / MANIFEST, os.O_WRONLY | os.O_APPEND | O_NOFOLLOW | O_CLOEXEC), out / MANIFEST, sync, sync_every)

    @classmethod
    def reopen(cls, out: Path, sync: Callable[[], None], sync_every: float = 1.0) -> "Journal":
        """The interrupted run's journal, to append to; a last row cut short (a power cut) is cut off."""
        try:
            fd = os.open(out / MANIFEST, os.O_RDWR | os.O_APPEND | O_NOFOLLOW | O_CLOEXEC)
        except OSError as e:  # a folder, a symlink, unreadable: not the journal this run wrote
            raise GanDeployError("cannot reopen the manifest of the run to resume", f"{out / MANIFEST} ({e.strerror})",
                                 expected="the regular file manifest.csv the run wrote", hint="start the run again without resuming") from None
        size = os.fstat(fd).st_size
        tail = os.pread(fd, min(size, 4096), max(0, size - 4096))
        if tail and not tail.endswith(b"\n"):
            os.ftruncate(fd, size - (len(tail) - 1 - tail.rfind(b"\n")) if b"\n" in tail else size)
        return cls(fd, out / MANIFEST, sync, sync_every)

    def append(self, text: str) -> None:
        write_all(self.fd, text.encode())
        if time.monotonic() - self.last_sync >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        self._sync_data()  # the images first: the journal must never be durable before what it lists
        os.fsync(self.fd)
        self.last_sync = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self.fd)
                self.fd = -1


def read_journal(path: Path, columns: tuple[str, ...], done: Bitset, n: int | None = None) -> int:
    """Mark in `done` every index the journal lists (within done's range); returns the number of rows read.
    A row whose index is not an integer, or (given the run's `n`) not in [0, n), is one line naming it."""
    header = ",".join(columns)
    try:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise IsADirectoryError(21, "not a regular file")
        f = open(path, "rb")
    except OSError as e:
        raise GanDeployError("cannot read the manifest of the run to resume", f"{path} ({e.strerror})", hint="start the run again without resuming") from None
    rows = 0
    with f:
        first = f.readline().decode(errors="replace").rstrip("\n")
        if first != header:
            raise GanDeployError("not the manifest of this kind of run", f"{path}: header {first[:80]!r}", expected=repr(header),
                                 hint="start the run again without resuming")
        while True:
            lines = f.readlines(1 << 22)
            if not lines:
                break
            if not lines[-1].endswith(b"\n"):
                lines.pop()  # a row cut short: its image is redone
            try:
                idx = np.array([int(line.split(b",", 1)[0]) for line in lines], dtype=np.int64)
            except (ValueError, OverflowError):
                bad = next(line for line in lines if not _is_index(line.split(b",", 1)[0]))
                raise GanDeployError("damaged manifest", f"{path}: row {bad[:60].decode(errors='replace').rstrip()!r}",
                                     expected="rows index,seed,... with an integer index", hint="start the run again without resuming") from None
            out = (idx < 0) | (idx >= n) if n is not None else idx < 0
            if out.any():
                raise GanDeployError("damaged manifest", f"{path}: index {int(idx[out][0])}",
                                     expected=f"image indices 0 <= index < {n}" if n is not None else "image indices >= 0",
                                     hint="start the run again without resuming")
            rows += len(idx)
            done.set_indices(idx)
    return rows


def _is_index(text: bytes) -> bool:
    try:
        return -(1 << 63) <= int(text) < (1 << 63)
    except ValueError:
        return False


def write_manifest(out: Path, sink: Sink, done: Bitset, chunk: int = 65536) -> Path:
    """The final manifest: a row per complete image, sorted, atomically in place of the journal."""
    files = FolderWriter(out)
    try:
        fd, tmp = files.open_new()
        try:
            write_all(fd, (",".join(sink.columns) + "\n").encode())
            for lo, hi in done.runs():
                for a in range(lo, hi, chunk):
                    write_all(fd, sink.rows(a, min(a + chunk, hi)).encode())
            files.commit(fd, tmp, MANIFEST, sync=True)
        except BaseException:
            files.discard(fd, tmp)
            raise
        os.close(fd)
    finally:
        files.close()
    return out / MANIFEST


def write_record(out: Path, record: dict[str, Any]) -> None:
    files = FolderWriter(out)
    try:
        doc = {"format": RECORD_FORMAT, "format_version": RECORD_VERSION, **record}
        files.write(RECORD, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), sync=True)
    finally:
        files.close()


def read_record(out: str | Path) -> dict[str, Any]:
    """The run record of the generate run in `out` (what --resume continues), every field checked (type, range,
    choice) with one line naming the file and the field: a hand-edited record is refused, never a TypeError."""
    path = Path(out) / RECORD
    hint = "only a folder written by `gan-deploy generate` can be resumed; start the run again without --resume"
    d = read_document(path, RECORD_FORMAT, RECORD_VERSION, what="generate run record", hint=hint)
    check_record(d, path, hint)
    return d


def check_record(d: dict[str, Any], where: Path, hint: str) -> None:
    """Each field of a run record as Session.record writes it (see session.py)."""
    from gan_deploy.backends import BACKENDS
    from gan_deploy.backends.torch_common import TORCH_PRECISIONS
    from gan_deploy.core.images import FORMATS
    from gan_deploy.core.latents import MAX_SEED
    from gan_deploy.generate.device_jpeg import JPEG_ENCODERS
    from gan_deploy.generate.sinks import SINKS, sink_class

    what = "generate run record"

    def f(key: str, kind: str, check: Callable[[Any], bool] | None = None, expected: str | None = None, required: bool = True) -> Any:
        return field(d, key, where, what, kind=kind, check=check, expected=expected, hint=hint, required=required)

    def ints(v: list, k: int, low: int) -> bool:
        return len(v) == k and all(is_int(x) and x >= low for x in v)

    n = f("n", "int", lambda v: v >= 1, "an integer >= 1")
    f("seed", "int", lambda v: 0 <= v <= MAX_SEED, f"0 <= seed <= {MAX_SEED}")
    f("batch_size", "int", lambda v: v >= 1, "an integer >= 1")
    f("fmt", "str", lambda v: v in FORMATS, " | ".join(FORMATS))
    sink = f("sink", "str", lambda v: v in SINKS, " | ".join(SINKS))
    opts = f("sink_options", "dict", expected="an object")
    try:
        sink_class(sink).check_options(dict(opts))
    except GanDeployError as e:
        raise GanDeployError(f"{what} field is invalid", f"{where}: sink_options ({e.what}: {e.value})", expected=e.expected, hint=hint) from None
    f("shard", "list", lambda v: ints(v, 2, 0) and v[0] < v[1], "[K, N] with 0 <= K < N")
    start = f("start", "int", lambda v: 0 <= v <= n, f"0 <= start <= n ({n})")
    f("stop", "int", lambda v: start <= v <= n, f"start ({start}) <= stop <= n ({n})")
    f("image", "list", lambda v: ints(v, 3, 1), "[height, width, channels], integers >= 1")
    f("latent_dim", "int", lambda v: v >= 1, "an integer >= 1")
    f("value_range", "list", lambda v: len(v) == 2 and all(is_number(x) for x in v) and v[0] < v[1], "[lo, hi] with lo < hi")
    f("backend", "str", lambda v: v in BACKENDS or v == "auto", " | ".join((*BACKENDS, "auto")))
    f("device", "str", lambda v: v in ("cpu", "cuda"), "cpu | cuda")
    f("precision", "str", lambda v: v in TORCH_PRECISIONS, " | ".join(TORCH_PRECISIONS))
    f("jpeg_encoder", "str", lambda v: v in JPEG_ENCODERS, " | ".join(JPEG_ENCODERS), required=False)
    model = f("model", "dict", expected='an object {"kind", "path", "sha256"}', required=False)
    if model is not None:
        where_model = f"{where}: model"
        field(model, "kind", where_model, what, kind="str", check=lambda v: v in ("checkpoint", "onnx", "engine"),
              expected="checkpoint | onnx | engine", hint=hint)
        field(model, "path", where_model, what, kind="str", check=lambda v: 0 < len(v) < 4096 and "\0" not in v,
              expected="a file path", hint=hint)
        field(model, "sha256", where_model, what, kind="str", check=lambda v: re.fullmatch(r"[0-9a-f]{64}", v) is not None,
              expected="64 hex digits", hint=hint)

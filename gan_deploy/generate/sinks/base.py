"""The one interface every output of `generate` implements: a sink turns batches of uint8 pixels into files.

A sink has two halves:

* `Sink`, in the main process: creates or reopens its outputs before the first batch, says which file names it
  owns (so no output can be one of the command's inputs), `commit`s each finished batch (returns the index
  ranges that are now complete, which the journal then lists), checks what an interrupted run left
  (`verify`), and reads images back (`read`: the sample grid, the tests).
* `SinkWorker`, picklable, in each encoder process or thread (or Ray worker): `handle(task, pixels)` encodes
  and, for sinks that write in parallel, writes. An `ordered` sink's worker only encodes and returns the
  bytes; the main process then appends them in index order (a tar file is one sequential stream).

Image i is written from the batch the one-process run computes for it ([b0, b0 + b), multiples of the
batch size from index 0), so every sink's bytes depend only on (seed, i), whatever the sharding or executor.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.images import encode_batch


@dataclass(frozen=True)
class Layout:
    """What every sink knows of the run: images [start, stop) of n, under seed, each [H, W, C] uint8 in format fmt."""

    n: int
    start: int
    stop: int
    seed: int
    fmt: str
    shape: tuple[int, int, int]  # H, W, C

    @property
    def width(self) -> int:
        """Digits of an image's key (file name stem): 6, or more for n > 1,000,000."""
        return max(6, len(str(self.n - 1)))

    def key(self, i: int) -> str:
        return f"{i:0{self.width}d}"

    @property
    def image_bytes(self) -> int:
        h, w, c = self.shape
        return h * w * c


@dataclass(frozen=True)
class Task:
    """Compute batch [b0, b0 + b) (exactly the one-process run's batch) and deliver images [lo, hi) of it."""

    seq: int
    b0: int
    b: int
    lo: int
    hi: int


@dataclass
class Result:
    """What a worker did with a task: images [task.lo, done) are complete (or encoded, for an ordered sink, in
    `payload`); `error` is one line when it stopped early (`error_kind` "io": disk full, a folder in the way...)."""

    seq: int
    done: int
    payload: Any = None
    error: str | None = None
    error_kind: str = "io"
    seconds: float = 0.0
    skipped: bool = False


@dataclass(frozen=True)
class Encoded:
    """A batch whose files were already encoded (JPEG on the GPU, in the main process): the files' bytes of images
    [b0, b0 + len(blobs)), handed to a SinkWorker instead of pixels, so the worker only writes."""

    blobs: list[bytes]


def batch_files(task: Task, pixels: "np.ndarray | Encoded", fmt: str) -> list[bytes]:
    """The files' bytes of images [task.lo, task.hi) of a batch: encoded here, or already (`Encoded`)."""
    lo, hi = task.lo - task.b0, task.hi - task.b0
    if isinstance(pixels, Encoded):
        return pixels.blobs[lo:hi]
    return encode_batch(pixels[lo:hi], fmt)


class SinkWorker(ABC):
    """The half of a sink that runs in an encoder process or thread. Built in the main process, pickled."""

    def open(self) -> None:
        """In the worker, before its first task (open folders and files here, not in __init__)."""

    @abstractmethod
    def handle(self, task: Task, pixels: "np.ndarray | Encoded") -> Result:
        """pixels: uint8 [task.b, H, W, C], the whole batch (the worker reads [lo - b0, hi - b0)), or the batch's files
        already `Encoded` (sinks that store files: use `batch_files`). Must not keep it."""

    def close(self) -> None:
        pass


def io_error(e: OSError, where: str) -> str:
    return f"{where} ({e.strerror or type(e).__name__})"


FS_BLOCK = 4096  # the allocation unit of common Linux filesystems (ext4, xfs): a file takes whole blocks


class Sink(ABC):
    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]  # image formats it can store; the first is its default
    ordered: ClassVar[bool] = False  # True: workers return bytes and commit() sees batches in task order
    columns: ClassVar[tuple[str, ...]] = ("index", "seed", "file")  # the manifest's columns
    options: ClassVar[dict[str, Any]] = {}  # sink-specific options and their defaults

    def __init__(self, out: Path, layout: Layout, batch_size: int, options: dict[str, Any] | None = None):
        self.out, self.layout, self.batch_size = Path(out), layout, batch_size
        unknown = set(options or {}) - set(self.options)
        if unknown:
            raise GanDeployError(f"unknown option for the {self.name} sink", ", ".join(sorted(unknown)),
                                 expected=", ".join(self.options) or "none")
        self.opts = {**self.options, **(options or {})}

    # -- before the first batch ------------------------------------------------------------------------------
    @classmethod
    def shard_unit(cls, batch_size: int, options: dict[str, Any]) -> int:
        """Job shards (--shard K/N) are cut at multiples of this many images: one image by default (never the batch
        size, so shard K holds the same indices whatever the batch size)."""
        return 1

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {**cls.options, **options}

    def record(self) -> dict[str, Any]:
        """The sink's part of the run record (generate.json): what a resumed run must match."""
        return dict(self.opts)

    @abstractmethod
    def owns(self, name: str) -> bool:
        """Whether `name` (a file name in the output folder) is one this run may write."""

    def prepare(self, resume: bool) -> None:
        """Create (or on resume reopen and check) the outputs that exist from the start. Nothing before this."""

    def verify(self, done: "Bitset") -> None:
        """On resume: clear from `done` what the journal lists but is missing or damaged on disk."""

    @abstractmethod
    def worker(self) -> SinkWorker: ...

    # -- while running (main process, one thread) ------------------------------------------------------------
    def commit(self, task: Task, result: Result) -> list[tuple[int, int]]:
        """Index ranges [lo, hi) now complete on disk (the journal lists them next)."""
        return [(task.lo, result.done)] if result.done > task.lo else []

    def sync(self) -> None:
        """Make what is committed durable before the journal that lists it is (called at journal syncs)."""

    @abstractmethod
    def rows(self, lo: int, hi: int) -> str:
        """Manifest rows (CSV, one line each) of images [lo, hi)."""

    def close(self, complete: bool) -> None:
        """After the last commit: finish (complete) or discard what is partial (interrupted, failed)."""

    def discard(self, lo: int, hi: int, done: "Bitset") -> None:
        """Images [lo, hi) of a task whose worker died (or was stopped) before it reported: remove what it may
        have finished but is not in `done`, so the outputs hold exactly what the manifest lists."""

    # -- afterwards ------------------------------------------------------------------------------------------
    @abstractmethod
    def read(self, indices: list[int]) -> np.ndarray:
        """Images at these indices, uint8 [k, H, W, C], read back from the outputs."""

    def bytes_needed(self, sample: np.ndarray) -> int:
        """Disk bytes the run's images [start, stop) will take, estimated from `sample` (uint8 [k, H, W, C], the
        run's first images, encoded as the workers will): one file per image, each rounded up to a filesystem
        block (a 1 KB PNG takes 4 KiB on disk)."""
        files = encode_batch(np.ascontiguousarray(sample), self.layout.fmt)
        per_image = sum(-(-len(f) // FS_BLOCK) * FS_BLOCK for f in files) / len(files)
        return int(per_image * (self.layout.stop - self.layout.start))

    def describe(self, n_images: int) -> str:
        return f"{n_images} {self.layout.fmt} images to {self.out}"


PAGE_BITS = 1 << 23  # images per page of the bitset: 1 MiB each, allocated when the first image in it completes


@dataclass
class Bitset:
    """One bit per image of [start, stop): which are complete. Paged: a page of PAGE_BITS images is allocated
    when the first of them completes, so the memory grows with what is done, not with what was asked
    (`-n 10000000000000` allocates nothing up front; a run of n images holds at most n/8 bytes)."""

    start: int
    stop: int
    page_bits: int = PAGE_BITS  # a multiple of 8 (tests use tiny pages to cross page edges)
    _pages: dict[int, np.ndarray] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        assert self.page_bits > 0 and self.page_bits % 8 == 0, self.page_bits

    @property
    def allocated_bytes(self) -> int:
        return len(self._pages) * (self.page_bits // 8)

    def _page(self, p: int) -> np.ndarray:
        page = self._pages.get(p)
        if page is None:
            page = self._pages[p] = np.zeros(self.page_bits // 8, dtype=np.uint8)
        return page

    def _segments(self, lo: int, hi: int):
        """[lo, hi) (absolute, clipped) cut at page edges: (page number, offset in page, a, b)."""
        lo, hi = max(lo, self.start), min(hi, self.stop)
        a = lo
        while a < hi:
            k = a - self.start
            p, off = divmod(k, self.page_bits)
            b = min(hi, a + self.page_bits - off)
            yield p, off, a, b
            a = b

    def _visits(self, lo: int, hi: int):
        """[lo, hi) (absolute, clipped) as the allocated pages' parts, (page, offset in page, a, b), and between them
        the spans no page covers, (None, 0, a, b): all False. As many steps as pages are allocated, not as pages fit
        in the range: walking every page of `-n 10**15` (120 million pages) never ended."""
        lo, hi = max(lo, self.start), min(hi, self.stop)
        a = lo
        for p in sorted(self._pages):
            p_lo = self.start + p * self.page_bits
            p_hi = p_lo + self.page_bits
            if p_hi <= a:
                continue
            if p_lo >= hi:
                break
            if p_lo > a:
                yield None, 0, a, p_lo
                a = p_lo
            b = min(hi, p_hi)
            yield self._pages[p], a - p_lo, a, b
            a = b
        if a < hi:
            yield None, 0, a, hi

    def set_range(self, lo: int, hi: int, value: bool = True) -> None:
        if not value:  # only pages that exist hold a True bit
            for page, off, a, b in self._visits(lo, hi):
                if page is not None:
                    _set_bits(page, off, off + (b - a), False)
            return
        for p, off, a, b in self._segments(lo, hi):
            _set_bits(self._page(p), off, off + (b - a), value)

    def set_indices(self, idx: np.ndarray) -> None:
        """Mark these image indices complete (those outside [start, stop) are ignored)."""
        k = idx[(idx >= self.start) & (idx < self.stop)] - self.start
        for p in np.unique(k // self.page_bits).tolist():
            kk = k[k // self.page_bits == p] % self.page_bits
            np.bitwise_or.at(self._page(p), kk // 8, (1 << (kk % 8)).astype(np.uint8))

    def __contains__(self, i: int) -> bool:
        k = i - self.start
        if not 0 <= k < self.stop - self.start:
            return False
        page = self._pages.get(k // self.page_bits)
        k %= self.page_bits
        return page is not None and bool(page[k // 8] >> (k % 8) & 1)

    def count(self, lo: int | None = None, hi: int | None = None) -> int:
        if lo is None and hi is None:
            return sum(int(np.unpackbits(page).sum()) for page in self._pages.values())
        return sum(h - l_ for l_, h in self.runs(lo, hi))

    def all(self, lo: int, hi: int) -> bool:
        return self.count(lo, hi) == max(0, min(hi, self.stop) - max(lo, self.start))

    def runs(self, lo: int | None = None, hi: int | None = None, value: bool = True):
        """Maximal ranges [a, b) within [lo, hi) whose bits are all `value`, in order (a page at a time: flat memory)."""
        lo = self.start if lo is None else lo
        hi = self.stop if hi is None else hi
        open_at = None
        for page, off, c0, c1 in self._visits(lo, hi):
            if page is None:  # no page here: no image of this span is complete
                pairs = [(c0, c1)] if not value else []
            else:
                bits = np.unpackbits(page[off // 8:(off + (c1 - c0) + 7) // 8], bitorder="little")[off % 8:off % 8 + (c1 - c0)].astype(bool)
                if not value:
                    bits = ~bits
                d = np.diff(bits.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
                pairs = list(zip((np.flatnonzero(d == 1) + c0).tolist(), (np.flatnonzero(d == -1) + c0).tolist()))
            if open_at is not None:  # a run that reached the end of the previous segment
                if pairs and pairs[0][0] == c0:
                    pairs[0] = (open_at, pairs[0][1])
                else:
                    yield open_at, c0
                open_at = None
            if pairs and pairs[-1][1] == c1:
                open_at = pairs.pop()[0]
            yield from pairs
        if open_at is not None:
            yield open_at, min(hi, self.stop)


def _set_bits(bits: np.ndarray, lo: int, hi: int, value: bool) -> None:
    """Bits [lo, hi) of a byte array (bit k of byte j is item 8j + k) set to `value`."""
    if hi <= lo:
        return
    a, b = lo // 8, (hi - 1) // 8
    head = (0xFF << (lo % 8)) & 0xFF
    tail = 0xFF >> (7 - (hi - 1) % 8)
    edges = [(a, head & tail)] if a == b else [(a, head), (b, tail)]
    for j, mask in edges:
        old = int(bits[j])
        bits[j] = (old | mask) if value else (old & ~mask & 0xFF)
    if b > a + 1:
        bits[a + 1:b] = 0xFF if value else 0


def file_stat(path: str | os.PathLike) -> os.stat_result | None:
    try:
        return os.stat(path, follow_symlinks=False)
    except OSError:
        return None

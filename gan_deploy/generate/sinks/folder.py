"""`--sink folder` (the default): one image file per index, {key}.png|jpg|npy, written by the workers in parallel."""
from __future__ import annotations

import os
import re
import time

import numpy as np

from gan_deploy.core.fileio import FolderWriter, fsync_dir
from gan_deploy.core.images import FORMATS, decode
from gan_deploy.generate.sinks.base import Bitset, Encoded, Layout, Result, Sink, SinkWorker, Task, batch_files, file_stat, io_error


class FolderWorker(SinkWorker):
    def __init__(self, out: str, layout: Layout):
        self.out, self.layout = out, layout
        self.files: FolderWriter | None = None

    def open(self) -> None:
        self.files = FolderWriter(self.out)

    def handle(self, task: Task, pixels: "np.ndarray | Encoded") -> Result:
        t0 = time.perf_counter()
        assert self.files is not None, "open() first"
        lay, fmt, write = self.layout, self.layout.fmt, self.files.write
        blobs = batch_files(task, pixels, fmt)
        for k, data in enumerate(blobs):
            name = f"{lay.key(task.lo + k)}.{fmt}"
            try:
                write(name, data)
            except OSError as e:
                return Result(task.seq, task.lo + k, error=io_error(e, os.path.join(self.out, name)),
                              seconds=time.perf_counter() - t0)
        return Result(task.seq, task.hi, seconds=time.perf_counter() - t0)

    def close(self) -> None:
        if self.files is not None:
            self.files.close()


class FolderSink(Sink):
    name = "folder"
    formats = FORMATS

    def file(self, i: int) -> str:
        return f"{self.layout.key(i)}.{self.layout.fmt}"

    def owns(self, name: str) -> bool:
        m = re.fullmatch(r"(\d+)\.(\w+)", name)
        return bool(m) and m.group(2) == self.layout.fmt and len(m.group(1)) == self.layout.width \
            and self.layout.start <= int(m.group(1)) < self.layout.stop

    def worker(self) -> SinkWorker:
        return FolderWorker(os.fspath(self.out), self.layout)

    def sync(self) -> None:
        fsync_dir(self.out)  # the links and renames so far, before the journal that lists them (file data: not fsync'd)

    def rows(self, lo: int, hi: int) -> str:
        seed, fmt, w = self.layout.seed, self.layout.fmt, self.layout.width
        return "".join([f"{i},{seed},{i:0{w}d}.{fmt}\n" for i in range(lo, hi)])

    def verify(self, done: Bitset) -> None:
        """A listed file must be there, a regular file, not empty (a power cut can leave an empty one)."""
        folder = os.fspath(self.out) + os.sep
        for lo, hi in list(done.runs()):
            for i in range(lo, hi):
                st = file_stat(folder + self.file(i))
                if st is None or not (st.st_mode & 0o170000 == 0o100000) or st.st_size == 0:
                    done.set_range(i, i + 1, False)

    def discard(self, lo: int, hi: int, done: Bitset) -> None:
        folder = os.fspath(self.out) + os.sep
        for a, b in list(done.runs(lo, hi, value=False)):
            for i in range(a, b):
                try:
                    os.unlink(folder + self.file(i))
                except OSError:
                    pass

    def read(self, indices: list[int]) -> np.ndarray:
        return np.stack([decode(self.out / self.file(i)) for i in indices])

    def describe(self, n_images: int) -> str:
        return f"{n_images} {self.layout.fmt} files to {self.out}"


__all__ = ["FolderSink", "FolderWorker"]

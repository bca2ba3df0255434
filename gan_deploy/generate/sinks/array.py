"""`--sink array`: one .npy file, uint8 [stop - start, H, W, C] (every image of the run, or of this job shard),
readable with `np.load(path, mmap_mode="r")` while or after it is written.

The file is created before the first batch at its full size (header, then space reserved with
posix_fallocate, so a full disk is found before any work) and linked in as images.npy; workers pwrite each
batch at its rows. The manifest lists the rows that are complete (an interrupted array has zeros in the
others); `--resume` reopens the file and writes the missing rows, so the finished file is byte-identical to
one written without interruption. With job shards, shard k's array holds its own rows: the shards' arrays,
concatenated in order, are the one-process array row for row.
"""
from __future__ import annotations

import errno
import math
import os
import time

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import O_CLOEXEC, O_NOFOLLOW, FolderWriter, pwrite_all, write_all
from gan_deploy.core.images import npy_header
from gan_deploy.generate.sinks.base import Encoded, Layout, Result, Sink, SinkWorker, Task, io_error

FILE = "images.npy"


class ArrayWorker(SinkWorker):
    def __init__(self, path: str, layout: Layout, offset: int, inode: tuple[int, int]):
        self.path, self.layout, self.offset, self.inode = path, layout, offset, inode
        self.fd = -1

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
        st = os.fstat(self.fd)
        if (st.st_dev, st.st_ino) != self.inode:  # replaced since the main process created it
            os.close(self.fd)
            self.fd = -1
            raise GanDeployError("the array file was replaced while generate ran", self.path, hint="run again")

    def handle(self, task: Task, pixels: "np.ndarray | Encoded") -> Result:
        t0 = time.perf_counter()
        assert not isinstance(pixels, Encoded), "the array stores pixels (device_jpeg.check_jpeg_encoder refuses this)"
        rows = pixels[task.lo - task.b0:task.hi - task.b0]
        try:
            pwrite_all(self.fd, np.ascontiguousarray(rows), self.offset + (task.lo - self.layout.start) * self.layout.image_bytes)
        except OSError as e:
            return Result(task.seq, task.lo, error=io_error(e, self.path), seconds=time.perf_counter() - t0)
        return Result(task.seq, task.hi, seconds=time.perf_counter() - t0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ArraySink(Sink):
    name = "array"
    formats = ("npy",)
    columns = ("index", "seed", "file", "row")

    def __init__(self, out, layout: Layout, batch_size: int, options=None):
        super().__init__(out, layout, batch_size, options)
        h, w, c = layout.shape
        self.shape = (layout.stop - layout.start, h, w, c)
        self.header = npy_header(self.shape)
        self.size = len(self.header) + math.prod(self.shape)  # Python ints: numpy's int64 overflowed at -n 2**63-1
        self.path = self.out / FILE
        self.fd = -1
        self.inode = (0, 0)

    def bytes_needed(self, sample: np.ndarray) -> int:
        """Exact: the .npy header and every pixel."""
        return self.size

    def owns(self, name: str) -> bool:
        return name == FILE

    def prepare(self, resume: bool) -> None:
        if resume:
            self._reopen()
            return
        files = FolderWriter(self.out)
        try:
            fd, tmp = files.open_new()
            try:
                write_all(fd, self.header)
                if self.size >= 1 << 63:  # past any file size (off_t): ftruncate would raise OverflowError
                    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
                os.ftruncate(fd, self.size)
                try:
                    os.posix_fallocate(fd, 0, self.size)  # a full disk (or a file size limit) shows here, before the first batch
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                files.commit(fd, tmp, FILE)
            except BaseException:
                files.discard(fd, tmp)
                raise
        except OSError as e:
            from gan_deploy.core.hardware import gib

            too_big = e.errno in (errno.ENOSPC, errno.EFBIG, errno.EINVAL)  # EINVAL: past the filesystem's largest file
            raise GanDeployError("cannot create the array", f"{self.path}: {gib(self.size)} ({e.strerror or e})",
                                 expected="an array file this filesystem can hold" if too_big else "a writable output folder",
                                 hint="free space, or write fewer images (or a job shard) per output" if too_big
                                 else "choose another output folder") from None
        finally:
            files.close()
        self.fd = fd
        st = os.fstat(fd)
        self.inode = (st.st_dev, st.st_ino)

    def _reopen(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        except OSError as e:
            raise GanDeployError("cannot reopen the array to resume", io_error(e, str(self.path)), hint="start the run again without resuming") from None
        st = os.fstat(fd)
        head = os.pread(fd, len(self.header), 0)
        if head != self.header or st.st_size != self.size:
            os.close(fd)
            raise GanDeployError("the array does not match the interrupted run", str(self.path),
                                 expected=f"uint8 {list(self.shape)}, {self.size} bytes", hint="start the run again without resuming")
        self.fd, self.inode = fd, (st.st_dev, st.st_ino)

    def worker(self) -> SinkWorker:
        return ArrayWorker(os.fspath(self.path), self.layout, len(self.header), self.inode)

    def sync(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)  # every worker's rows: fsync flushes the file, whichever descriptor wrote them

    def close(self, complete: bool) -> None:
        if self.fd >= 0:
            try:
                os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1

    def rows(self, lo: int, hi: int) -> str:
        seed, start = self.layout.seed, self.layout.start
        return "".join([f"{i},{seed},{FILE},{i - start}\n" for i in range(lo, hi)])

    def read(self, indices: list[int]) -> np.ndarray:
        a = np.load(self.path, mmap_mode="r")
        return np.array(a[[i - self.layout.start for i in indices]])

    def describe(self, n_images: int) -> str:
        return f"{n_images} images into {self.path} (uint8 {list(self.shape)})"

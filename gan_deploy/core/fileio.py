"""Atomic writes and hashing: nothing a command writes is ever left half-written."""
from __future__ import annotations

import errno
import hashlib
import os
import secrets
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TMP_PREFIX = ".gan-deploy-tmp-"


def current_umask() -> int:
    """The process's umask: `os` has no getter, so it is set and put back at once."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a finished artifact gets the permissions any new file would get
_FILE_MODE = 0o666 & ~current_umask()


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block finishes."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, dest)
    finally:
        # BaseException too (Ctrl-C): the temporary file must not outlive an interrupted write
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode())


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- whole files into one folder, complete or absent, never through a planted name ---------------------------------
# `atomic_path` above is for a handful of files; `FolderWriter` is for millions (generate's hot loop): raw os calls on a
# folder descriptor, no pathlib, and on Linux an anonymous O_TMPFILE inode linked in when complete (no name at all
# while it is written, nothing left behind by kill -9).

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
EXCL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC


def temp_name(suffix: str = "") -> str:
    """An unpredictable temporary file name (64 random bits) under TMP_PREFIX, so `sweep_temp_files` finds it."""
    return f"{TMP_PREFIX}{secrets.token_hex(8)}{suffix}"


def open_dir(folder: str | os.PathLike) -> int:
    """A descriptor of `folder` for the *_dir_fd calls: names resolve inside it even if the path is swapped later."""
    return os.open(folder, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)


def create_temp(dir_fd: int, suffix: str = "", mode: int = 0o666) -> tuple[int, str]:
    """(fd, name) of a new empty file in the folder `dir_fd`: an unpredictable name, created exclusively (O_EXCL) and
    never through a symlink (O_NOFOLLOW; with O_EXCL a planted symlink, even a dangling one, is refused)."""
    for _ in range(16):
        name = temp_name(suffix)
        try:
            return os.open(name, EXCL_FLAGS, mode, dir_fd=dir_fd), name
        except FileExistsError:  # 64 random bits: only a planted name gets here
            continue
    raise FileExistsError(errno.EEXIST, "could not create a temporary file", TMP_PREFIX + "*")


def write_all(fd: int, data: Any) -> None:
    """os.write until every byte of `data` (bytes, memoryview or a C-contiguous array) is written."""
    view = memoryview(data).cast("B")
    while view:
        k = os.write(fd, view)
        view = view[k:]


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        k = os.pwrite(fd, view, offset)
        view, offset = view[k:], offset + k


class FolderWriter:
    """Writes whole files into one folder. A file appears under its name complete or not at all: its bytes go
    to an anonymous O_TMPFILE inode (Linux) that is linked in when written, else to an exclusively created,
    unpredictably named temporary file renamed onto the name. An existing file of that name is replaced
    (rename replaces a symlink itself and never writes through it); a folder in the way is an error.
    One per thread or process."""

    _TMPFILE_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT)

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        self.dir_fd = open_dir(folder)
        self.tmpfile = sys.platform.startswith("linux") and hasattr(os, "O_TMPFILE")

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def write(self, name: str, data: Any, *, sync: bool = False) -> None:
        fd, tmp = self.open_new()
        try:
            write_all(fd, data)
            self.commit(fd, tmp, name, sync=sync)
        except BaseException:
            self.discard(fd, tmp)
            raise
        os.close(fd)

    def open_new(self) -> tuple[int, str | None]:
        """(fd, temporary name or None for an anonymous file) to write a file into; then `commit` or `discard`."""
        if self.tmpfile:
            try:
                return os.open(".", os.O_WRONLY | os.O_TMPFILE | O_CLOEXEC, 0o666, dir_fd=self.dir_fd), None
            except OSError as e:
                if e.errno not in self._TMPFILE_UNSUPPORTED:
                    raise
                self.tmpfile = False  # this filesystem (or kernel) has no O_TMPFILE
        return create_temp(self.dir_fd)

    def commit(self, fd: int, tmp: str | None, name: str, *, sync: bool = False) -> None:
        """Give the written file `fd` its final name (the caller still closes fd)."""
        if sync:
            os.fsync(fd)
        if tmp is None:
            try:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=self.dir_fd, follow_symlinks=True)
                return
            except FileExistsError:  # an older file (or a symlink, or a folder) of that name: rename over it below
                tmp = self._link_temp(fd)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EPERM, errno.EXDEV):  # no /proc here
                    raise
                self.tmpfile = False
                tmp = self._link_temp(fd)
        try:
            os.rename(tmp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except BaseException:
            _unlink_quietly(tmp, self.dir_fd)
            raise

    def _link_temp(self, fd: int) -> str:
        """The anonymous file `fd` linked under a fresh temporary name (link, like O_EXCL, never replaces)."""
        for _ in range(16):
            tmp = temp_name()
            try:
                os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=self.dir_fd, follow_symlinks=True)
                return tmp
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "could not link a temporary file", TMP_PREFIX + "*")

    def discard(self, fd: int, tmp: str | None) -> None:
        os.close(fd)
        if tmp is not None:
            _unlink_quietly(tmp, self.dir_fd)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def sweep_temp_files(folder: str | os.PathLike) -> int:
    """Remove the temporary files a killed writer left in `folder` (only TMP_PREFIX names; a symlink is removed,
    never followed). Call it only while holding the folder's lock: a live writer's temporary files look the same."""
    n = 0
    with os.scandir(os.fspath(folder)) as it:
        for entry in it:
            if entry.name.startswith(TMP_PREFIX) and not entry.is_dir(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    n += 1
                except FileNotFoundError:
                    pass
    return n


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames and links in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = open_dir(folder)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

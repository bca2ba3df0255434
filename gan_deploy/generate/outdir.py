"""The output folder of a generate run: created or checked, locked against a second run, swept of what a killed
run left, and every path the run will write checked against the command's inputs before the first batch."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import O_CLOEXEC, O_NOFOLLOW, TMP_PREFIX, sweep_temp_files
from gan_deploy.core.outputs import check_replaceable
from gan_deploy.generate.journal import MANIFEST, RECORD
from gan_deploy.generate.sinks.base import Sink

LOCK = ".gan-deploy.lock"
OWN_FILES = (MANIFEST, RECORD, LOCK)  # what every run writes into its folder besides the sink's files


def make_out_dir(out: Path) -> None:
    """Refuse a file or an unwritable folder; create the folder (and its parents) when missing."""
    if out.is_symlink() and not out.exists():  # mkdir would say "File exists"; following it would write elsewhere
        raise GanDeployError("output path is a broken symlink", f"{out} -> {os.readlink(out)}", expected="a folder (new or empty)",
                             hint="remove the symlink, or choose another output folder")
    if out.exists() and not out.is_dir():
        raise GanDeployError("output path is a file", str(out), expected="a folder (new or empty)", hint="choose another output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GanDeployError("cannot create output folder", f"{out} ({e.strerror})", hint="choose a writable output folder") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise GanDeployError("output folder is not writable", str(out), hint="choose a writable output folder")


def check_empty(out: Path) -> None:
    with os.scandir(out) as it:
        for entry in it:
            if entry.name != LOCK and not entry.name.startswith(TMP_PREFIX):
                raise GanDeployError("output folder is not empty", str(out), expected="a new or empty folder",
                                     hint="pass --overwrite to write into it anyway (or --resume to finish an interrupted run), or choose another --out")


class OutputLock:
    """An exclusive flock on <out>/.gan-deploy.lock for the whole run: a second generate into the same folder is
    refused instead of interleaving with the first. The kernel releases it when the process dies (kill -9
    included), so a stale lock file never blocks; it is removed when the run ends."""

    def __init__(self, out: Path):
        self.out, self.path, self.fd = out, out / LOCK, -1

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            return self
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
            except OSError as e:
                raise GanDeployError("cannot create the lock file", f"{self.path} ({e.strerror})",
                                     hint="a symlink or folder of that name is in the way" if e.errno in (errno.ELOOP, errno.EISDIR) else None) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise GanDeployError("another generate is writing into this output folder", f"{self.out}"
                                         + (f" (pid {holder})" if holder else ""), expected="a folder no other run is writing into",
                                         hint="wait for it to finish, or choose another output folder") from None
                raise
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return self
            os.close(fd)
        raise GanDeployError("cannot lock the output folder", str(self.out), hint="run again")

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.unlink(self.path)  # while still holding it (see acquire)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def sweep(out: Path) -> int:
    """Temporary files a killed run left (only while holding the lock: a live run's look the same)."""
    return sweep_temp_files(out)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _stat(p: Path) -> os.stat_result | None:
    try:
        return os.stat(p)
    except OSError:
        return None


# the extra outputs check_paths accepts: label -> (the option that names it, what kind of file it writes)
REPORTS = {"the sample grid": ("--grid", "png"), "the JSON report": ("--json", "json")}


def check_paths(out: Path, sink: Sink, inputs: list[Path], extra: dict[str, Path | None]) -> None:
    """Before the first batch: no output the run writes (`extra`: the sample grid, the JSON report; the manifest,
    the run record, the sink's files) may be one of its `inputs` (model file, sidecar), and the extra outputs must
    be writable files that the run's own files would not overwrite."""
    out_real = os.path.realpath(out)
    ins = [(p, os.path.realpath(p), _stat(p)) for p in inputs]

    def clash(what: str, p: Path) -> None:
        real, st = os.path.realpath(p), _stat(p)
        for src, src_real, src_st in ins:
            if real == src_real or (st is not None and src_st is not None and _same(st, src_st)):
                raise GanDeployError(f"{what} would overwrite an input of this command", f"{p} is {src}", hint="choose another path")

    for name in OWN_FILES:
        clash(f"the run's {name}", out / name)
    for src, src_real, _ in ins:
        if os.path.dirname(src_real) == out_real and (sink.owns(os.path.basename(src_real)) or os.path.basename(src_real) in OWN_FILES):
            raise GanDeployError("the run would overwrite an input of this command", f"{src} is one of the files it writes into {out}",
                                 hint="choose another output folder")
    seen: dict[str, str] = {}
    for what, p in extra.items():
        if p is None:
            continue
        p = Path(p)
        clash(what, p)
        real = os.path.realpath(p)
        if real in seen:
            raise GanDeployError(f"{what} and {seen[real]} are the same file", str(p), hint="give them different paths")
        seen[real] = what
        name = os.path.basename(real)
        if os.path.dirname(real) == out_real and (sink.owns(name) or name in OWN_FILES):
            raise GanDeployError(f"{what} would be overwritten by the run's own files", str(p), hint="choose another name")
        if p.is_dir():
            raise GanDeployError(f"{what} is a folder", str(p), expected="a file path", hint="give a file name")
        option, kind = REPORTS[what]
        check_replaceable(p, kind, option=option)
        parent = Path(os.path.dirname(os.path.abspath(p)))
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise GanDeployError(f"cannot write {what}", str(p), expected="a path in a writable folder", hint="choose another path")

"""Bulk generation: seed-derived latents -> backend -> image files, with writing overlapped with inference.

Image i depends only on (seed, i). Batches are aligned to multiples of the batch size from index 0, so a
shard (`shard=(k, n)`) computes exactly the batches the unsharded run would and writes the same bytes.
"""
from __future__ import annotations

import csv
import io
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import TMP_PREFIX, atomic_write_text
from gan_deploy.core.images import FORMATS, encode, save_grid
from gan_deploy.core.latents import MAX_SEED, latents_range
from gan_deploy.core.timing import Stopwatch

MANIFEST = "manifest.csv"


@dataclass
class GenerateReport:
    out: Path
    backend: str
    backend_detail: str
    n_requested: int
    n_written: int
    first_index: int
    batch_size: int
    seed: int
    fmt: str
    seconds_total: float
    seconds_inference: float  # sum over batches of backend.infer() (the main thread's share)
    seconds_writing: float  # sum over writer threads of encode + write + rename
    writers: int
    interrupted: bool = False
    grid: Path | None = None
    manifest: Path | None = None
    compare: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.n_written / self.seconds_total if self.seconds_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(out=str(self.out), grid=str(self.grid) if self.grid else None,
                 manifest=str(self.manifest) if self.manifest else None, images_per_s=self.images_per_s)
        return d

    def summary(self) -> str:
        inf_rate = self.n_written / self.seconds_inference if self.seconds_inference else float("inf")
        write_rate = self.n_written * self.writers / self.seconds_writing if self.seconds_writing else float("inf")
        return (f"wrote {self.n_written} {self.fmt} files to {self.out} with {self.backend_detail} in {self.seconds_total:.2f} s "
                f"({self.images_per_s:,.0f} images/s end to end; inference alone {inf_rate:,.0f} images/s, "
                f"{self.writers} writer thread(s) {write_rate:,.0f} images/s)")


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        k, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise GanDeployError("bad --shard", repr(text), expected="K/N with 0 <= K < N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise GanDeployError("bad --shard", repr(text), expected="K/N with 0 <= K < N, e.g. 0/4")
    return (k, n)


def shard_indices(n: int, batch_size: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[start, stop) of this shard's images: whole batches, so shards compute what one run computes."""
    k, parts = shard
    n_batches = -(-n // batch_size)
    b0, b1 = k * n_batches // parts, (k + 1) * n_batches // parts
    return min(b0 * batch_size, n), min(b1 * batch_size, n)


def file_name(i: int, n: int, fmt: str) -> str:
    return f"{i:0{max(6, len(str(n - 1)))}d}.{fmt}"


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, an unwritable folder, or a non-empty one (unless overwrite); sweep stale temp files."""
    if out.exists() and not out.is_dir():
        raise GanDeployError("output path is a file", str(out), expected="a folder (new or empty)", hint="choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GanDeployError("cannot create output folder", f"{out} ({e.strerror})", hint="choose a writable --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise GanDeployError("output folder is not writable", str(out), hint="choose a writable --out")
    for stale in out.glob(TMP_PREFIX + "*"):  # left by a killed run (kill -9); never a finished file
        stale.unlink(missing_ok=True)
    if not overwrite and any(out.iterdir()):
        raise GanDeployError("output folder is not empty", str(out), expected="a new or empty folder", hint="pass --overwrite to write into it anyway, or choose another --out")


class _Writer:
    """Encodes and writes each image under a temporary name, then renames it: a file either exists
    complete or not at all, whatever interrupts the run."""

    def __init__(self, out: Path, n_total: int, fmt: str, threads: int):
        self.out, self.n_total, self.fmt = out, n_total, fmt
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gan-deploy-writer")
        self.done: list[int] = []  # indices whose file is complete
        self.seconds = 0.0
        self._lock = threading.Lock()

    def submit(self, start: int, images: np.ndarray) -> Future:
        return self.pool.submit(self._write_batch, start, images)

    def _write_batch(self, start: int, images: np.ndarray) -> None:  # images: [B, H, W, C] uint8
        written = []
        folder = os.fspath(self.out) + os.sep
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        with Stopwatch() as sw:
            for k in range(images.shape[0]):
                i = start + k
                name = file_name(i, self.n_total, self.fmt)
                tmp = folder + TMP_PREFIX + name
                # raw os calls and string paths: per file this is the hot loop of `generate` on fast backends
                try:
                    fd = os.open(tmp, flags, 0o666)
                    try:
                        os.write(fd, encode(images[k], self.fmt))
                    finally:
                        os.close(fd)
                    os.replace(tmp, folder + name)
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
                written.append(i)
        with self._lock:
            self.done.extend(written)
            self.seconds += sw.seconds

    def close(self, cancel: bool) -> None:
        self.pool.shutdown(wait=True, cancel_futures=cancel)


def write_manifest(out: Path, indices: list[int], n_total: int, seed: int, fmt: str) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "seed", "file"])
    for i in sorted(indices):
        w.writerow([i, seed, file_name(i, n_total, fmt)])
    path = out / MANIFEST
    atomic_write_text(path, buf.getvalue())
    return path


def check_args(n: int, batch_size: int, seed: int, fmt: str) -> None:
    """The checks every generate path makes (here and `distributed.generate_ray`)."""
    if n < 1:
        raise GanDeployError("bad image count", n, expected="-n >= 1")
    if batch_size < 1:
        raise GanDeployError("bad batch size", batch_size, expected="--batch-size >= 1")
    if not 0 <= seed <= MAX_SEED:
        raise GanDeployError("bad seed", seed, expected=f"0 <= seed <= {MAX_SEED}")
    if fmt not in FORMATS:
        raise GanDeployError("unknown image format", repr(fmt), expected=f"one of {', '.join(FORMATS)}")


@dataclass
class GenerateOptions:
    """Everything `gan-deploy generate` decides, as one object (the CLI builds it; Python callers too)."""

    n: int = 1000  # images in the whole run (all shards together)
    out: str | Path = "samples"  # output folder (new or empty unless overwrite)
    batch_size: int = 256
    seed: int = 0  # image i is a pure function of (seed, i)
    fmt: str = "png"  # one of core.images.FORMATS
    overwrite: bool = False
    grid: str | Path | None = None  # also write a sample grid PNG of the first 64 images
    manifest: bool = True  # write manifest.csv (index, seed, file)
    writers: int | None = None  # writer threads; None: 2 per core, at most 8
    shard: tuple[int, int] = (0, 1)  # (k, n): write only shard k of n (whole batches)
    progress: bool | None = None  # None: a bar on a terminal
    backend: str = "auto"  # for run(): which backend (backends.CHOICES)
    device: str = "auto"
    executor: str = "local"  # local | ray
    ray_workers: int | None = None  # with executor ray


EXECUTORS = ("local", "ray")


def run(artifact: Any, opts: GenerateOptions, on_start: Callable[[str], None] | None = None) -> GenerateReport:
    """What `gan-deploy generate` runs: the backend for `artifact`, then `generate` (or its Ray version).
    `on_start(description)` is told what will run before the first batch."""
    from gan_deploy.backends import make_runner

    if opts.executor not in EXECUTORS:
        raise GanDeployError("unknown executor", repr(opts.executor), expected=" or ".join(EXECUTORS))
    if opts.executor == "ray":
        from gan_deploy.generate.ray_executor import generate_ray
        if on_start:
            on_start(f"{artifact.describe()} -> backend {opts.backend} on Ray workers")
        return generate_ray(artifact, opts)
    runner = make_runner(opts.backend, artifact, opts.device, spin=False)  # leave idle cycles to the writer threads
    if on_start:
        on_start(f"{artifact.describe()} -> backend {runner.name}")
    return generate(runner, opts)


def generate(runner: Any, opts: GenerateOptions, on_batch: Callable[[int], None] | None = None) -> GenerateReport:
    """Write images [start, stop) of `opts.n` (all of them, or this shard's share) with `runner` into `opts.out`.
    `on_batch(first_index)` is called after each batch is handed to the writers (tests use it to interrupt)."""
    n, out, batch_size, seed, fmt = opts.n, opts.out, opts.batch_size, opts.seed, opts.fmt
    overwrite, grid, manifest, writers, shard, progress = (opts.overwrite, opts.grid, opts.manifest, opts.writers,
                                                           opts.shard, opts.progress)
    check_args(n, batch_size, seed, fmt)
    out = Path(out)
    prepare_out_dir(out, overwrite)
    spec = runner.spec
    start, stop = shard_indices(n, batch_size, shard)
    # writing is the bottleneck on fast backends and releases the GIL in syscalls and zlib: 2 threads per core
    writers = writers or min(8, 2 * (os.cpu_count() or 1))
    writer = _Writer(out, n, fmt, writers)
    pending: deque[Future] = deque()
    max_pending = 2 * writers  # bounds memory: at most this many batches of pixels wait for the disk
    grid_images: list[np.ndarray] = []
    seconds_inference = 0.0
    interrupted = False
    bar = None
    if progress is not False:
        from tqdm import tqdm
        bar = tqdm(total=stop - start, unit="img", desc=f"generate [{runner.name}]", disable=None if progress is None else False,
                   dynamic_ncols=True)
    runner.activate()
    restore_term = _sigterm_as_interrupt()
    with Stopwatch() as total:
        try:
            for b0 in range(start, stop, batch_size):
                b = min(batch_size, stop - b0)
                z = latents_range(seed, b0, b, spec.latent_dim)  # [b, Z]
                with Stopwatch() as sw:
                    # uint8 [b, H, W, C]; a GPU backend converts on the device and copies a quarter of the bytes
                    pixels = runner.infer_pixels(z)
                seconds_inference += sw.seconds
                if grid is not None and sum(len(g) for g in grid_images) < 64:
                    grid_images.append(pixels[: 64 - sum(len(g) for g in grid_images)])
                pending.append(writer.submit(b0, pixels))
                while len(pending) > max_pending or (pending and pending[0].done()):
                    f = pending.popleft()
                    f.result()  # re-raises a writer's error (disk full...) in the main thread
                if bar is not None:
                    bar.update(b)
                if on_batch is not None:
                    on_batch(b0)
            for f in pending:
                f.result()
        except KeyboardInterrupt:
            interrupted = True
        except OSError as e:
            writer.close(cancel=True)
            raise GanDeployError("writing images failed", f"{out} ({e.strerror or e})", hint="check free disk space and permissions") from None
        finally:
            restore_term()
            writer.close(cancel=True)  # finishes files in flight (each atomic), drops queued batches
            if bar is not None:
                bar.close()
    report = GenerateReport(out, runner.name, runner.describe(), stop - start, len(writer.done), start, batch_size, seed,
                            fmt, total.seconds, seconds_inference, writer.seconds, writers, interrupted)
    if manifest:
        report.manifest = write_manifest(out, writer.done, n, seed, fmt)
    if grid is not None and grid_images:
        report.grid = save_grid(grid, np.concatenate(grid_images))
    if interrupted:
        raise GenerateInterrupted(report)
    return report


def _sigterm_as_interrupt() -> Callable[[], None]:
    """SIGTERM (what schedulers and `kill` send) stops a run the way Ctrl-C does: complete files, a manifest,
    no temporary files. Only in the main thread, where Python delivers signals; returns the undo."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)
    return restore


class GenerateInterrupted(KeyboardInterrupt):
    """Ctrl-C during generate: carries the report of what was completely written."""

    def __init__(self, report: GenerateReport):
        super().__init__(f"interrupted after {report.n_written} complete files")
        self.report = report

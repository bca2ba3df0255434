"""Bulk generation: seed-derived latents -> backend -> a sink (image files, tar shards or one array), with
encoding and writing in worker processes (or threads) while the main process keeps the backend busy.

Image i depends only on (seed, i). Batches are aligned to multiples of the batch size from index 0, so a job
shard (`shard=(k, n)`), a resumed run and the Ray executor compute exactly the batches one uninterrupted
run computes, and every sink writes the same bytes.

A run, in order: every check that can fail without writing (arguments, the sink's options, an empty shard,
the memory a batch of pixels needs, every output path against the command's inputs), then the output
folder is locked (a second run into it is refused), swept of what a killed run left, and given its run
record (generate.json) and journal (manifest.csv, header only); then batches. Whatever stops the run
(Ctrl-C, SIGTERM, a full disk, a folder in the way, kill -9), the manifest lists the complete images and
only them; `resume=True` finishes the run and the result is byte-identical to an uninterrupted one.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import MAX_SEED, latents_range
from gan_deploy.generate.device_jpeg import DeviceJpegEncoder, check_jpeg_encoder
from gan_deploy.generate.journal import MANIFEST, RECORD, Journal, read_journal, read_record, write_manifest, write_record
from gan_deploy.generate.outdir import OutputLock, check_empty, check_paths, make_out_dir, sweep
from gan_deploy.generate.pool import KINDS as WRITER_KINDS
from gan_deploy.generate.pool import make_pool
from gan_deploy.generate.sinks import SINKS, Bitset, Layout, Result, Sink, Task, sink_class

EXECUTORS = ("local", "ray")
GRID_IMAGES = 64
# `auto` starts worker processes only with cores to spare and enough images to pay their start-up (~0.3 s each,
# measured on 2 cores: below this, or on 1-2 cores where the backend needs the same cores, threads win)
PROCESS_MIN_CORES = 3
PROCESS_MIN_IMAGES = 20000
MEMORY_FRACTION = 0.8  # of the available memory, at most, for pixels in flight


@dataclass
class GenerateReport:
    out: Path
    backend: str
    backend_detail: str
    n_requested: int
    n_written: int  # images completed by this run (a resumed run: not counting those already complete)
    first_index: int
    batch_size: int
    seed: int
    fmt: str
    seconds_total: float
    seconds_inference: float  # sum over batches of backend.infer_pixels() (the main thread's share)
    seconds_writing: float  # sum over writers of encode + write
    writers: int
    interrupted: bool = False
    grid: Path | None = None
    manifest: Path | None = None
    compare: list[dict[str, Any]] = field(default_factory=list)
    sink: str = "folder"
    sink_detail: str = ""
    writer_kind: str = "thread"
    n_resumed: int = 0  # complete before this run (resume)

    @property
    def images_per_s(self) -> float:
        return self.n_written / self.seconds_total if self.seconds_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(out=str(self.out), grid=str(self.grid) if self.grid else None,
                 manifest=str(self.manifest) if self.manifest else None, images_per_s=self.images_per_s)
        return d

    def summary(self) -> str:
        if self.n_written == 0:
            return f"nothing to do: all {self.n_resumed} images in {self.out} were already complete"

        def rate(n: float, s: float) -> str:
            return f"{n / s:,.0f}" if s > 0 else "n/a"
        kind = {"process": "writer process(es)", "ray": "Ray worker(s)"}.get(self.writer_kind, "writer thread(s)")
        text = (f"wrote {self.sink_detail or f'{self.n_written} {self.fmt} files to {self.out}'} with {self.backend_detail} in "
                f"{self.seconds_total:.2f} s ({self.images_per_s:,.0f} images/s end to end; inference alone "
                f"{rate(self.n_written, self.seconds_inference)} images/s, {self.writers} {kind} "
                f"{rate(self.n_written * self.writers, self.seconds_writing)} images/s)")
        return text + (f"; {self.n_resumed} were already complete" if self.n_resumed else "")


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


def shard_indices(n: int, unit: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[start, stop) of this job shard's images: whole units (batches, or tar shards for the tar sink)."""
    k, parts = shard
    n_units = -(-n // unit)
    u0, u1 = k * n_units // parts, (k + 1) * n_units // parts
    return min(u0 * unit, n), min(u1 * unit, n)


def file_name(i: int, n: int, fmt: str) -> str:
    return f"{i:0{max(6, len(str(n - 1)))}d}.{fmt}"


def check_args(n: int, batch_size: int, seed: int, fmt: str | None = None) -> None:
    """The checks every generate path makes (here and `ray_executor.generate_ray`)."""
    from gan_deploy.core.images import FORMATS

    if n < 1:
        raise GanDeployError("bad image count", n, expected=">= 1")
    if batch_size < 1:
        raise GanDeployError("bad batch size", batch_size, expected=">= 1")
    if not 0 <= seed <= MAX_SEED:
        raise GanDeployError("bad seed", seed, expected=f"0 <= seed <= {MAX_SEED}")
    if fmt is not None and fmt not in FORMATS:
        raise GanDeployError("unknown image format", repr(fmt), expected=f"one of {', '.join(FORMATS)}")


@dataclass
class GenerateOptions:
    """Everything `gan-deploy generate` decides, as one object (the CLI builds it; Python callers too)."""

    n: int = 1000  # images in the whole run (all shards together)
    out: str | Path = "samples"  # output folder (new or empty unless overwrite or resume)
    batch_size: int = 256
    seed: int = 0  # image i is a pure function of (seed, i)
    fmt: str | None = None  # one of core.images.FORMATS; None: the sink's default (png; npy for the array)
    sink: str = "folder"  # sinks.SINKS: folder | tar | array
    sink_options: dict[str, Any] = field(default_factory=dict)  # e.g. tar: {"shard_size": 10000, "prefix": "images"}
    overwrite: bool = False
    resume: bool = False  # finish the interrupted run in `out` (same settings; its record says which)
    grid: str | Path | None = None  # also write a sample grid PNG of the first 64 images
    json_out: str | Path | None = None  # also write the report as JSON (checked before the first batch)
    manifest: bool = True  # keep manifest.csv (the journal) and generate.json (the run record)
    writers: int | None = None  # encoder workers; None: cores - 1 processes, or 2 threads per core (at most 8)
    writer_kind: str = "auto"  # process | thread | auto (processes with >= 3 cores and >= 20,000 images)
    shard: tuple[int, int] = (0, 1)  # (k, n): write only job shard k of n
    progress: bool | None = None  # None: a bar on a terminal
    backend: str = "auto"  # for run(): which backend (backends.CHOICES)
    device: str = "auto"
    precision: str = "fp32"  # eager / compile only (backends.torch_common.TORCH_PRECISIONS)
    executor: str = "local"  # local | ray
    ray_workers: int | None = None  # with executor ray
    sync_every: float = 1.0  # seconds between fsyncs of the journal
    jpeg_encoder: str = "cpu"  # device_jpeg.JPEG_ENCODERS: cpu (PIL, in the workers) | cuda (nvJPEG on the GPU, main process)


# -- the checks before anything is written ---------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit; None when unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_f).read_text().strip(), int(Path(usage_f).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            left = max(0, int(limit) - usage)
            avail = left if avail is None else min(avail, left)
        break
    return avail


def pixel_bytes_per_image(shape: tuple[int, int, int], latent_dim: int, slots: int) -> int:
    """Host memory one image of a batch costs: its uint8 pixels in each ring slot and in the backend's result,
    the float32 image and the conversion's temporaries (about 3 float32 copies), and its latent's temporaries."""
    h, w, c = shape
    return h * w * c * (slots + 1 + 12) + 48 * latent_dim


def check_memory(batch_size: int, shape: tuple[int, int, int], latent_dim: int, slots: int, avail: int | None = None) -> int:
    """The number of ring slots to use (<= slots, >= 2), or a one-line error naming the largest batch that fits."""
    avail = available_memory() if avail is None else avail
    if avail is None:
        return slots
    budget = avail * MEMORY_FRACTION
    for s in range(slots, 1, -1):
        if batch_size * pixel_bytes_per_image(shape, latent_dim, s) <= budget:
            return s
    largest = int(budget // pixel_bytes_per_image(shape, latent_dim, 2))
    need = batch_size * pixel_bytes_per_image(shape, latent_dim, 2)
    h, w, c = shape
    raise GanDeployError("batch too large for this machine's memory",
                         f"{batch_size} images of {h}x{w}x{c} need {need / 2**30:.1f} GiB in flight, {avail / 2**30:.1f} GiB available",
                         expected=f"a batch size of at most {largest}" if largest else "a smaller image", hint="lower the batch size")


def choose_writers(kind: str, writers: int | None, n_images: int, sink: type[Sink], cores: int | None = None) -> tuple[str, int]:
    cores = cores or os.cpu_count() or 1
    if kind not in WRITER_KINDS:
        raise GanDeployError("unknown writer kind", repr(kind), expected=" | ".join(WRITER_KINDS))
    if writers is not None and writers < 1:
        raise GanDeployError("bad number of writers", writers, expected=">= 1")
    if kind == "auto":
        # the array sink only copies bytes (pwrite releases the GIL): threads; encoders want processes with spare cores
        kind = "process" if (sink.name != "array" and cores >= PROCESS_MIN_CORES and n_images >= PROCESS_MIN_IMAGES) else "thread"
    if writers is None:
        writers = max(1, cores - 1) if kind == "process" else min(8, 2 * cores)
    return kind, writers


class Session:
    """One run into one output: the checks, the lock, the run record, the journal, the sink, the final manifest.
    Both executors drive it: `tasks()` says what to compute, `on_result()` takes each finished task."""

    def __init__(self, opts: GenerateOptions, spec: Any, inputs: list[Path], backend: str, device: str, precision: str = "fp32"):
        n, batch_size, seed = opts.n, opts.batch_size, opts.seed
        check_args(n, batch_size, seed, opts.fmt)
        self.opts, self.out = opts, Path(opts.out)
        self.cls = sink_class(opts.sink)
        self.fmt = opts.fmt or self.cls.formats[0]
        if self.fmt not in self.cls.formats:
            raise GanDeployError(f"the {opts.sink} sink cannot store {self.fmt}", repr(self.fmt), expected=" or ".join(self.cls.formats),
                                 hint=f"use --format {self.cls.formats[0]}, or --sink folder (or tar) for {self.fmt} files")
        sink_opts = self.cls.check_options(dict(opts.sink_options))
        unit = self.cls.shard_unit(batch_size, sink_opts)
        self.start, self.stop = shard_indices(n, unit, opts.shard)
        if self.start >= self.stop:
            k, parts = opts.shard
            units = -(-n // unit)
            raise GanDeployError("empty job shard", f"shard {k}/{parts} of {n} images in {units} unit(s) of {unit} has no images",
                                 expected=f"at most {units} shard(s)", hint="use fewer shards or a smaller batch size")
        self.shape = (spec.height, spec.width, spec.channels)
        self.latent_dim = spec.latent_dim
        self.layout = Layout(n, self.start, self.stop, seed, self.fmt, self.shape)
        self.sink: Sink = self.cls(self.out, self.layout, batch_size, sink_opts)
        self.grid = Path(opts.grid) if opts.grid is not None else None
        self.json_out = Path(opts.json_out) if opts.json_out is not None else None
        self.inputs = [Path(p) for p in inputs]
        check_jpeg_encoder(opts.jpeg_encoder, self.fmt, self.cls.name, device, backend, self.shape[2])
        self.record = {"n": n, "seed": seed, "batch_size": batch_size, "fmt": self.fmt, "sink": self.cls.name,
                       "sink_options": self.sink.record(), "shard": list(opts.shard), "start": self.start, "stop": self.stop,
                       "image": list(self.shape), "latent_dim": self.latent_dim, "value_range": [float(v) for v in spec.value_range], "backend": backend,
                       "device": device.split(":")[0], "precision": precision}
        if self.fmt == "jpg":  # the encoders write different bytes: a resumed run must use the same one
            self.record["jpeg_encoder"] = opts.jpeg_encoder
        self.lock: OutputLock | None = None
        self.journal: Journal | None = None
        self.done = Bitset(self.start, self.stop)
        self.n_before = 0
        # set while running
        self.cond = threading.Condition()
        self.submitted = self.committed = 0
        self.pending: dict[int, tuple[Task, Result]] = {}
        self.inflight: dict[int, Task] = {}  # handed to a local worker, not yet back
        self.n_delivered = 0
        self.next_seq = 0
        self.broken = False  # an ordered sink's stream has a gap: nothing after it is committed
        self.error: str | None = None
        self.error_kind = "io"
        self.seconds_writing = 0.0
        self.bar: Any = None

    def set_model(self, kind: str, path: Path, sha256: str) -> None:
        self.record["model"] = {"kind": kind, "path": str(Path(path).resolve()), "sha256": sha256}

    # -- before the first batch ------------------------------------------------------------------------------
    def check(self, avail: int | None = None, slots: int = 2) -> int:
        """Everything that can fail without writing; returns the ring slots that fit in memory."""
        check_paths(self.out, self.sink, self.inputs, {"the sample grid": self.grid, "the JSON report": self.json_out})
        return check_memory(self.max_batch, self.shape, self.latent_dim, slots, avail)

    @property
    def max_batch(self) -> int:
        """The largest batch the run computes: a batch size above n computes one batch of n (the same images)."""
        return min(self.opts.batch_size, self.opts.n)

    def open(self) -> None:
        """Lock the folder and make the run's files: after this, stopping leaves a consistent folder."""
        opts = self.opts
        if opts.resume and opts.overwrite:
            raise GanDeployError("resume and overwrite together", str(self.out), hint="resume continues a run; overwrite starts a new one")
        if opts.resume and not opts.manifest:
            raise GanDeployError("cannot resume without a manifest", str(self.out), hint="the manifest is the list of what is complete")
        if opts.resume and not (self.out / MANIFEST).is_file():
            raise GanDeployError("nothing to resume", f"{self.out} has no {MANIFEST}", hint="start the run without resuming")
        make_out_dir(self.out)
        self.lock = OutputLock(self.out).acquire()
        try:
            sweep(self.out)
            if opts.resume:
                self._check_record(read_record(self.out))
                read_journal(self.out / MANIFEST, self.sink.columns, self.done)
                self.sink.verify(self.done)
                self.n_before = self.done.count()
                self.sink.prepare(resume=True)
                self.journal = Journal.reopen(self.out, self.sink.sync, opts.sync_every)
            else:
                if not opts.overwrite:
                    check_empty(self.out)
                if opts.manifest:
                    write_record(self.out, self.record)
                    self.journal = Journal.create(self.out, self.sink.columns, self.sink.sync, opts.sync_every)
                else:  # an older run's manifest would describe files this run replaces
                    for name in (MANIFEST, RECORD):
                        (self.out / name).unlink(missing_ok=True)
                self.sink.prepare(resume=False)
        except BaseException:
            self.sink.close(complete=False)
            if self.journal is not None:
                self.journal.close()
            self.lock.release()
            raise

    def _check_record(self, rec: dict[str, Any]) -> None:
        for key in ("n", "seed", "batch_size", "fmt", "sink", "sink_options", "shard", "image", "value_range", "backend", "device",
                    "precision", "jpeg_encoder"):
            recorded = rec.get(key, "cpu" if key == "jpeg_encoder" and self.fmt == "jpg" else None)  # older records: the CPU
            if recorded != self.record.get(key):
                raise GanDeployError("the run to resume was made with other settings", f"{key}: recorded {recorded!r}, now {self.record.get(key)!r}",
                                     hint="resume with the settings of the interrupted run (the command line takes them from its record)")
        model, mine = rec.get("model") or {}, self.record.get("model") or {}
        if mine and model.get("sha256") != mine.get("sha256"):
            raise GanDeployError("the run to resume was made with another model", f"recorded {model.get('path')} sha256 {str(model.get('sha256'))[:12]}",
                                 expected=f"sha256 {mine['sha256'][:12]}", hint="resume with the model of the interrupted run")

    def tasks(self) -> Iterator[Task]:
        """The batches still to compute, in index order: exactly the one-process run's batches, each delivering
        the part of [start, stop) it covers (on resume: from its first to its last incomplete image)."""
        bs, n = self.opts.batch_size, self.opts.n
        seq = 0
        for b0 in range(self.start // bs * bs, self.stop, bs):
            b = min(bs, n - b0)
            lo, hi = max(b0, self.start), min(b0 + b, self.stop)
            if self.n_before:
                missing = list(self.done.runs(lo, hi, value=False))
                if not missing:
                    continue
                lo, hi = missing[0][0], missing[-1][1]
            yield Task(seq, b0, b, lo, hi)
            seq += 1

    # -- while running ---------------------------------------------------------------------------------------
    def start_progress(self, desc: str) -> None:
        if self.opts.progress is not False:
            from tqdm import tqdm
            self.bar = tqdm(total=self.stop - self.start, initial=self.n_before, unit="img", desc=desc, dynamic_ncols=True,
                            disable=None if self.opts.progress is None else False)

    def wait_room(self, limit: int, stop: Callable[[], bool] = lambda: False) -> bool:
        """Block until fewer than `limit` tasks are in flight (submitted, not committed); False when the run must stop."""
        with self.cond:
            while self.submitted - self.committed >= limit and self.error is None and not stop():
                self.cond.wait(0.1)
            if self.error is not None or stop():
                return False
            self.submitted += 1
            return True

    @property
    def failed(self) -> bool:
        return self.error is not None

    def handed_out(self, task: Task) -> None:
        with self.cond:
            self.inflight[task.seq] = task

    def discard_undelivered(self, tasks: Any = None) -> None:
        """After workers died or were stopped: what their unreported tasks may have left is removed (see Sink.discard)."""
        with self.cond:
            # local: the tasks still out; Ray: results arrive in task order, so those after the ones delivered
            lost = list(self.inflight.values()) if tasks is None else list(tasks[self.n_delivered:])
            for t in lost:
                self.sink.discard(t.lo, t.hi, self.done)

    def on_result(self, task: Task, result: Result) -> None:
        """A finished task (any thread; one at a time): ordered sinks commit in task order."""
        with self.cond:
            self.inflight.pop(task.seq, None)
            self.n_delivered += 1
            if self.sink.ordered:
                self.pending[task.seq] = (task, result)
                while self.next_seq in self.pending:
                    self._commit(*self.pending.pop(self.next_seq))
                    self.next_seq += 1
            else:
                self._commit(task, result)

    def _commit(self, task: Task, result: Result) -> None:
        # caller holds self.cond
        self.seconds_writing += result.seconds
        self.committed += 1
        self.cond.notify_all()
        if result.error is not None and self.error is None:
            self.error, self.error_kind = result.error, result.error_kind
        if self.sink.ordered and (self.broken or result.skipped or result.error is not None):
            self.broken = True  # a gap in the stream: what comes after it cannot be appended
            return
        try:
            ranges = self.sink.commit(task, result)
        except OSError as e:
            self.broken = True
            if self.error is None:
                self.error = f"{e.filename or self.out} ({e.strerror or e})"
            return
        if not ranges:
            return
        if self.journal is not None:
            try:
                self.journal.append("".join(self.sink.rows(lo, hi) for lo, hi in ranges))
            except OSError as e:
                # not listed, so not complete: the final manifest (if it can be written) decides
                if self.error is None:
                    self.error = f"{self.journal.path} ({e.strerror or e})"
        new = 0
        for lo, hi in ranges:
            new += (hi - lo) - self.done.count(lo, hi) if self.n_before else hi - lo
            self.done.set_range(lo, hi)
        if self.bar is not None:
            self.bar.update(new)

    # -- afterwards ------------------------------------------------------------------------------------------
    def finish(self, complete: bool) -> tuple[Path | None, Path | None]:
        """Close the sink and the journal, write the final manifest and the grid, release the lock: (manifest, grid)."""
        manifest = grid = None
        try:
            if self.bar is not None:
                self.bar.close()
            try:
                self.sink.close(complete=complete and not self.broken)
            finally:
                if self.journal is not None:
                    try:
                        self.journal.close()
                    except OSError:
                        pass  # the rows already written stay; the rewrite below decides
            if self.opts.manifest:
                try:
                    manifest = write_manifest(self.out, self.sink, self.done)
                except OSError as e:  # e.g. the disk is full: the journal, a correct list unsorted, stays
                    manifest = self.out / MANIFEST
                    if self.error is None:
                        self.error = f"{manifest} ({e.strerror or e})"
            if self.grid is not None:
                first: list[int] = []
                for lo, hi in self.done.runs():
                    first.extend(range(lo, min(hi, lo + GRID_IMAGES - len(first))))
                    if len(first) >= GRID_IMAGES:
                        break
                if first:
                    from gan_deploy.core.images import save_grid
                    grid = save_grid(self.grid, self.sink.read(first))
        finally:
            if self.lock is not None:
                self.lock.release()
        return manifest, grid

    def raise_error(self) -> None:
        if self.error is None:
            return
        complete = self.done.count()
        if self.error_kind == "bug":
            raise RuntimeError(f"an encoder worker failed: {self.error}")
        raise GanDeployError("writing images failed", self.error.splitlines()[0],
                             hint=f"{complete} complete images are listed in {self.out / MANIFEST}; "
                                  "free space or remove what is in the way, then resume the run" if self.opts.manifest
                             else "free space or remove what is in the way, then run again")

    def conclude(self, report: GenerateReport, interrupted: bool) -> GenerateReport:
        """Raise what stopped the run (a write error, an interrupt), else write the JSON report and return it."""
        self.raise_error()
        if interrupted:
            raise GenerateInterrupted(report)
        if self.json_out is not None:
            import json

            from gan_deploy.core.fileio import atomic_write_text
            atomic_write_text(self.json_out, json.dumps(report.to_dict(), indent=2) + "\n")
        return report

    def report(self, backend: str, detail: str, total: float, inference: float, writers: int, kind: str, interrupted: bool,
               manifest: Path | None, grid: Path | None) -> GenerateReport:
        n_done = self.done.count()
        return GenerateReport(self.out, backend, detail, self.stop - self.start, n_done - self.n_before, self.start,
                              self.opts.batch_size, self.opts.seed, self.fmt, total, inference, self.seconds_writing, writers,
                              interrupted, grid, manifest, sink=self.cls.name, sink_detail=self.sink.describe(n_done - self.n_before),
                              writer_kind=kind, n_resumed=self.n_before)


def model_inputs(artifact: Any) -> list[Path]:
    """The command's input files: the model and, for a checkpoint or an engine, its .json sidecar."""
    p = Path(artifact.path)
    return [p, p.with_suffix(".json")] if artifact.kind in ("checkpoint", "engine") else [p]


def runner_options(backend: str, artifact: Any, precision: str, batch_size: int | None = None) -> tuple[str, dict[str, Any]]:
    """(backend name, make_runner options): precision goes to the PyTorch backends; elsewhere only fp32 is valid.
    `auto` on a CPU measures the runtimes at `batch_size` (backends/autoprobe.py)."""
    from gan_deploy.backends import pick_backend
    from gan_deploy.backends.torch_common import check_precision
    from gan_deploy.precision.runtime_gate import require_runtime_gate

    check_precision(precision)
    name = pick_backend(backend, artifact, batch_size=batch_size, vet=require_runtime_gate, spin=False)
    if name in ("eager", "compile"):
        return name, {"precision": precision}
    if precision != "fp32":
        raise GanDeployError(f"precision {precision} needs a PyTorch backend", f"backend {name}", expected="eager or compile",
                             hint="ONNX files and engines carry their own precision")
    return name, {}


def run(artifact: Any, opts: GenerateOptions, on_start: Callable[[str], None] | None = None) -> GenerateReport:
    """What `gan-deploy generate` runs: the backend for `artifact`, then `generate` (or its Ray version).
    `on_start(description)` is told what will run before the first batch."""
    from gan_deploy.backends import make_runner

    if opts.executor not in EXECUTORS:
        raise GanDeployError("unknown executor", repr(opts.executor), expected=" or ".join(EXECUTORS))
    if opts.executor == "ray":
        from gan_deploy.generate.ray_executor import generate_ray
        return generate_ray(artifact, opts, on_start=(lambda: on_start(f"{artifact.describe()} -> backend {opts.backend} on Ray workers"))
                            if on_start else None)
    from gan_deploy.precision.runtime_gate import require_runtime_gate

    name, options = runner_options(opts.backend, artifact, opts.precision, opts.batch_size)
    runner = make_runner(opts.backend if opts.backend == "auto" else name, artifact, opts.device, batch_size=opts.batch_size,
                         vet=require_runtime_gate, spin=False, **options)  # spin=False: leave idle cycles to the writers
    require_runtime_gate(runner)  # a reduced-precision model on a runtime quantize did not gate it on: gated here
    why = f" ({runner.auto_reason})" if runner.auto_reason else ""
    return generate(runner, opts, on_start=(lambda: on_start(f"{artifact.describe()} -> backend {runner.name}{why}")) if on_start else None)


def generate(runner: Any, opts: GenerateOptions, on_batch: Callable[[int], None] | None = None,
             on_start: Callable[[], None] | None = None) -> GenerateReport:
    """Write images [start, stop) of `opts.n` (all of them, or this job shard's share) with `runner` into the sink.
    `on_start()` is called once every check has passed and the model is loaded (so a refusal is one line);
    `on_batch(first_index)` after each batch is handed to the writers (tests use it to interrupt)."""
    art = runner.artifact
    session = Session(opts, runner.spec, model_inputs(art), runner.name, runner.device, runner.options.get("precision", "fp32"))
    session.set_model(art.kind, art.path, art.sha256)
    kind, writers = choose_writers(opts.writer_kind, opts.writers, session.stop - session.start, session.cls)
    slots = session.check(slots=2 * writers + 2)
    encoder = DeviceJpegEncoder() if opts.jpeg_encoder == "cuda" else None  # torchvision: found before anything is written
    session.open()
    interrupted = complete = False
    seconds_inference = seconds_total = 0.0
    pool = None
    try:
        runner.activate()
        if on_start is not None:
            on_start()
        session.start_progress(f"generate [{runner.name}]")
        pool = make_pool(kind, session.sink.worker(), writers, session.on_result, (session.max_batch, *session.shape), slots)
        restore_term = _sigterm_as_interrupt()
        t_start = time.perf_counter()
        try:
            for task in session.tasks():
                if not session.wait_room(slots, lambda: pool.failure is not None):
                    break
                z = latents_range(opts.seed, task.b0, task.b, session.latent_dim)  # [b, Z]
                t0 = time.perf_counter()
                if encoder is None:
                    pixels = runner.infer_pixels(z)  # uint8 [b, H, W, C]; a GPU backend converts on the device
                else:  # JPEG files encoded on the GPU (counted as inference: the main process's share)
                    pixels = encoder.encode(runner.infer_pixels_device(z))
                seconds_inference += time.perf_counter() - t0
                session.handed_out(task)
                pool.submit(task, pixels)
                if on_batch is not None:
                    on_batch(task.b0)
            else:
                complete = True
        except KeyboardInterrupt:
            interrupted = True
        finally:
            restore_term()
            # Ctrl-C: the batches already handed out are finished (a bounded few); an error: those queued are skipped
            pool.close(cancel=session.failed or pool.failure is not None)
            seconds_total = time.perf_counter() - t_start
            if pool.failure is not None:
                session.discard_undelivered()  # the dead worker's batch: whatever of it reached the disk goes
                if session.error is None:
                    session.error, session.error_kind = f"an encoder process died ({pool.failure})", "io"
    finally:
        manifest, grid = session.finish(complete and not session.failed)
    report = session.report(runner.name, runner.describe(), seconds_total, seconds_inference, writers, kind, interrupted, manifest, grid)
    return session.conclude(report, interrupted)


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


__all__ = ["EXECUTORS", "SINKS", "GenerateInterrupted", "GenerateOptions", "GenerateReport", "Session", "generate", "run"]

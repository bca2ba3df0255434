"""One generate run into one output, whichever executor computes it: the checks that need the model, the lock,
the run record and its identity checks on resume, the journal, the sink, progress, committing each finished
task in order, and the final manifest, grid and report.

The local loop (`pipeline.generate`) and the Ray executor (`ray_executor.generate_ray`) both drive a `Session`:
`tasks()` says what to compute, `on_result()` takes each finished task, `finish()` and `conclude()` end the run.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from gan_deploy.backends.base import PROBE_IMAGES, check_images
from gan_deploy.backends.memory import check_pixels_fit
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.progress import show_bar
from gan_deploy.generate.device_jpeg import check_jpeg_encoder
from gan_deploy.generate.journal import MANIFEST, RECORD, Journal, read_journal, read_record, write_manifest, write_record
from gan_deploy.generate.options import GenerateOptions, shard_indices
from gan_deploy.generate.outdir import OutputLock, check_empty, check_paths, make_out_dir, sweep
from gan_deploy.generate.sinks import Bitset, Layout, Result, Sink, Task, sink_class

SPACE_SAMPLE = 16  # images encoded to estimate a run's disk space (a 1024x1024 PNG takes ~50 ms to encode)

GRID_IMAGES = 64  # the sample grid shows the first this many complete images


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
    empty: str = ""  # an empty job shard: why it has no images (nothing was written)

    @property
    def images_per_s(self) -> float:
        return self.n_written / self.seconds_total if self.seconds_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(out=str(self.out), grid=str(self.grid) if self.grid else None,
                 manifest=str(self.manifest) if self.manifest else None, images_per_s=self.images_per_s)
        return d

    def summary(self) -> str:
        if self.empty:
            return self.empty
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


class Session:
    """One run into one output: the checks, the lock, the run record, the journal, the sink, the final manifest.
    Both executors drive it: `tasks()` says what to compute, `on_result()` takes each finished task."""

    def __init__(self, opts: GenerateOptions, spec: Any, inputs: list[Path], backend: str, device: str, precision: str = "fp32"):
        opts.validate()  # again: a dataclass may have been changed since it was built
        n, batch_size, seed = opts.n, opts.batch_size, opts.seed
        self.opts, self.out = opts, Path(opts.out)
        self.cls = sink_class(opts.sink)
        self.fmt = opts.fmt or self.cls.formats[0]
        sink_opts = self.cls.check_options(dict(opts.sink_options))
        unit = self.cls.shard_unit(batch_size, sink_opts)
        self.start, self.stop = shard_indices(n, unit, opts.shard)
        self.shard_unit = unit
        self.empty = self.start >= self.stop  # an empty job shard: the executors write nothing (empty_report)
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
        return check_pixels_fit(self.max_batch, self.shape, self.latent_dim, slots, avail)

    def probe(self, runner: Any) -> None:
        """Activate `runner` and compute the run's first images (at most PROBE_IMAGES): a model whose images are
        mostly NaN/Inf or outside the value range is refused here, before anything is written, unless
        opts.allow_bad_images (then the warning only). Then the disk space the run needs, from those images."""
        from gan_deploy.core.images import to_uint8

        images = check_images(runner, **self.probe_range())  # [k, C, H, W]
        self.check_space(to_uint8(images[:SPACE_SAMPLE], runner.spec.value_range))

    def check_space(self, sample: Any) -> None:
        """Refuse, before anything is written, a run whose files need more than the free space where `out` is (the
        sink's estimate from `sample`, uint8 [k, H, W, C], the run's first images). Not on --resume (what is done
        is already on the disk) nor with opts.space_check off. A full disk later still stops the run cleanly."""
        import shutil

        from gan_deploy.core.hardware import gib

        if self.opts.resume or not self.opts.space_check or len(sample) == 0:
            return
        where = self.out
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            return  # no figure to check against: the run finds out, cleanly, if the disk fills
        need = self.sink.bytes_needed(sample)
        if need > free:
            n = self.stop - self.start
            raise GanDeployError("not enough free disk space for this run",
                                 f"about {gib(need)} for {n:,} images ({gib(need / n)} each on disk, estimated from the first "
                                 f"{len(sample)}), {gib(free)} free at {where}",
                                 expected="a run that fits the free space",
                                 hint="write fewer images (-n), one job shard per disk (--shard K/N) or to another --out; "
                                      "--no-space-check writes until the disk is full (the run then stops cleanly and "
                                      "--resume continues it)")

    def probe_range(self) -> dict[str, Any]:
        """check_images' arguments for this run: its first images, in batches it computes anyway."""
        return {"seed": self.opts.seed, "start": self.start, "count": min(PROBE_IMAGES, self.stop - self.start),
                "batch": self.max_batch, "allow": self.opts.allow_bad_images}

    @property
    def max_batch(self) -> int:
        """The largest batch the run computes: a batch size above n computes one batch of n (the same images)."""
        return min(self.opts.batch_size, self.opts.n)

    def open(self) -> None:
        """Lock the folder and make the run's files: after this, stopping leaves a consistent folder."""
        opts = self.opts
        if opts.resume and not (self.out / MANIFEST).is_file():
            raise GanDeployError("nothing to resume", f"{self.out} has no {MANIFEST}", hint="start the run without resuming")
        make_out_dir(self.out)
        self.lock = OutputLock(self.out).acquire()
        made: list[str] = []  # the record and the journal of a new run: gone again if the sink cannot start
        try:
            sweep(self.out)
            if opts.resume:
                self._check_record(read_record(self.out))
                read_journal(self.out / MANIFEST, self.sink.columns, self.done, self.opts.n)
                self.sink.verify(self.done)
                self.n_before = self.done.count()
                self.sink.prepare(resume=True)
                self.journal = Journal.reopen(self.out, self.sink.sync, opts.sync_every)
            else:
                if not opts.overwrite:
                    check_empty(self.out)
                if opts.manifest:
                    made.append(RECORD)
                    write_record(self.out, self.record)
                    made.append(MANIFEST)
                    self.journal = Journal.create(self.out, self.sink.columns, self.sink.sync, opts.sync_every)
                else:  # an older run's manifest would describe files this run replaces
                    for name in (MANIFEST, RECORD):
                        (self.out / name).unlink(missing_ok=True)
                self.sink.prepare(resume=False)
        except BaseException:
            self.sink.close(complete=False)
            if self.journal is not None:
                self.journal.close()
                self.journal = None
            for name in made:  # a refused start leaves the folder as it found it (a later run is not "not empty")
                (self.out / name).unlink(missing_ok=True)
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
        if show_bar(self.opts.progress):  # generate has a bar and no progress lines (core.progress)
            from tqdm import tqdm
            self.bar = tqdm(total=self.stop - self.start, initial=self.n_before, unit="img", desc=desc, dynamic_ncols=True,
                            disable=False)

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

    def empty_report(self, backend: str) -> GenerateReport:
        """The report of an empty job shard (more shards than images, or tar shards): nothing written, a line saying why."""
        k, parts = self.opts.shard
        n, unit = self.opts.n, self.shard_unit
        units = f"{-(-n // unit):,} tar shards of {unit:,}" if unit > 1 else f"{n:,} images"
        why = (f"job shard {k}/{parts} is empty: {units} cut into {parts:,} job shards leave this one none; "
               f"nothing written to {self.out}")
        return GenerateReport(self.out, backend, backend, 0, 0, self.start, self.opts.batch_size, self.opts.seed, self.fmt,
                              0.0, 0.0, 0.0, 0, sink=self.cls.name, empty=why)

    def report(self, backend: str, detail: str, total: float, inference: float, writers: int, kind: str, interrupted: bool,
               manifest: Path | None, grid: Path | None) -> GenerateReport:
        n_done = self.done.count()
        return GenerateReport(self.out, backend, detail, self.stop - self.start, n_done - self.n_before, self.start,
                              self.opts.batch_size, self.opts.seed, self.fmt, total, inference, self.seconds_writing, writers,
                              interrupted, grid, manifest, sink=self.cls.name, sink_detail=self.sink.describe(n_done - self.n_before),
                              writer_kind=kind, n_resumed=self.n_before)


class GenerateInterrupted(KeyboardInterrupt):
    """Ctrl-C during generate: carries the report of what was completely written."""

    def __init__(self, report: GenerateReport):
        super().__init__(f"interrupted after {report.n_written} complete files")
        self.report = report


__all__ = ["GRID_IMAGES", "GenerateInterrupted", "GenerateReport", "Session"]

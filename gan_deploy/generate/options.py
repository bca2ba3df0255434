"""What a generate run is asked to do (`GenerateOptions`), checked when it is built, and the job-shard arithmetic.

The CLI builds a `GenerateOptions`; Python callers too. Every range and choice comes from the library's constants
(core.latents.MAX_SEED, core.images.FORMATS, sinks.SINKS, pool.KINDS, backends.CHOICES, torch precisions,
device_jpeg.JPEG_ENCODERS), and a bad value is one GanDeployError line before anything is loaded or written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

from gan_deploy.backends.memory import USABLE
from gan_deploy.core.errors import GanDeployError, check_at_most
from gan_deploy.core.latents import MAX_SEED
from gan_deploy.generate.device_jpeg import JPEG_ENCODERS
from gan_deploy.generate.pool import KINDS as WRITER_KINDS
from gan_deploy.generate.sinks import sink_class

EXECUTORS = ("local", "ray")
SHARD_EXPECTED = "K/N with 0 <= K < N, e.g. 0/4"

# -- bounds on the resource options: above one, a GanDeployError line names the bound and where it comes from ----
# the index range: latents hash a 64-bit index (core.latents), and numpy, the journal and the shard arithmetic keep
# indices as int64; the bookkeeping grows with what is done, not with n (sinks.base.Bitset is paged)
MAX_IMAGES = 2**63 - 1
# encoder threads release the GIL in zlib/libjpeg/pwrite; beyond a few per core they only wait on one another
WRITER_THREADS_PER_CORE = 16
# an encoder process is CPU-bound: more than a few per core only shares the same cores (a few cover I/O waits)
WRITER_PROCESSES_PER_CORE = 4
# one spawned encoder process: 38 MiB RSS after its imports (measured: numpy, PIL, the sinks), plus a batch's
# encoded files and the encoder's buffers
WRITER_PROCESS_BYTES = 64 << 20
# `auto` starts worker processes only with cores to spare and enough images to pay their start-up (~0.3 s each,
# measured on 2 cores: below this, or on 1-2 cores where the backend needs the same cores, threads win)
PROCESS_MIN_CORES = 3
PROCESS_MIN_IMAGES = 20000
# a local Ray (no RAY_ADDRESS) runs every worker here: each one a process with its own runtime and model
RAY_WORKERS_PER_CORE = 4
RAY_WORKER_BYTES = 512 << 20  # a Ray worker process with onnxruntime (or torch) and the model loaded


def writer_bound(kind: str, cores: int | None = None, avail: int | None = None) -> tuple[int, str]:
    """(the most encoder workers of `kind`, where that bound comes from). Threads: WRITER_THREADS_PER_CORE per core;
    processes: WRITER_PROCESSES_PER_CORE per core and what the available memory holds at WRITER_PROCESS_BYTES each;
    auto: the process bound where `auto` may pick processes (>= PROCESS_MIN_CORES cores), else the thread bound."""
    from gan_deploy.core.hardware import cpu_cores, gib, host_available_bytes

    cores = cores or cpu_cores()
    if kind == "auto":
        kind = "process" if cores >= PROCESS_MIN_CORES else "thread"
    if kind == "thread":
        return WRITER_THREADS_PER_CORE * cores, f"{WRITER_THREADS_PER_CORE} writer threads per core on this {cores}-core machine"
    top, why = WRITER_PROCESSES_PER_CORE * cores, f"{WRITER_PROCESSES_PER_CORE} writer processes per core on this {cores}-core machine"
    avail = host_available_bytes() if avail is None else avail
    if avail is not None:
        by_memory = max(1, int(avail * USABLE) // WRITER_PROCESS_BYTES)
        if by_memory < top:
            top, why = by_memory, (f"{gib(avail)} available memory at about {gib(WRITER_PROCESS_BYTES)} per writer process, "
                                   f"{USABLE:.0%} of it usable")
    return top, why


def ray_workers_bound(cores: int | None = None, avail: int | None = None) -> tuple[int, str] | None:
    """(the most Ray workers, why) for a local Ray; None on a cluster ($RAY_ADDRESS): the cluster's CPUs or GPUs bound
    the workers when it is reached (ray_executor._resources)."""
    import os

    from gan_deploy.core.hardware import cpu_cores, gib, host_available_bytes

    if os.environ.get("RAY_ADDRESS"):
        return None
    cores = cores or cpu_cores()
    top, why = RAY_WORKERS_PER_CORE * cores, f"{RAY_WORKERS_PER_CORE} Ray workers per core on this {cores}-core machine (no RAY_ADDRESS: a local Ray)"
    avail = host_available_bytes() if avail is None else avail
    if avail is not None:
        by_memory = max(1, int(avail * USABLE) // RAY_WORKER_BYTES)
        if by_memory < top:
            top, why = by_memory, f"{gib(avail)} available memory at about {gib(RAY_WORKER_BYTES)} per local Ray worker, {USABLE:.0%} of it usable"
    return top, why


def parse_shard(text: str | None) -> tuple[int, int]:
    """--shard K/N -> (K, N); none: (0, 1), the whole run. An empty value is an error, not the whole run: a job
    array whose variable was unset (`--shard "$K/$N"` gives "/"; `--shard "$SHARD"` gives "") must not have every
    task write every image."""
    if text is None:
        return (0, 1)
    import re

    m = re.fullmatch(r"([0-9]+)/([0-9]+)", text)  # ASCII digits only: int() would take "+1", "1_0" and "٣"
    if m is None:
        raise GanDeployError("bad --shard", repr(text), expected=SHARD_EXPECTED, hint="two decimal numbers, K/N, e.g. --shard 0/4")
    return check_shard((int(m.group(1)), int(m.group(2))), repr(text))


def check_shard(shard: tuple[int, int], shown: str | None = None) -> tuple[int, int]:
    """A job shard (k, n): this is part k of n, 0 <= k < n."""
    try:
        k, n = shard
        ok = isinstance(k, Integral) and isinstance(n, Integral) and n >= 1 and 0 <= k < n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GanDeployError("bad --shard", shown or repr(shard), expected=SHARD_EXPECTED,
                             hint="K counts from 0: the shards of a 4-way split are 0/4, 1/4, 2/4 and 3/4")
    return shard


def shard_indices(n: int, unit: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[start, stop) of this job shard's images: whole units of `unit` images (Sink.shard_unit: one image for the
    folder and array sinks, one tar shard for the tar sink; never the batch size), spread as evenly as N allows.
    More shards than units: some shards are empty, and every unit is in exactly one shard."""
    k, parts = shard
    n_units = -(-n // unit)
    u0, u1 = k * n_units // parts, (k + 1) * n_units // parts
    return min(u0 * unit, n), min(u1 * unit, n)


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
    progress: bool | None = None  # a bar on stderr: True, False, None = on a terminal (core.progress)
    backend: str = "auto"  # which backend (backends.CHOICES)
    device: str = "auto"
    precision: str = "fp32"  # torch_common.TORCH_PRECISIONS, computed by eager / compile (backends.resolve_backend)
    executor: str = "local"  # local | ray
    ray_workers: int | None = None  # with executor ray
    sync_every: float = 1.0  # seconds between fsyncs of the journal
    jpeg_encoder: str = "cpu"  # device_jpeg.JPEG_ENCODERS: cpu (PIL, in the workers) | cuda (nvJPEG on the GPU, main process)
    allow_bad_images: bool = False  # a probe batch of NaN/Inf or out-of-range values: warn and write, not refuse
    space_check: bool = True  # refuse a run whose files (estimated from its first images) exceed the free disk space

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every check that needs neither the model nor the disk, one GanDeployError line each (ranges and choices
        from the library's constants); the sink's own options, the memory and the paths are checked by the Session."""
        from gan_deploy.backends import CHOICES as BACKEND_CHOICES
        from gan_deploy.backends.torch_common import check_precision
        from gan_deploy.core.device import check_device
        from gan_deploy.core.images import FORMATS

        _at_least("bad image count", self.n, 1)
        check_at_most("too many images", "-n", self.n, MAX_IMAGES, "image indices are 64-bit integers")
        _at_least("bad batch size", self.batch_size, 1)
        if not 0 <= self.seed <= MAX_SEED:
            raise GanDeployError("bad seed", self.seed, expected=f"0 <= seed <= {MAX_SEED}")
        if self.fmt is not None and self.fmt not in FORMATS:
            raise GanDeployError("unknown image format", repr(self.fmt), expected=f"one of {', '.join(FORMATS)}")
        cls = sink_class(self.sink)
        if self.fmt is not None and self.fmt not in cls.formats:
            raise GanDeployError(f"the {self.sink} sink cannot store {self.fmt}", repr(self.fmt), expected=" or ".join(cls.formats),
                                 hint=f"use --format {cls.formats[0]}, or --sink folder (or tar) for {self.fmt} files")
        check_shard(self.shard)
        if self.writer_kind not in WRITER_KINDS:
            raise GanDeployError("unknown writer kind", repr(self.writer_kind), expected=" | ".join(WRITER_KINDS))
        if self.writers is not None:
            _at_least("bad number of writers", self.writers, 1)
            top, why = writer_bound(self.writer_kind)
            check_at_most("too many writers", "--writers", self.writers, top, why,
                          hint="leave --writers out for the default (cores - 1 processes, or 2 threads per core)")
        if self.executor not in EXECUTORS:
            raise GanDeployError("unknown executor", repr(self.executor), expected=" or ".join(EXECUTORS))
        if self.ray_workers is not None:
            _at_least("bad number of Ray workers", self.ray_workers, 1)
            bound = ray_workers_bound() if self.executor == "ray" else None
            if bound is not None:
                check_at_most("too many Ray workers", "--ray-workers", self.ray_workers, *bound,
                              hint="leave --ray-workers out (one per CPU), or set RAY_ADDRESS to use a cluster")
        if self.backend not in BACKEND_CHOICES:
            raise GanDeployError("unknown backend", repr(self.backend), expected=f"one of {', '.join(BACKEND_CHOICES)}")
        check_precision(self.precision)
        check_device(self.device)
        from gan_deploy.backends.onnxruntime import env_threads

        env_threads()  # GAN_DEPLOY_THREADS, checked and bounded before the output folder exists (read again by the runtime)
        if self.jpeg_encoder not in JPEG_ENCODERS:
            raise GanDeployError("unknown JPEG encoder", repr(self.jpeg_encoder), expected=" or ".join(JPEG_ENCODERS))
        if self.executor == "ray" and self.jpeg_encoder != "cpu":  # Ray workers encode on their CPUs
            raise GanDeployError("the GPU JPEG encoder with the Ray executor", f"--jpeg-encoder {self.jpeg_encoder}",
                                 expected="--jpeg-encoder cpu with --executor ray", hint="drop --jpeg-encoder, or use --executor local")
        if not self.sync_every > 0:
            raise GanDeployError("bad journal sync interval", self.sync_every, expected="seconds > 0")
        if self.resume and self.overwrite:
            raise GanDeployError("resume and overwrite together", str(self.out), hint="resume continues a run; overwrite starts a new one")
        if self.resume and not self.manifest:
            raise GanDeployError("cannot resume without a manifest", str(self.out), hint="the manifest is the list of what is complete")


def _at_least(what: str, value: int, low: int) -> None:
    if not isinstance(value, Integral) or value < low:
        raise GanDeployError(what, value, expected=f">= {low}")


__all__ = ["EXECUTORS", "MAX_IMAGES", "GenerateOptions", "check_shard", "parse_shard", "ray_workers_bound", "shard_indices",
           "writer_bound"]

"""The local loop of bulk generation: seed-derived latents -> backend -> a sink (image files, tar shards or one
array), with encoding and writing in worker processes (or threads) while the main process keeps the backend busy.

Image i depends only on (seed, i). Batches are aligned to multiples of the batch size from index 0, so a job
shard (`shard=(k, n)`: a share of the image indices, cut independently of the batch size), a resumed run and the
Ray executor compute exactly the batches one uninterrupted run computes (a shard whose edge falls inside a batch
computes that whole batch and keeps its share), and every sink writes the same bytes.

A run, in order: every check that can fail without writing (the options check themselves when built; then the
sink's options, every output path against the command's inputs, the memory a batch of pixels needs on the host
and the backend's batch where it runs: `session.Session`, `backends.memory`; an empty job shard stops here,
writing nothing, exit 0), then the output folder is locked (a second run into it is refused), swept of what a
killed run left, and given its run record (generate.json) and journal (manifest.csv, header only); then the
encoder workers start and the batches run. Whatever stops the run from then on (Ctrl-C, SIGTERM, start-up included, a full disk, a folder in the way, kill -9), the manifest lists the
complete images and only them; `resume=True` finishes the run and the result is byte-identical to an
uninterrupted one.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from gan_deploy.core.latents import latents_range
from gan_deploy.generate.device_jpeg import DeviceJpegEncoder
from gan_deploy.generate.options import PROCESS_MIN_CORES, PROCESS_MIN_IMAGES, GenerateOptions
from gan_deploy.generate.pool import make_pool
from gan_deploy.generate.session import GenerateReport, Session
from gan_deploy.generate.sinks import Sink


def choose_writers(kind: str, writers: int | None, n_images: int, sink: type[Sink], cores: int | None = None) -> tuple[str, int]:
    """(process | thread, how many) encoder workers; `kind` and `writers` as GenerateOptions took them (checked there)."""
    from gan_deploy.core.hardware import cpu_cores

    cores = cores or cpu_cores()
    if kind == "auto":
        # the array sink only copies bytes (pwrite releases the GIL): threads; encoders want processes with spare cores
        kind = "process" if (sink.name != "array" and cores >= PROCESS_MIN_CORES and n_images >= PROCESS_MIN_IMAGES) else "thread"
    if writers is None:
        writers = max(1, cores - 1) if kind == "process" else min(8, 2 * cores)
    return kind, writers


def generate(runner: Any, opts: GenerateOptions, on_batch: Callable[[int], None] | None = None,
             on_start: Callable[[], None] | None = None) -> GenerateReport:
    """Write images [start, stop) of `opts.n` (all of them, or this job shard's share) with `runner` into the sink.
    `on_start()` is called once every check has passed and the model is loaded (so a refusal is one line);
    `on_batch(first_index)` after each batch is handed to the writers (tests use it to interrupt)."""
    from gan_deploy.backends.memory import check_batch_fits

    art = runner.artifact
    session = Session(opts, runner.spec, art.files(), runner.name, runner.device, runner.options.get("precision", "fp32"))
    if session.empty:  # this job shard has no images: nothing is written, and the report says why
        return session.empty_report(runner.name)
    session.set_model(art.kind, art.path, art.sha256)
    kind, writers = choose_writers(opts.writer_kind, opts.writers, session.stop - session.start, session.cls)
    slots = session.check(slots=2 * writers + 2)  # the paths, and the host's ring of pixels
    check_batch_fits(art, session.max_batch, runner.device)  # the backend's batch: latents, images, activations
    encoder = DeviceJpegEncoder() if opts.jpeg_encoder == "cuda" else None  # torchvision: found before anything is written
    session.probe(runner)  # loads the model: images that are not images are refused before the folder is made
    session.open()
    interrupted = complete = False
    seconds_inference = seconds_total = 0.0
    pool = None
    made: list[Any] = []
    restore_term = _sigterm_as_interrupt()  # from here SIGTERM stops the run as Ctrl-C does: start-up included
    t_start = time.perf_counter()
    try:
        try:
            runner.activate()
            if on_start is not None:
                on_start()
            session.start_progress(f"generate [{runner.name}]")
            # a signal while the workers start: those started are stopped (make_pool), the run ends interrupted
            # on_create: the pool as soon as it exists, so a signal as make_pool returns still reaches pool.close
            pool = make_pool(kind, session.sink.worker(), writers, session.on_result, (session.max_batch, *session.shape), slots,
                             on_create=made.append)
            t_start = time.perf_counter()
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
            if pool is None and made:
                pool = made[0]
            if pool is not None:
                # Ctrl-C: the batches already handed out are finished (a bounded few); an error: those queued are skipped
                pool.close(cancel=session.failed or pool.failure is not None)
                if pool.failure is not None:
                    session.discard_undelivered()  # the dead worker's batch: whatever of it reached the disk goes
                    if session.error is None:
                        session.error, session.error_kind = f"an encoder process died ({pool.failure})", "io"
            seconds_total = time.perf_counter() - t_start
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


__all__ = ["GenerateOptions", "choose_writers", "generate"]

"""Batching across requests in one process: `Batcher` (asyncio, one inference thread) and `LocalGenerator`
(a runner built and warmed once, behind a `Batcher`): what answers /generate, in the HTTP process itself or
in each Ray Serve replica.

Each request is cut into pieces of at most `max_batch_size` images (`request.chunks`); the batcher merges
pieces of concurrent requests into one backend call of at most `max_batch_size` images, waiting at most
`batch_wait_s` after the first waiting piece arrived for company (and not at all once the batch is full).
The backend runs on one thread (runners are not promised to be thread-safe, and CUDA state is per thread), so
the event loop keeps accepting requests and forming the next batch while one runs. A piece whose request
went away (its future was cancelled) is dropped before its batch forms. No Ray here.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from gan_deploy.serve.metrics import Metrics
from gan_deploy.serve.request import ImageRequest, chunks, request_latents


class Batcher:
    """`await run(seeds, indices)`: the pixels of those k (seed, index) pairs (k <= max_batch_size), computed
    in one backend call with other waiting pieces, and when that call started (perf_counter). `infer(seeds,
    indices)` runs on the inference thread, latents included: their hashing is CPU the event loop keeps."""

    def __init__(self, infer: Callable[[list[int], list[int]], np.ndarray], max_batch_size: int, batch_wait_s: float,
                 metrics: Metrics | None = None, pool: ThreadPoolExecutor | None = None):
        self.infer, self.max_batch_size, self.batch_wait_s, self.metrics = infer, max_batch_size, batch_wait_s, metrics
        self.pool = pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="gan-deploy-infer")
        self._waiting: deque[tuple[tuple[list[int], list[int]], asyncio.Future, float]] = deque()
        self._images = 0  # images in _waiting
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def run(self, seeds: list[int], indices: list[int]) -> tuple[np.ndarray, float]:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop())
        fut: asyncio.Future = loop.create_future()
        self._waiting.append(((seeds, indices), fut, time.perf_counter()))
        self._images += len(seeds)
        assert self._wake is not None
        self._wake.set()
        return await fut

    def _take(self) -> list[tuple[tuple[list[int], list[int]], asyncio.Future]]:
        """Pieces for one backend call: the oldest first, up to max_batch_size images (a piece is never split)."""
        out: list[tuple[tuple[list[int], list[int]], asyncio.Future]] = []
        n = 0
        while self._waiting:
            piece, fut, _ = self._waiting[0]
            k = len(piece[0])
            if fut.done():  # cancelled: its client left
                self._waiting.popleft()
                self._images -= k
                continue
            if out and n + k > self.max_batch_size:
                break
            self._waiting.popleft()
            self._images -= k
            out.append((piece, fut))
            n += k
        return out

    async def _loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                wake.clear()
                await wake.wait()
                continue
            # wait for company until the batch is full or the first waiting piece has waited batch_wait_s
            deadline = self._waiting[0][2] + self.batch_wait_s
            while self._images < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            pieces = self._take()
            if not pieces:
                continue
            seeds = [s for (ss, _), _ in pieces for s in ss]
            indices = [i for (_, ii), _ in pieces for i in ii]
            t0 = time.perf_counter()
            try:
                pixels = await loop.run_in_executor(self.pool, self.infer, seeds, indices)
            except Exception as e:  # every waiting request gets the error (a 500), the loop goes on
                for _, fut in pieces:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if self.metrics is not None:
                self.metrics.record_batch(len(seeds), time.perf_counter() - t0)
            a = 0
            for (ss, _), fut in pieces:
                if not fut.done():
                    fut.set_result((pixels[a:a + len(ss)], t0))
                a += len(ss)


class LocalGenerator:
    """A runner built and warmed once, behind a Batcher: `await pixels(req)` -> uint8 [N, H, W, C] for the
    request's (seed, index) pairs, in order."""

    def __init__(self, cfg: Any, metrics: Metrics | None = None):
        """`cfg`: a ServeConfig (backend and device settled or "auto")."""
        from gan_deploy.backends import make_runner

        self.cfg = cfg
        self.artifact = cfg.artifact
        self.spec = cfg.artifact.spec
        # onnxruntime's pool threads spin-wait after each run: here they would take the CPU the event loop needs
        # to parse, encode and answer requests meanwhile (on 2 loaded cores, 1-image requests: ~2x slower with spinning)
        opts: dict[str, Any] = {"spin": False} if cfg.backend == "onnxruntime" else {}
        self.runner = make_runner(cfg.backend, cfg.artifact, cfg.device, **opts).activate()
        from gan_deploy.precision.runtime_gate import require_runtime_gate
        require_runtime_gate(self.runner)  # a reduced-precision model on a runtime quantize did not gate it on
        self.metrics = metrics
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gan-deploy-infer")
        for n in sorted({1, cfg.max_batch_size}):  # first-call costs (allocations, kernels) before "ready",
            # on the thread that will run every later call (CUDA state such as graphs is per thread's stream)
            pool.submit(self._infer, [0] * n, list(range(n))).result()
        self.batcher = Batcher(self._infer, cfg.max_batch_size, cfg.batch_wait_ms / 1000.0, metrics, pool)


    def attach_metrics(self, metrics: Metrics) -> None:
        """Record queue times and batches into `metrics` (the service's, so /metrics shows them)."""
        self.metrics = self.batcher.metrics = metrics
    def _infer(self, seeds: list[int], indices: list[int]) -> np.ndarray:
        # latents (one vectorized call per distinct seed), then [N, H, W, C] uint8; a GPU runner converts on the
        # device and copies a quarter of the bytes
        return self.runner.infer_pixels(request_latents(ImageRequest(seeds, indices), self.spec.latent_dim))

    def describe(self) -> str:
        return self.runner.describe()

    @property
    def backend_name(self) -> str:
        return self.runner.name

    async def pixels(self, seeds: list[int], indices: list[int]) -> np.ndarray:
        t_admitted = time.perf_counter()
        n, size = len(seeds), self.cfg.max_batch_size
        if n <= size:  # one piece: no gather (a task per piece)
            parts = [await self.batcher.run(seeds, indices)]
        else:
            parts = await asyncio.gather(*(self.batcher.run(seeds[a:b], indices[a:b]) for a, b in chunks(n, size)))
        if self.metrics is not None:
            self.metrics.record_queue(max(t for _, t in parts) - t_admitted)
        return parts[0][0] if len(parts) == 1 else np.concatenate([p for p, _ in parts])

    def close(self) -> None:
        self.batcher.pool.shutdown(wait=False, cancel_futures=True)

"""`gan-deploy serve`: the generator as an HTTP service on Ray Serve, batching requests across clients.

Ray Serve owns the HTTP proxy, routing, replicas and scale-out (the same app runs on a Ray cluster with
more replicas, unchanged); this module owns what is specific to a generator:

* batching: every request is cut into pieces of at most `max_batch_size` images, and `@serve.batch`
  (with `batch_size_fn` counting images, not requests) merges pieces of concurrent requests into one
  backend call of at most `max_batch_size` images, waiting at most `batch_wait_ms` for company;
* the request contract, errors and metrics of `gan_deploy.serve.api`; images are byte-identical to the
  files `gan-deploy generate` writes for the same (seed, index) — on backends whose output for one image
  does not depend on the rest of its batch (onnxruntime and eager on CPU are checked by the tests);
* bounds: at most `max_images_per_request` images and `max_body_bytes` per request, at most `max_queued`
  /generate requests in a replica (more get a JSON 503 with Retry-After), and Ray's own
  `max_queued_requests` in front as a second line (Ray answers 503 itself when its queue is full).

This module imports Ray; `import gan_deploy` and `gan-deploy --help` never import it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gan_deploy import __version__
from gan_deploy.serve.api import (
    FIELDS,
    RESPONSE_FORMATS,
    Metrics,
    RequestError,
    ServeConfig,
    check_port_free,
    chunks,
    parse_request,
    prometheus_text,
    render,
    request_latents,
)

APP_NAME = "gan-deploy"
RETRY_AFTER_S = "1"


def _images_in(pieces: list[np.ndarray]) -> int:
    """Batch size in images (each batched call carries a [k, Z] latent piece), not in calls."""
    return sum(len(z) for z in pieces)


def _error(status: int, field: str | None, value: Any, expected: str, message: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(RequestError(status, field, value, expected, message).body(), status_code=status, headers=headers)


@serve.deployment(name="GanGenerator")
class GeneratorDeployment:
    """One replica: a runner built once, a batch queue, admission control and metrics."""

    def __init__(self, config: dict[str, Any]):
        from gan_deploy.artifacts.load import load_artifact
        from gan_deploy.backends import make_runner
        from gan_deploy.core.errors import StaleArtifact
        from gan_deploy.core.latents import latents_range

        cfg = self.cfg = ServeConfig(**config)
        paths = {cfg.artifact_kind: cfg.artifact_path}
        art = load_artifact(paths.get("checkpoint"), paths.get("onnx"), paths.get("engine"),
                            tuple(cfg.value_range) if cfg.value_range else None)
        if art.sha256 != cfg.artifact_sha256:
            raise StaleArtifact("the model file on this replica differs from the one `serve` was started with", f"{art.path} sha256 {art.sha256[:12]}", expected=f"sha256 {cfg.artifact_sha256[:12]}", hint="copy the same file to every node (or use a shared filesystem)")
        self.artifact = art
        self.runner = make_runner(cfg.backend, art, cfg.device).activate()
        self.spec = art.spec
        # one thread: backend calls stay serialized (runners are not promised to be thread-safe), and the
        # event loop stays free to accept requests and form the next batch while this one runs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gan-deploy-infer")
        for n in sorted({1, cfg.max_batch_size}):  # first-call costs (allocations, kernels) before "ready",
            # on the thread that will run every later call (CUDA state such as graphs is per thread's stream)
            self._pool.submit(self.runner.infer, latents_range(0, 0, n, self.spec.latent_dim)).result()
        self._infer_pieces.set_max_batch_size(cfg.max_batch_size)
        self._infer_pieces.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1000.0)
        self.metrics = Metrics()
        self.in_flight = 0

    # -- batching --------------------------------------------------------------------------------------
    def _pixels(self, z: np.ndarray) -> np.ndarray:
        from gan_deploy.core.images import to_uint8
        return to_uint8(self.runner.infer(z), self.spec.value_range)  # [N, H, W, C] uint8

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=_images_in)
    async def _infer_pieces(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        """Pieces of one or more requests -> one backend call -> each piece's pixels."""
        z = np.concatenate(pieces)
        pixels = await asyncio.get_running_loop().run_in_executor(self._pool, self._pixels, z)
        self.metrics.record_batch(len(z))
        bounds = np.cumsum([len(p) for p in pieces])[:-1]
        return np.split(pixels, bounds)

    # -- HTTP ------------------------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        path = request.scope["path"][len(request.scope.get("root_path", "")):] or "/"
        method = request.method
        if path == "/generate":
            if method != "POST":
                return _error(405, None, method, "POST with a JSON body", "use POST /generate", {"Allow": "POST"})
            return await self._generate(request)
        if path in ("/healthz", "/metrics", "/"):
            if method not in ("GET", "HEAD"):
                return _error(405, None, method, "GET", f"use GET {path}", {"Allow": "GET, HEAD"})
            if path == "/healthz":
                return JSONResponse({"status": "ok", "model": self.artifact.describe(), "backend": self.runner.describe(),
                                     "sha256": self.artifact.sha256, "version": __version__})
            if path == "/metrics":
                snap = self.snapshot()
                if request.query_params.get("format") == "prometheus":
                    return Response(prometheus_text(snap), media_type="text/plain; version=0.0.4")
                return JSONResponse({k: v for k, v in snap.items() if not k.startswith("_")})
            return JSONResponse(self.describe())
        return _error(404, None, path, "one of /generate (POST), /healthz, /metrics, /", "no such route")

    def snapshot(self) -> dict[str, Any]:
        return self.metrics.snapshot(in_flight=self.in_flight, config={
            "backend": self.runner.name, "max_batch_size": self.cfg.max_batch_size, "batch_wait_ms": self.cfg.batch_wait_ms,
            "max_images_per_request": self.cfg.max_images_per_request, "max_queued": self.cfg.max_queued})

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {"service": "gan-deploy", "version": __version__, "model": self.artifact.describe(),
                "image_shape": [s.height, s.width, s.channels], "fields": list(FIELDS), "formats": list(RESPONSE_FORMATS),
                "max_images_per_request": self.cfg.max_images_per_request,
                "routes": {"POST /generate": "images; see docs/serving.md", "GET /healthz": "liveness",
                           "GET /metrics": "JSON, or ?format=prometheus"}}

    async def _generate(self, request: Request) -> Response:
        t0 = time.perf_counter()
        if self.in_flight >= self.cfg.max_queued:
            self.metrics.record_request(503)
            return _error(503, None, self.in_flight, f"at most {self.cfg.max_queued} requests queued per replica",
                          "overloaded; retry after a moment", {"Retry-After": RETRY_AFTER_S})
        self.in_flight += 1
        try:
            try:
                req = parse_request(await self._body(request), self.cfg.max_images_per_request)
            except RequestError as e:
                self.metrics.record_request(e.status)
                return JSONResponse(e.body(), status_code=e.status)
            z = request_latents(req, self.spec.latent_dim)
            try:
                parts = await asyncio.gather(*(self._infer_pieces(z[a:b]) for a, b in chunks(len(req), self.cfg.max_batch_size)))
            except Exception as e:  # a backend failure answers 500 and leaves the service running
                self.metrics.record_request(500)
                return _error(500, None, type(e).__name__, "a working backend", f"inference failed: {e}")
            pixels = parts[0] if len(parts) == 1 else np.concatenate(parts)
            # PNG encoding of a large response is milliseconds of CPU: off the event loop (zlib drops the GIL)
            body, media_type, headers = await asyncio.to_thread(render, req, pixels)
            self.metrics.record_request(200, len(req), time.perf_counter() - t0)
            return Response(body, media_type=media_type, headers=headers)
        finally:
            self.in_flight -= 1

    async def _body(self, request: Request) -> bytes:
        """The request body, refusing (413) more than max_body_bytes without reading it all."""
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, None, f"{declared} bytes", f"a body of at most {limit} bytes", "request body too large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, None, f"more than {limit} bytes", f"a body of at most {limit} bytes", "request body too large")
        return bytes(body)


# -- building and running -----------------------------------------------------------------------------

def build_app(cfg: ServeConfig):
    """The Ray Serve application for `cfg` (not yet running)."""
    # Ray's own limits sit in front of ours: enough concurrency that a full batch (in requests) and our
    # own overload answer (JSON 503, from the replica that knows its queue) are reachable, and a router
    # queue that sheds load with Ray's plain 503 only in bursts far beyond that. Ray's router counts a
    # request as queued until it has picked a replica, so a limit as tight as ours would fire on any burst.
    max_ongoing = max(cfg.max_queued, cfg.max_batch_size) + 16
    max_router_queue = 4 * max_ongoing
    return GeneratorDeployment.options(
        num_replicas=cfg.num_replicas, max_ongoing_requests=max_ongoing, max_queued_requests=max_router_queue,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    ).bind(cfg.to_dict())


def start(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, route_prefix: str = "/", name: str = APP_NAME,
          ray_address: str | None = None, access_log: bool = False) -> str:
    """Start Ray (local, or connect to `ray_address` / $RAY_ADDRESS), Serve's proxy on host:port, and the app.

    Returns the app's base URL. Ray stays up for further apps (tests run two); `stop()` tears it down."""
    import ray

    if not ray.is_initialized():
        address = ray_address or os.environ.get("RAY_ADDRESS")
        if not address:
            check_port_free(host, port)  # Ray's proxy would fail later, in a log nobody reads
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    logging_config = {"log_level": "WARNING", "enable_access_log": access_log}
    serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
    serve.run(build_app(cfg), name=name, route_prefix=route_prefix, logging_config=logging_config)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def stop() -> None:
    import ray
    serve.shutdown()
    ray.shutdown()


def serve_forever(cfg: ServeConfig, host: str, port: int, ray_address: str | None = None, access_log: bool = False,
                  ready=None) -> None:
    """Run until Ctrl-C (or SIGTERM); `ready(url)` is called once the service answers."""
    import signal

    def _term(*_: object) -> None:
        raise KeyboardInterrupt

    url = start(cfg, host, port, ray_address=ray_address, access_log=access_log)
    # after ray.init, which installs its own SIGTERM handler: `kill` or a container stop gets the same
    # clean shutdown as Ctrl-C (Serve's proxy and replicas are detached actors: they must be shut down)
    signal.signal(signal.SIGTERM, _term)
    try:
        if ready is not None:
            ready(url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()

"""The generator's Ray Serve deployment: one replica (`GeneratorDeployment`) and the application (`build_app`).

Ray Serve owns the HTTP proxy, routing, replicas and scale-out (the same app runs on a Ray cluster with
more replicas, unchanged, or from the config file `config_file.serve_config()` writes, whose import path is
`app_builder`). `driver.py` starts Ray, deploys this and stops it. Each replica of the one deployment,
`GanGenerator`, has

* a runner built and warmed once, and batching: every request is cut into pieces of at most `max_batch_size`
  images, and `@serve.batch` (with `batch_size_fn` counting images, not requests) merges pieces of concurrent
  requests into one backend call of at most `max_batch_size` images, waiting at most `batch_wait_ms` for
  company. The backend runs on one inference thread, so the event loop stays free. Images are byte-identical
  to the files `gan-deploy generate` writes for the same (seed, index), on backends whose output for one image
  does not depend on the rest of its batch (onnxruntime and eager on CPU are checked by the tests);
* the HTTP contract of `gan_deploy.serve.request`, with limits applied in an order that keeps one client from
  holding others up: the body is read (bounded by `read_timeout_s` and `body_limit`) *before* the request
  takes one of the `max_queued` slots; a full replica answers a JSON 503 with Retry-After at once; every
  request is bounded by `request_timeout_s`; /healthz, /readyz and /metrics are answered on arrival, never
  queued (Ray's own per-replica limit is far above `max_queued`, so they are not held in Ray's router either)
  and never behind inference; `drain()` stops admitting and waits for what is in flight.

`proxy_hooks` adds the same admission in Ray's proxy, where a refusal costs no routing at all.

This module imports Ray at import time (its decorators); `import gan_deploy` and `gan-deploy --help` never
import it.
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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gan_deploy import __version__
from gan_deploy.serve.config import ServeConfig
from gan_deploy.serve.config_file import GENERATOR, deployment_options
from gan_deploy.serve.metrics import Metrics, prometheus_text, public_json
from gan_deploy.serve.proxy_hooks import limits_header
from gan_deploy.serve.request import (
    CACHE_CONTROL,
    FIELDS,
    RESPONSE_FORMATS,
    ImageRequest,
    RequestError,
    chunks,
    etag,
    header_bytes,
    json_bytes,
    parse_request,
    parse_v2_infer,
    render,
    request_latents,
)

LIMITS_HEADER = "x-gan-deploy-limits"
logger = logging.getLogger("ray.serve")


def _replica_grpc_on_loopback() -> None:
    """Ray Serve replicas open an inter-deployment gRPC server on "[::]:0" (every interface), hard-coded. In
    Ray's single-machine mode (every Ray process on loopback: `local_ray_env`), bind it to 127.0.0.1 like the
    rest: replicas are reached at their node address, which is 127.0.0.1 there. Runs where this module is
    imported, i.e. in each replica before Ray starts that server; a no-op with any other Ray layout."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        return
    try:
        from ray.serve._private import replica as ray_replica
    except ImportError:
        return
    original = getattr(ray_replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_gan_deploy_loopback", False):
        return

    def add_port_to_grpc_server(server: Any, address: str) -> int:
        return original(server, "127.0.0.1:" + address[len("[::]:"):] if address.startswith("[::]:") else address)

    add_port_to_grpc_server._gan_deploy_loopback = True  # type: ignore[attr-defined]
    ray_replica.add_port_to_grpc_server = add_port_to_grpc_server


_replica_grpc_on_loopback()


def _images_in(pieces: list[np.ndarray]) -> int:
    """Batch size in images (each batched call carries a [k, Z] latent piece), not in calls."""
    return sum(len(z) for z in pieces)


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(obj), status_code=status, media_type="application/json", headers=headers)


def _error_response(e: RequestError, extra_headers: dict[str, str] | None = None) -> Response:
    return Response(e.body_bytes(), status_code=e.status, media_type="application/json",
                    headers={**e.headers, **(extra_headers or {})})


@serve.deployment(name=GENERATOR)
class GeneratorDeployment:
    """One replica: a runner built once, a batch queue, the HTTP contract, admission, health, metrics, drain."""

    def __init__(self, config: dict[str, Any]):
        """`config`: `ServeConfig.to_dict()`; the model file is loaded again here and must have its sha256."""
        from gan_deploy.backends import make_runner
        from gan_deploy.core.latents import latents_range

        cfg = self.cfg = ServeConfig.from_dict(config)
        art = self.artifact = cfg.artifact
        self.runner = make_runner(cfg.backend, art, cfg.device).activate()
        from gan_deploy.precision.runtime_gate import require_runtime_gate
        require_runtime_gate(self.runner)  # a reduced-precision model on a runtime quantize did not gate it on
        self.spec = art.spec
        # one thread: backend calls stay serialized (runners are not promised to be thread-safe), and the
        # event loop stays free to accept requests and form the next batch while this one runs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gan-deploy-infer")
        for n in sorted({1, cfg.max_batch_size}):  # first-call costs (allocations, kernels) before "ready",
            # on the thread that will run every later call (CUDA state such as graphs is per thread's stream)
            self._pool.submit(self.runner.infer, latents_range(0, 0, n, self.spec.latent_dim)).result()
        self._infer_pieces.set_max_batch_size(cfg.max_batch_size)
        self._infer_pieces.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1000.0)
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (tests)
            self.replica = "local"
        self.metrics = Metrics()
        self.in_flight = 0  # admitted /generate requests not yet answered
        self.draining = False

    # -- batching --------------------------------------------------------------------------------------
    def _pixels(self, z: np.ndarray) -> np.ndarray:
        # [N, H, W, C] uint8; a GPU runner converts on the device and copies a quarter of the bytes
        return self.runner.infer_pixels(z)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=_images_in)
    async def _infer_pieces(self, pieces: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """Pieces of one or more requests -> one backend call -> each piece's (pixels, when the call started)."""
        z = np.concatenate(pieces)
        t0 = time.perf_counter()
        pixels = await asyncio.get_running_loop().run_in_executor(self._pool, self._pixels, z)
        self.metrics.record_batch(len(z), time.perf_counter() - t0)
        bounds = np.cumsum([len(p) for p in pieces])[:-1]
        return [(p, t0) for p in np.split(pixels, bounds)]

    async def _images(self, req: ImageRequest) -> tuple[bytes, str, dict[str, str]]:
        t_admitted = time.perf_counter()
        z = request_latents(req, self.spec.latent_dim)
        try:
            parts = await asyncio.gather(*(self._infer_pieces(z[a:b]) for a, b in chunks(len(req), self.cfg.max_batch_size)))
        except Exception as e:  # a backend failure answers 500 and leaves the service running
            msg = str(e).splitlines()[0][:300] if str(e) else ""
            raise RequestError(500, None, type(e).__name__, "a working backend", f"inference failed: {msg}", "backend_failed") from None
        self.metrics.record_queue(max(t for _, t in parts) - t_admitted)
        pixels = parts[0][0] if len(parts) == 1 else np.concatenate([p for p, _ in parts])
        # PNG encoding of a large response is milliseconds of CPU: off the event loop (zlib drops the GIL)
        return await asyncio.to_thread(render, req, pixels, self.cfg.model_name)

    # -- readiness and drain ---------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, RequestError | None]:
        """Ready: the model is loaded and warmed (Ray routes to a replica only once its constructor, which
        does both, returned), not draining, and the queue has room."""
        if self.draining:
            return False, RequestError(503, None, None, "another instance", "the service is draining before shutdown", "draining")
        if self.in_flight >= self.cfg.max_queued:
            return False, RequestError(503, None, self.in_flight, f"fewer than {self.cfg.max_queued} requests in flight", "the queue is full", "overloaded")
        return True, None

    async def drain(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop admitting (new requests get 503 + Connection: close, /readyz 503), then wait until every admitted
        request was answered or `timeout_s` passed. Returns what was left."""
        timeout_s = self.cfg.drain_timeout_s if timeout_s is None else timeout_s
        self.draining = True
        t0 = time.monotonic()
        while self.in_flight > 0 and time.monotonic() - t0 < timeout_s:
            await asyncio.sleep(0.02)
        return {"replica": self.replica, "in_flight_left": self.in_flight, "waited_s": round(time.monotonic() - t0, 3)}

    # -- HTTP ------------------------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        t0 = time.perf_counter()
        scope = request.scope
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] or "/"
        method = request.method
        route = "/v2" if path.startswith("/v2") else path
        infer = route == "/generate" or (route == "/v2" and path.endswith("/infer"))
        reason: str | None = None
        try:
            try:
                resp, reason = await asyncio.wait_for(self._dispatch(request, path, method, t0), self.cfg.request_timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(504, None, f"{self.cfg.request_timeout_s:g} s", f"an answer within {self.cfg.request_timeout_s:g} s",
                                   "the request took longer than the request timeout", "request_timeout") from None
        except RequestError as e:
            resp, reason = _error_response(e, {"Connection": "close"} if self.draining or e.status in (408, 413, 431) else None), e.reason
        except (ClientDisconnect, asyncio.CancelledError):
            # the client went away: nobody will read an answer; one counter, no traceback in the logs
            self.metrics.record_disconnect(route)
            if infer:
                self.metrics.record_request(499)
            raise asyncio.CancelledError from None
        except Exception as e:  # a bug: still a JSON 500, counted, one line in the log
            logger.warning(f"gan-deploy: internal error on {method} {path}: {type(e).__name__}: {e}")
            err = RequestError(500, None, type(e).__name__, "a working service", f"internal error: {e}", "internal")
            resp, reason = _error_response(err), err.reason
        if infer and resp.status_code != 200:
            self.metrics.record_request(resp.status_code)
        self.metrics.record_http(route, method, resp.status_code, reason)
        # for proxy_hooks (which strips it): admission in Ray's proxy, before a request is routed at all
        resp.headers[LIMITS_HEADER] = limits_header([f"{root}/generate", f"{root}/v2/models/{self.cfg.model_name}/infer"],
                                                    f"{root}/metrics", self.cfg.capacity, self.cfg.read_timeout_s, self.cfg.body_limit)
        return resp

    async def _dispatch(self, request: Request, path: str, method: str, t0: float) -> tuple[Response, str | None]:
        size = header_bytes(request.scope.get("headers", []))
        if size > self.cfg.max_header_bytes:
            raise RequestError(431, None, f"{size} bytes", f"request headers of at most {self.cfg.max_header_bytes} bytes",
                               "request headers too large", "headers_too_large")
        if path == "/generate":
            if method != "POST":
                raise RequestError(405, None, method, "POST with a JSON body", "use POST /generate", "method_not_allowed", {"Allow": "POST"})
            return await self._generate(request, t0, kserve=False), None
        if path.startswith("/v2"):
            return await self._v2(request, path, method, t0)
        if path in ("/healthz", "/readyz", "/metrics", "/"):
            if method not in ("GET", "HEAD"):
                raise RequestError(405, None, method, "GET", f"use GET {path}", "method_not_allowed", {"Allow": "GET, HEAD"})
            if path == "/healthz":  # liveness: this replica's event loop answers; nothing here waits for a batch
                return _json(200, {"status": "ok", "ready": self.readiness()[0], "version": __version__,
                                   "model": self.artifact.describe(), "sha256": self.artifact.sha256,
                                   "backend": self.runner.describe(), "replica": self.replica}), None
            if path == "/readyz":
                ok, why = self.readiness()
                if not ok:
                    assert why is not None
                    raise why
                return _json(200, {"status": "ready", "in_flight": self.in_flight, "max_queued": self.cfg.max_queued,
                                   "replica": self.replica}), None
            if path == "/metrics":
                snap = self.snapshot()
                fmt = request.query_params.get("format", "prometheus")
                if fmt == "json":
                    return _json(200, public_json(snap)), None
                if fmt != "prometheus":
                    raise RequestError(422, "format", fmt, "prometheus (default) or json", "unknown metrics format", "out_of_range")
                return Response(prometheus_text(snap), media_type="text/plain; version=0.0.4; charset=utf-8"), None
            return _json(200, self.describe()), None
        raise RequestError(404, None, path, "one of POST /generate, GET /healthz, /readyz, /metrics, /, /v2/...", "no such route", "not_found")

    def _admit(self) -> None:
        if self.draining:
            raise RequestError(503, None, None, "another instance", "the service is draining before shutdown", "draining")
        if self.in_flight >= self.cfg.max_queued:
            raise RequestError(503, None, self.in_flight, f"at most {self.cfg.max_queued} requests in flight per replica",
                               "overloaded; retry after a moment", "overloaded")

    async def _generate(self, request: Request, t0: float, kserve: bool) -> Response:
        self._admit()  # a full queue answers at once, before waiting for the body
        body = await self._body(request)
        req, request_id = parse_v2_infer(body, self.cfg.max_images_per_request) if kserve else \
            (parse_request(body, self.cfg.max_images_per_request), None)
        self._admit()  # and again: admission is decided once the body is in
        self.in_flight += 1
        try:
            body_out, media_type, headers = await self._images(req)
        finally:
            self.in_flight -= 1
        self.metrics.record_request(200, len(req), time.perf_counter() - t0)
        if kserve and request_id is not None:  # the id goes back verbatim
            body_out = body_out[:-1] + b',"id":' + json_bytes(request_id) + b"}"
        headers = {**headers, "ETag": etag(self.artifact.sha256, req), "Cache-Control": CACHE_CONTROL}
        if self.draining:
            headers["Connection"] = "close"
        return Response(body_out, media_type=media_type, headers=headers)

    async def _body(self, request: Request) -> bytes:
        """The whole request body, bounded in size (413) and in time (408): read before the request takes a
        queue slot, so a client that announces 100 bytes and sends 12 only holds its own connection."""
        limit, timeout = self.cfg.body_limit, self.cfg.read_timeout_s
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise RequestError(400, "Content-Length", declared, "a byte count", "malformed Content-Length header", "bad_json")
            if int(declared) > limit:
                raise RequestError(413, None, f"{declared} bytes", f"a body of at most {limit} bytes", "request body too large", "body_too_large")
        body = bytearray()

        async def read() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    raise RequestError(413, None, f"more than {limit} bytes", f"a body of at most {limit} bytes", "request body too large", "body_too_large")
        try:
            await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            got = f"{len(body)} of {declared} bytes" if declared is not None else f"{len(body)} bytes"
            raise RequestError(408, None, got, f"the whole body within {timeout:g} s (--read-timeout)",
                               "the request body arrived too slowly", "body_timeout") from None
        return bytes(body)

    # -- KServe v2 / Open Inference Protocol -------------------------------------------------------------
    async def _v2(self, request: Request, path: str, method: str, t0: float) -> tuple[Response, str | None]:
        name = self.cfg.model_name
        parts = [p for p in path.split("/") if p]  # ["v2", ...]
        get_routes = {("v2",), ("v2", "health", "live"), ("v2", "health", "ready"), ("v2", "models", name),
                      ("v2", "models", name, "ready")}
        key = tuple(parts)
        if key == ("v2", "models", name, "infer"):
            if method != "POST":
                raise RequestError(405, None, method, "POST", f"use POST /v2/models/{name}/infer", "method_not_allowed", {"Allow": "POST"})
            return await self._generate(request, t0, kserve=True), None
        if key not in get_routes:
            if len(parts) >= 3 and parts[1] == "models" and parts[2] != name:
                raise RequestError(404, "model", parts[2], f"the model {name!r}", "no such model", "not_found")
            raise RequestError(404, None, path, f"/v2, /v2/health/live|ready, /v2/models/{name}[/ready|/infer]", "no such route", "not_found")
        if method not in ("GET", "HEAD"):
            raise RequestError(405, None, method, "GET", f"use GET {path}", "method_not_allowed", {"Allow": "GET, HEAD"})
        if key == ("v2",):
            return _json(200, {"name": "gan-deploy", "version": __version__, "extensions": []}), None
        if key == ("v2", "health", "live"):
            return _json(200, {"live": True}), None
        if key in (("v2", "health", "ready"), ("v2", "models", name, "ready")):
            ok, why = self.readiness()
            if not ok:
                assert why is not None
                raise why
            return (_json(200, {"ready": True}) if key[1] == "health" else _json(200, {"name": name, "ready": True})), None
        s = self.spec
        return _json(200, {"name": name, "versions": ["1"], "platform": "gan-deploy",
                           "inputs": [{"name": "seed", "datatype": "INT64", "shape": [-1]},
                                      {"name": "index", "datatype": "INT64", "shape": [-1]}],
                           "outputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, s.height, s.width, s.channels]}]}), None

    # -- views ---------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return self.metrics.snapshot(
            in_flight=self.in_flight, capacity=self.cfg.max_queued, ready=int(self.readiness()[0]), draining=int(self.draining),
            replicas=self.cfg.num_replicas, replica=self.replica,
            build={"version": __version__, "model_sha256": self.artifact.sha256[:16], "backend": self.runner.name},
            config={"backend": self.runner.name, "max_batch_size": self.cfg.max_batch_size, "batch_wait_ms": self.cfg.batch_wait_ms,
                    "max_images_per_request": self.cfg.max_images_per_request, "max_queued": self.cfg.max_queued,
                    "replicas": self.cfg.num_replicas, "read_timeout_s": self.cfg.read_timeout_s,
                    "request_timeout_s": self.cfg.request_timeout_s, "max_body_bytes": self.cfg.body_limit,
                    "max_header_bytes": self.cfg.max_header_bytes})

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {"service": "gan-deploy", "version": __version__, "model": self.artifact.describe(),
                "sha256": self.artifact.sha256, "image_shape": [s.height, s.width, s.channels],
                "fields": list(FIELDS), "formats": list(RESPONSE_FORMATS),
                "max_images_per_request": self.cfg.max_images_per_request,
                "routes": {"POST /generate": "images; see docs/serving.md", "GET /healthz": "liveness",
                           "GET /readyz": "readiness (model warmed, not draining, queue not full)",
                           "GET /metrics": "Prometheus text, or ?format=json",
                           f"POST /v2/models/{self.cfg.model_name}/infer": "KServe v2 / Open Inference Protocol"}}


# -- the application ---------------------------------------------------------------------------------

def build_app(cfg: ServeConfig):
    """The Ray Serve application for `cfg` (not yet running)."""
    return _application(cfg.to_dict())


def app_builder(args: dict[str, Any]):
    """`import_path` of the config file (`config_file.IMPORT_PATH`) with args {"config": ServeConfig.to_dict()}.

    Builds from the plain data without loading the model: the task that builds the app may run on a node
    without the file; each replica loads it (and checks its sha256) in its constructor."""
    return _application(args["config"])


def _application(config: dict[str, Any]):
    from ray.serve.config import BackpressureConfig

    return GeneratorDeployment.options(**deployment_options(config)[GENERATOR], backpressure_config=BackpressureConfig(retry_after_s=1)).bind(
        config)

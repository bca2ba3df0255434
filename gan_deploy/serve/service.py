"""The HTTP application: `GanService`, a plain ASGI app that owns the service's contract (`serve/request.py`),
its limits, admission, health, readiness, drain and metrics, in front of a generator (`LocalGenerator` in this
process, or `deployment.RayGenerator`: Ray Serve replicas reached through a `DeploymentHandle`).

`serve/edge.py` runs it under uvicorn (our listener: connection cap, header timeout, JSON for malformed
HTTP); a Ray Serve replica runs the same app when Ray's own proxy is the listener (the config file, on a
cluster). The order of the checks keeps one client from holding others up: headers, Host and Content-Type
first; the body is read (bounded by `read_timeout_s` and `body_limit`) *before* the request takes one of the
`capacity` slots; a full service answers a JSON 503 with Retry-After at once; every request is bounded by
`request_timeout_s`; a slot is freed the moment the answer is ready, before it is sent, so a client that
sends its next request the moment it has its answer finds its slot free (refusals only past capacity);
/healthz, /readyz and /metrics are answered on arrival and never wait behind inference. No Ray here.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import numpy as np

from gan_deploy import __version__
from gan_deploy.serve.config import ServeConfig
from gan_deploy.serve.metrics import Metrics, prometheus_text, public_json
from gan_deploy.serve.request import (
    CACHE_CONTROL,
    FIELDS,
    RESPONSE_FORMATS,
    RequestError,
    etag,
    header_bytes,
    json_bytes,
    parse_request,
    parse_v2_infer,
    render,
)

logger = logging.getLogger("gan_deploy.serve")
PROBES = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")  # answered even past the connection cap
EXCESS_KEY = "gan_deploy.excess"  # set in the scope by the edge for a connection past --max-connections
REJECTED_KEY = "gan_deploy.rejected"  # set by the edge when it answered the request itself (malformed body framing)
RENDER_INLINE = 4  # responses of at most this many images are encoded on the event loop (a thread hop costs more)


class Generator(Protocol):
    """What answers /generate: the pixels of (seed, index) pairs."""

    async def pixels(self, seeds: list[int], indices: list[int]) -> np.ndarray: ...

    def describe(self) -> str: ...

    @property
    def backend_name(self) -> str: ...


class _Gone(Exception):
    """The client disconnected."""


def _json_headers(n: int, ctype: bytes = b"application/json") -> list[tuple[bytes, bytes]]:
    return [(b"content-type", ctype), (b"content-length", str(n).encode())]


async def _send(send: Any, status: int, body: bytes, ctype: bytes, extra: dict[str, str] | None = None, close: bool = False) -> None:
    headers = _json_headers(len(body), ctype)
    if extra:
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Alarm:
    """Cancels the current task after `seconds`, and says whether it did: a timeout as one timer, not a task
    per request as asyncio.wait_for makes (asyncio.timeout would do this too, from Python 3.11 on)."""

    def __init__(self, seconds: float):
        self.task = asyncio.current_task()
        self.fired = False
        self.handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self.fired = True
        if self.task is not None:
            self.task.cancel()

    def caught(self) -> bool:
        """In an `except CancelledError`: True (and the cancellation undone) when it was this alarm."""
        if self.fired and self.task is not None and hasattr(self.task, "uncancel"):
            self.task.uncancel()
        return self.fired

    def cancel(self) -> None:
        self.handle.cancel()


class GanService:
    """The ASGI app. `generator` makes the pixels; `replica` labels this instance's metrics."""

    def __init__(self, cfg: ServeConfig, generator: Generator, metrics: Metrics | None = None, replica: str = "edge",
                 capacity: int | None = None):
        self.cfg, self.gen, self.replica = cfg, generator, replica
        self.artifact = cfg.artifact
        self.metrics = metrics or Metrics()
        attach = getattr(generator, "attach_metrics", None)
        if attach is not None:  # an in-process generator: its batches and queue times go into this service's /metrics
            attach(self.metrics)
        self.capacity = cfg.capacity if capacity is None else capacity
        self.in_flight = 0  # admitted /generate requests not yet answered
        self.draining = False  # SIGTERM: /readyz 503, answers carry Connection: close; requests still served
        self.closing = False  # after the pre-stop period: new requests get 503 draining
        self.open_connections = lambda: 0  # the edge replaces it (a gauge in /metrics)
        prefix = cfg.route_prefix.rstrip("/")
        self.prefix = prefix

    # -- readiness --------------------------------------------------------------------------------------
    def readiness(self) -> RequestError | None:
        if self.draining or self.closing:
            return RequestError(503, None, None, "another instance", "the service is draining before shutdown", "draining")
        if self.in_flight >= self.capacity:
            return RequestError(503, None, self.in_flight, f"fewer than {self.capacity} requests in flight", "the queue is full", "overloaded")
        return None

    async def wait_idle(self, timeout_s: float) -> dict[str, Any]:
        """Until no admitted request is left (or timeout_s): the drain's report."""
        t0 = time.monotonic()
        while self.in_flight > 0 and time.monotonic() - t0 < timeout_s:
            await asyncio.sleep(0.02)
        return {"replica": self.replica, "in_flight_left": self.in_flight, "waited_s": round(time.monotonic() - t0, 3)}

    # -- ASGI -------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        t0 = time.perf_counter()
        root = scope.get("root_path") or self.prefix
        full = scope["path"]
        path = full[len(root):] or "/" if full.startswith(root) and full[len(root):len(root) + 1] in ("", "/") else None
        method = scope["method"]
        route = "other" if path is None else "/v2" if path.startswith("/v2") else path
        infer = path == "/generate" or (path is not None and path.startswith("/v2") and path.endswith("/infer"))
        reason: str | None = None
        status = 500
        try:
            alarm = _Alarm(self.cfg.request_timeout_s)
            try:
                status, reason = await self._dispatch(scope, receive, send, path, method, t0, infer)
            except asyncio.CancelledError:
                if not alarm.caught():
                    raise
                raise RequestError(504, None, f"{self.cfg.request_timeout_s:g} s", f"an answer within {self.cfg.request_timeout_s:g} s",
                                   "the request took longer than the request timeout", "request_timeout") from None
            finally:
                alarm.cancel()
        except RequestError as e:
            status, reason = e.status, e.reason
            close = self.draining or self.closing or e.status in (400, 408, 413, 415, 431) or bool(scope.get(EXCESS_KEY))
            await _send(send, e.status, e.body_bytes(), b"application/json", e.headers, close)
        except (_Gone, asyncio.CancelledError):
            # the client went away: nobody will read an answer; one counter, no traceback in the logs
            if scope.get(REJECTED_KEY):
                return
            self.metrics.record_disconnect(route)
            if infer:
                self.metrics.record_request(499)
            return
        except Exception as e:  # a bug: still a JSON 500, counted, one line in the log
            logger.warning(f"gan-deploy: internal error on {method} {full}: {type(e).__name__}: {e}")
            err = RequestError(500, None, type(e).__name__, "a working service", f"internal error: {e}", "internal")
            status, reason = 500, err.reason
            await _send(send, 500, err.body_bytes(), b"application/json", None, True)
        if infer and status != 200:
            self.metrics.record_request(status)
        self.metrics.record_http(route, method, status, reason)

    def _closing(self, scope: dict) -> bool:
        return self.draining or self.closing or bool(scope.get(EXCESS_KEY))

    async def _dispatch(self, scope: dict, receive: Any, send: Any, path: str | None, method: str, t0: float,
                        infer: bool) -> tuple[int, str | None]:
        headers = scope.get("headers", [])
        size = header_bytes(headers)
        if size > self.cfg.max_header_bytes:
            raise RequestError(431, None, f"{size} bytes", f"request headers of at most {self.cfg.max_header_bytes} bytes",
                               "request headers too large", "headers_too_large")
        if scope.get("http_version") == "1.1" and not any(k == b"host" for k, _ in headers):
            raise RequestError(400, "Host", None, "a Host header (RFC 9112: required in HTTP/1.1)", "missing Host header", "bad_http")
        if scope.get(EXCESS_KEY) and path not in PROBES:
            raise RequestError(503, None, None, f"at most {self.cfg.max_connections} open connections",
                               "too many connections; retry after a moment", "too_many_connections")
        if path is None:
            raise RequestError(404, None, scope["path"], f"a path under {self.prefix or '/'}", "no such route", "not_found")
        if infer:
            if method != "POST":
                raise RequestError(405, None, method, "POST with a JSON body", f"use POST {path}", "method_not_allowed", {"Allow": "POST"})
            if path != "/generate" and path != f"/v2/models/{self.cfg.model_name}/infer":
                raise RequestError(404, "model", path, f"the model {self.cfg.model_name!r}", "no such model", "not_found")
            return await self._generate(scope, receive, send, t0, kserve=path != "/generate"), None
        if method not in ("GET", "HEAD"):
            known = path in ("/healthz", "/readyz", "/metrics", "/") or path.startswith("/v2")
            if known:
                raise RequestError(405, None, method, "GET", f"use GET {path}", "method_not_allowed", {"Allow": "GET, HEAD"})
        status, body, ctype = self._get(scope, path)
        await _send(send, status, body, ctype, close=self._closing(scope))
        return status, None

    def _get(self, scope: dict, path: str) -> tuple[int, bytes, bytes]:
        """GET routes: answered at once, never queued."""
        if path == "/healthz":  # liveness: the event loop answers; nothing here waits for a batch
            return 200, json_bytes({"status": "ok", "ready": self.readiness() is None, "version": __version__,
                                    "model": self.artifact.describe(), "sha256": self.artifact.sha256,
                                    "backend": self.gen.describe(), "replica": self.replica}), b"application/json"
        if path in ("/readyz", "/v2/health/ready", f"/v2/models/{self.cfg.model_name}/ready"):
            why = self.readiness()
            if why is not None:
                raise why
            if path == "/readyz":
                return 200, json_bytes({"status": "ready", "in_flight": self.in_flight, "max_queued": self.capacity,
                                        "replica": self.replica}), b"application/json"
            return 200, json_bytes({"ready": True} if "health" in path else {"name": self.cfg.model_name, "ready": True}), b"application/json"
        if path == "/metrics":
            query = scope.get("query_string", b"").decode("latin-1")
            fmt = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("format", "prometheus")
            snap = self.snapshot()
            if fmt == "json":
                return 200, json_bytes(public_json(snap)), b"application/json"
            if fmt != "prometheus":
                raise RequestError(422, "format", fmt, "prometheus (default) or json", "unknown metrics format", "out_of_range")
            return 200, prometheus_text(snap).encode(), b"text/plain; version=0.0.4; charset=utf-8"
        if path == "/":
            return 200, json_bytes(self.describe()), b"application/json"
        if path.startswith("/v2"):
            return self._v2_get(path)
        raise RequestError(404, None, path, "one of POST /generate, GET /healthz, /readyz, /metrics, /, /v2/...", "no such route", "not_found")

    def _v2_get(self, path: str) -> tuple[int, bytes, bytes]:
        name, s = self.cfg.model_name, self.artifact.spec
        if path == "/v2":
            return 200, json_bytes({"name": "gan-deploy", "version": __version__, "extensions": []}), b"application/json"
        if path == "/v2/health/live":
            return 200, json_bytes({"live": True}), b"application/json"
        if path == f"/v2/models/{name}":
            return 200, json_bytes({"name": name, "versions": ["1"], "platform": "gan-deploy",
                                    "inputs": [{"name": "seed", "datatype": "INT64", "shape": [-1]},
                                               {"name": "index", "datatype": "INT64", "shape": [-1]}],
                                    "outputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, s.height, s.width, s.channels]}]}), b"application/json"
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[1] == "models" and parts[2] != name:
            raise RequestError(404, "model", parts[2], f"the model {name!r}", "no such model", "not_found")
        raise RequestError(404, None, path, f"/v2, /v2/health/live|ready, /v2/models/{name}[/ready|/infer]", "no such route", "not_found")

    # -- /generate --------------------------------------------------------------------------------------
    def _admit(self) -> None:
        if self.closing:  # during the pre-stop period (draining) requests are still served
            raise RequestError(503, None, None, "another instance", "the service is draining before shutdown", "draining")
        if self.in_flight >= self.capacity:
            raise RequestError(503, None, self.in_flight, f"at most {self.capacity} requests in flight",
                               "overloaded; retry after a moment", "overloaded")

    async def _generate(self, scope: dict, receive: Any, send: Any, t0: float, kserve: bool) -> int:
        ctype = next((v for k, v in scope.get("headers", []) if k == b"content-type"), None)
        if ctype is not None:
            media = ctype.split(b";", 1)[0].strip().lower()
            if media != b"application/json" and not media.endswith(b"+json"):
                raise RequestError(415, "Content-Type", ctype.decode("latin-1")[:80], "application/json",
                                   "the request body must be JSON", "unsupported_media_type")
        self._admit()  # a full service answers at once, before waiting for the body
        body = await self._body(scope, receive)
        req, request_id = parse_v2_infer(body, self.cfg.max_images_per_request) if kserve else \
            (parse_request(body, self.cfg.max_images_per_request), None)
        self._admit()  # and again: admission is decided once the body is in
        self.in_flight += 1
        released = False
        try:
            me, gone = asyncio.current_task(), [False]

            async def watch() -> None:  # a disconnect while the images are made cancels their making
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone[0] = True
                if me is not None:
                    me.cancel()
            watcher = asyncio.ensure_future(watch())
            try:
                pixels = await self.gen.pixels(req.seeds, req.indices)
            except asyncio.CancelledError:
                if gone[0]:
                    if me is not None and hasattr(me, "uncancel"):
                        me.uncancel()
                    raise _Gone() from None
                raise
            except Exception as e:  # a backend failure answers 500 and leaves the service running
                msg = str(e).splitlines()[0][:300] if str(e) else ""
                raise RequestError(500, None, type(e).__name__, "a working backend", f"inference failed: {msg}", "backend_failed") from None
            finally:
                watcher.cancel()
            self.in_flight -= 1  # the answer is ready: the slot is free before the client can have it
            released = True
            if len(req) <= RENDER_INLINE:
                body_out, media_type, headers = render(req, pixels, self.cfg.model_name)
            else:  # PNG encoding of a large response is milliseconds of CPU: off the event loop (zlib drops the GIL)
                body_out, media_type, headers = await asyncio.to_thread(render, req, pixels, self.cfg.model_name)
        finally:
            if not released:
                self.in_flight -= 1
        self.metrics.record_request(200, len(req), time.perf_counter() - t0)
        if kserve and request_id is not None:  # the id goes back verbatim
            body_out = body_out[:-1] + b',"id":' + json_bytes(request_id) + b"}"
        headers = {**headers, "ETag": etag(self.artifact.sha256, req), "Cache-Control": CACHE_CONTROL}
        await _send(send, 200, body_out, media_type.encode(), headers, close=self._closing(scope))
        return 200

    async def _body(self, scope: dict, receive: Any) -> bytes:
        """The whole request body, bounded in size (413) and in time (408): read before the request takes a
        slot, so a client that announces 100 bytes and sends 12 only holds its own connection."""
        limit, timeout = self.cfg.body_limit, self.cfg.read_timeout_s
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None:
            if not declared.strip().isdigit():
                raise RequestError(400, "Content-Length", declared, "a byte count", "malformed Content-Length header", "bad_http")
            if int(declared) > limit:
                raise RequestError(413, None, f"{int(declared)} bytes", f"a body of at most {limit} bytes", "request body too large", "body_too_large")
        parts: list[bytes] = []
        n = 0
        alarm = _Alarm(timeout)
        try:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise _Gone()
                chunk = msg.get("body", b"")
                n += len(chunk)
                if n > limit:
                    raise RequestError(413, None, f"more than {limit} bytes", f"a body of at most {limit} bytes", "request body too large", "body_too_large")
                parts.append(chunk)
                if not msg.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if not alarm.caught():
                raise
            got = f"{n} of {int(declared)} bytes" if declared is not None else f"{n} bytes"
            raise RequestError(408, None, got, f"the whole body within {timeout:g} s (--read-timeout)",
                               "the request body arrived too slowly", "body_timeout") from None
        finally:
            alarm.cancel()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- views ------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        c = self.cfg
        return self.metrics.snapshot(
            in_flight=self.in_flight, capacity=self.capacity, ready=int(self.readiness() is None), draining=int(self.draining or self.closing),
            replicas=c.num_replicas, replica=self.replica, open_connections=self.open_connections(),
            build={"version": __version__, "model_sha256": self.artifact.sha256[:16], "backend": self.gen.backend_name},
            config={"backend": self.gen.backend_name, "max_batch_size": c.max_batch_size, "batch_wait_ms": c.batch_wait_ms,
                    "max_images_per_request": c.max_images_per_request, "max_queued": c.max_queued,
                    "replicas": c.num_replicas, "read_timeout_s": c.read_timeout_s, "request_timeout_s": c.request_timeout_s,
                    "max_body_bytes": c.body_limit, "max_header_bytes": c.max_header_bytes, "max_connections": c.max_connections,
                    "header_timeout_s": c.header_timeout_s, "pre_stop_s": c.pre_stop_s})

    def describe(self) -> dict[str, Any]:
        s = self.artifact.spec
        return {"service": "gan-deploy", "version": __version__, "model": self.artifact.describe(),
                "sha256": self.artifact.sha256, "image_shape": [s.height, s.width, s.channels],
                "fields": list(FIELDS), "formats": list(RESPONSE_FORMATS),
                "max_images_per_request": self.cfg.max_images_per_request,
                "routes": {"POST /generate": "images; see docs/serving.md", "GET /healthz": "liveness",
                           "GET /readyz": "readiness (model warmed, not draining, queue not full)",
                           "GET /metrics": "Prometheus text, or ?format=json",
                           f"POST /v2/models/{self.cfg.model_name}/infer": "KServe v2 / Open Inference Protocol"}}


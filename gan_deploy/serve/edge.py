"""The listener at the network edge: uvicorn running `GanService`, with what a service in front of a load
balancer needs and uvicorn does not do by itself.

* A header timeout: a connection's request line and headers must arrive within `header_timeout_s` (silent
  connections are closed, a partial header block gets a JSON 408 `header_timeout`); uvicorn alone times out
  only idle keep-alive connections. Header blocks over 16 KiB get a JSON 431 (llhttp has no limit of its own).
* A connection cap: past `max_connections` open connections, a new connection is still read (for a short
  while), and a probe (/healthz, /readyz, /metrics) on it is answered, so a load balancer keeps seeing the
  instance; anything else gets a JSON 503 `too_many_connections` with Connection: close, and it is closed
  after 1 s without a request. Past `hard_cap` (the cap plus max(cap, 4096)), new connections are closed at
  accept, before the open-file limit is reached. Counted in /metrics (`gan_deploy_connections_total`), one log
  line when a burst starts and one when it ends.
* JSON for malformed HTTP: the parser is llhttp (uvicorn's `httptools` protocol), which rejects both
  Content-Length and Transfer-Encoding, two Content-Lengths, obs-folded headers, bad chunk sizes and a space
  before a colon (no request smuggling); those answers are a JSON 400 `bad_http` in the service's error
  shape, counted, instead of uvicorn's plain text. No `Server:` header.
* A drain a load balancer can follow: SIGTERM (or Ctrl-C) turns /readyz to 503 at once and keeps serving for
  `pre_stop_s` (answers carry Connection: close), then the listener closes, idle connections are closed,
  and every request already accepted is answered (within `drain_timeout_s`). A second Ctrl-C stops at once.

This subclasses uvicorn's `HttpToolsProtocol` (its parser callbacks, `parser`, `cycle`, `connections`),
which are not a stable API: `pyproject.toml` bounds uvicorn's version, and tests/test_serve.py covers each
behaviour on loopback.
"""
from __future__ import annotations

import asyncio
import http
import logging
import signal
import socket
import time
from typing import Any, Callable

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gan_deploy.core.errors import GanDeployError
from gan_deploy.serve.config import MAX_HEADER_BYTES, ServeConfig
from gan_deploy.serve.request import RequestError
from gan_deploy.serve.service import EXCESS_KEY, REJECTED_KEY, GanService

logger = logging.getLogger("gan_deploy.serve")
EXCESS_HEADER_TIMEOUT_S = 1.0  # a connection past the cap gets this long for its request line and headers


def raw_error(status: int, reason: str, expected: str, message: str, value: Any = None) -> bytes:
    """A whole HTTP/1.1 response with the service's JSON error body, for answers written below ASGI."""
    err = RequestError(status, None, value, expected, message, reason)
    body = err.body_bytes()
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"] + [f"{k.lower()}: {v}" for k, v in err.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Edge:
    """What the connections of one listener share: the service (its metrics) and the cap's burst state."""

    def __init__(self, service: GanService, cfg: ServeConfig):
        self.service, self.cfg, self.metrics = service, cfg, service.metrics
        self.connections: set[Any] = set()
        self.over_cap = 0  # connections past the cap in the current burst
        service.open_connections = lambda: len(self.connections)

    def over(self, n: int) -> None:
        if not self.over_cap:
            logger.warning(f"gan-deploy: {n} open connections, past --max-connections {self.cfg.max_connections}: new "
                           "connections get a JSON 503 (probes are still answered)")
        self.over_cap += 1

    def maybe_burst_over(self) -> None:
        if self.over_cap and len(self.connections) <= self.cfg.max_connections:
            logger.warning(f"gan-deploy: connection burst over: {self.over_cap} connection(s) were past the cap")
            self.over_cap = 0


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's llhttp protocol with a header timeout, a header size limit, the connection cap and JSON for
    what the parser rejects. `edge` is set on the per-listener subclass `protocol_for` makes."""

    edge: Edge

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        edge = self.edge
        edge.connections.add(self)
        n = len(edge.connections)
        self._awaiting_head, self._head_bytes = True, 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._excess = n > edge.cfg.max_connections
        if n > hard_cap(edge.cfg.max_connections):  # a flood: no reading at all
            edge.metrics.record_connection("refused")
            edge.over(n)
            transport.abort()
            return
        edge.metrics.record_connection("over_cap" if self._excess else "accepted")
        if self._excess:
            edge.over(n)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.edge.connections.discard(self)
        self.edge.maybe_burst_over()
        super().connection_lost(exc)

    def _arm(self) -> None:
        timeout = min(self.edge.cfg.header_timeout_s, EXCESS_HEADER_TIMEOUT_S) if self._excess else self.edge.cfg.header_timeout_s
        self._head_timer = self.loop.call_later(timeout, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport.is_closing():
            return
        if self._head_bytes:
            self._reject(408, "header_timeout", f"request line and headers within {self.edge.cfg.header_timeout_s:g} s (--header-timeout)",
                         "the request headers arrived too slowly", f"{self._head_bytes} bytes")
        else:  # nothing was said: nothing to answer
            self.edge.metrics.record_connection("silent_timeout")
            self.transport.close()

    def _reject(self, status: int, reason: str, expected: str, message: str, value: Any = None) -> None:
        """Answer below ASGI (JSON in the service's shape), count it, close the connection."""
        self._disarm()
        self.edge.metrics.record_http("other", "other", status, reason)
        if reason == "header_timeout":
            self.edge.metrics.record_connection("header_timeout")
        if self.cycle is not None and not self.cycle.response_complete:
            self.scope[REJECTED_KEY] = True  # type: ignore[literal-required]  # its app task sees a disconnect: not counted twice
        self.transport.write(raw_error(status, reason, expected, message, value))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            if self._head_timer is None:  # the first bytes of a request on a kept-alive connection
                self._arm()
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._reject(400, "bad_http", "a well-formed HTTP/1.1 request (RFC 9112)", f"malformed HTTP request: {e}")
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
        if self._awaiting_head and self._head_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self._reject(431, "headers_too_large", f"request headers of at most {MAX_HEADER_BYTES} bytes", "request headers too large",
                         f"more than {MAX_HEADER_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._disarm()
        if self._excess:
            self.scope[EXCESS_KEY] = True  # type: ignore[literal-required]
        super().on_headers_complete()
        if self._excess and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_response_complete(self) -> None:
        self._awaiting_head = True  # the next request's head; its timer starts with its first byte
        self._head_bytes = 0
        super().on_response_complete()


def protocol_for(edge: Edge) -> type[EdgeProtocol]:
    return type("GanDeployEdgeProtocol", (EdgeProtocol,), {"edge": edge})


def hard_cap(max_connections: int) -> int:
    """Open connections past which new ones are closed at accept (between the cap and this: probes only)."""
    return max_connections + max(max_connections, 4096)


def check_open_files(max_connections: int) -> None:
    """Raise this process's open-file limit to what max_connections needs (the hard cap, plus slack), or refuse."""
    import resource

    need = hard_cap(max_connections) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need or soft == resource.RLIM_INFINITY:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise GanDeployError("--max-connections exceeds the open-file limit", max_connections,
                             expected=f"a cap whose hard cap ({hard_cap(max_connections)}) + 256 fits the open-file limit {hard}",
                             hint="lower --max-connections, or raise the limit (ulimit -Hn, or the container's nofile)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class EdgeServer(uvicorn.Server):
    """uvicorn's server with the drain: the first SIGTERM/SIGINT starts it (`begin_drain`), the pre-stop period
    runs, then uvicorn's own graceful shutdown (listener closed, idle connections closed, requests in flight
    answered within timeout_graceful_shutdown). A second SIGINT stops at once."""

    def __init__(self, config: uvicorn.Config, service: GanService, pre_stop_s: float,
                 ready: Callable[[str], None] | None = None, on_signal: Callable[[str], None] | None = None):
        super().__init__(config)
        self.service, self.pre_stop_s, self.ready, self.on_signal = service, pre_stop_s, ready, on_signal
        self.drain_started: float | None = None
        self.drain_report: dict[str, Any] | None = None
        self.url = ""

    def handle_exit(self, sig: int, frame: Any) -> None:  # from the signal handler (no re-raise after shutdown)
        if self.drain_started is not None:
            if sig == signal.SIGINT:
                self.force_exit = self.should_exit = True
            return
        self.begin_drain(signal.Signals(sig).name)

    def begin_drain(self, why: str = "drain") -> None:
        """/readyz 503 from now on; the listener closes after the pre-stop period (on_tick)."""
        if self.drain_started is not None:
            return
        self.drain_started = time.monotonic()
        self.service.draining = True
        if self.on_signal is not None:
            self.on_signal(why)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit and time.monotonic() - self.drain_started >= self.pre_stop_s:
            self.should_exit = True
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            self.url = f"http://{host}:{port}{self.service.prefix}"
            if self.ready is not None:
                self.ready(self.url)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        t0 = time.monotonic()
        await super().shutdown(sockets)
        self.drain_report = {"in_flight_left": self.service.in_flight, "waited_s": round(time.monotonic() - t0, 3),
                             "pre_stop_s": round(t0 - self.drain_started, 3) if self.drain_started else 0.0}


def make_server(service: GanService, cfg: ServeConfig, ready: Callable[[str], None] | None = None,
                on_signal: Callable[[str], None] | None = None) -> EdgeServer:
    """The listener for `service` on cfg.host:cfg.port (not started: `.run()` blocks, in the main thread it
    also takes SIGTERM and SIGINT)."""
    check_open_files(cfg.max_connections)
    edge = Edge(service, cfg)
    config = uvicorn.Config(
        service, host=cfg.host, port=cfg.port, http=protocol_for(edge), ws="none", lifespan="off", interface="asgi3",
        timeout_keep_alive=cfg.keep_alive_s, timeout_graceful_shutdown=cfg.drain_timeout_s,  # type: ignore[arg-type]

        server_header=False, date_header=True, backlog=2048, access_log=cfg.access_log, log_config=None,
        log_level="info" if cfg.access_log else "warning", proxy_headers=False)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.INFO if cfg.access_log and name == "uvicorn.access" else logging.WARNING)
    return EdgeServer(config, service, cfg.pre_stop_s, ready, on_signal)

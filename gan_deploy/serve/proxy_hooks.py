"""ASGI middleware for Ray Serve's own HTTP proxy: admission before Ray routes a request, and JSON for Ray's
own error answers.

Ray loads it in the proxy process from the environment variable
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=gan_deploy.serve.proxy_hooks:middlewares`, which must be set where
the proxy starts: `gan-deploy serve` sets it for the local Ray it starts; on a cluster set it in the
environment of `ray start` (or the RayCluster's container env). Without it the service works unchanged, the
gateway deployment enforces the same limits, only more slowly under a flood and with Ray's few own answers
in plain text.

1. Admission in the proxy. Every request Ray routes costs milliseconds of CPU in the proxy and the replica
   (pickling the ASGI scope, the router, an actor call each way), so a flood of requests that will only be
   refused still queues behind itself (on 2 cores: ~8 ms each, a burst of 200 waits 1.6 s for its 503s).
   The gateway's answers on its /generate routes carry a header `x-gan-deploy-limits` (capacity, read
   timeout, body limit); once the proxy has seen it for a path, it reads each request's body there (bounded
   in time and size, before the request counts: a slow client holds only its own connection), counts the
   requests it forwarded and not yet answered, and answers a JSON 503 with Retry-After itself while that
   count is at capacity: microseconds, before Ray routes anything. The header never reaches the client.
   With several proxies (one per node) each counts its own traffic and the gateway still has the last word.
   What the proxy answered itself is counted there and reported to the gateway (header `x-gan-deploy-proxy`
   on every request it forwards, cumulative counts per proxy), so the gateway's /metrics include it.
2. JSON errors. Ray's proxy answers some requests itself: 503 when a router queue is full or no replica is
   up, 408 past `request_timeout_s`, 500 when a replica died mid-request. Those are plain text; here every
   answer other than a 200 becomes JSON in the service's error shape, a 503/429 with Retry-After.

Imports nothing of gan_deploy beyond this file: it runs inside Ray's proxy.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any

RETRY_AFTER_S = "1"
LIMITS_HEADER = b"x-gan-deploy-limits"
COUNTS_HEADER = b"x-gan-deploy-proxy"  # added to every forwarded request: what this proxy answered itself
TOKEN_ENV = "GAN_DEPLOY_PROXY_TOKEN"  # when set (gan-deploy serve sets one), the gateway believes only headers carrying it
_REASONS = {404: "not_found", 408: "request_timeout", 413: "body_too_large", 429: "overloaded", 500: "internal",
            502: "unavailable", 503: "unavailable", 504: "request_timeout"}


def limits_header(paths: list[str], capacity: int, read_timeout_s: float, max_body_bytes: int) -> str:
    """The value the gateway sends on every answer (and this middleware reads and strips): the POST paths that
    share one admission limit, and the limits."""
    return f"paths={','.join(paths)};capacity={capacity};read_timeout={read_timeout_s:g};max_body={max_body_bytes}"


def _parse_limits(value: bytes) -> tuple[list[str], tuple[int, float, int]] | None:
    try:
        kv = dict(part.split("=", 1) for part in value.decode().split(";"))
        return kv["paths"].split(","), (int(kv["capacity"]), float(kv["read_timeout"]), int(kv["max_body"]))
    except (ValueError, KeyError, UnicodeDecodeError):
        return None


def encode_counts(token: str, proxy_id: str, counts: dict[tuple[str, int, str], int]) -> bytes:
    items = ",".join(f"{route}:{status}:{reason}:{n}" for (route, status, reason), n in sorted(counts.items()))
    return f"token={token};id={proxy_id};counts={items}".encode()


def decode_counts(value: str, token: str | None) -> tuple[str, dict[tuple[str, int, str], int]] | None:
    """(proxy id, {(route, status, reason): count}) from the header, or None if malformed or not ours."""
    try:
        kv = dict(part.split("=", 1) for part in value.split(";"))
        if token and kv.get("token") != token:
            return None
        counts: dict[tuple[str, int, str], int] = {}
        for item in filter(None, kv["counts"].split(",")):
            route, status, reason, n = item.rsplit(":", 3)
            counts[(route, int(status), reason)] = int(n)
        return kv["id"], counts
    except (ValueError, KeyError):
        return None


def _error_body(status: int, reason: str, expected: str, message: str, value: Any = None) -> bytes:
    return json.dumps({"error": {"status": status, "reason": reason, "field": None, "value": value,
                                 "expected": expected, "message": message}}).encode()


def _ray_error_body(status: int, text: str) -> bytes:
    message = text.strip().splitlines()[0][:300] if text.strip() else f"HTTP {status}"
    reason = "overloaded" if status in (429, 503) and "backpressure" in text.lower() else _REASONS.get(status, "internal")
    return _error_body(status, reason, "a retry later" if status in (429, 503) else "a working service",
                       f"answered by Ray Serve's proxy: {message}")


async def _answer(send: Any, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", RETRY_AFTER_S.encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GanDeployProxy:
    """Proxy-side admission for the gateway's /generate routes, and JSON for Ray's own error answers."""

    def __init__(self, app: Any):
        self.app = app
        self.group: dict[str, str] = {}  # POST path -> the group of paths sharing one limit (one gateway)
        self.limits: dict[str, tuple[int, float, int]] = {}  # group -> (capacity, read timeout, body limit)
        self.in_flight: dict[str, int] = {}  # group -> requests forwarded and not yet answered
        self.refused: dict[tuple[str, int, str], int] = {}  # (route, status, reason) -> answered here
        self.token = os.environ.get(TOKEN_ENV, "")
        self.proxy_id = f"{socket.gethostname()}:{os.getpid()}"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        group = self.group.get(path) if scope.get("method") == "POST" else None
        if group is None:
            await self.app(self._with_counts(scope), receive, self._sender(send))
            return
        limits = self.limits[group]
        route = "/generate" if path.endswith("/generate") else "/v2"

        async def refuse(status: int, reason: str, body: bytes, close: bool = True) -> None:
            key = (route, status, reason)
            self.refused[key] = self.refused.get(key, 0) + 1
            await _answer(send, status, body, close=close)
        capacity, read_timeout, max_body = limits
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            await refuse(413, "body_too_large", _error_body(413, "body_too_large", f"a body of at most {max_body} bytes",
                                                             "request body too large", f"{int(declared)} bytes"))
            return
        body = bytearray()

        async def read() -> str:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return "gone"
                body.extend(msg.get("body", b""))
                if len(body) > max_body:
                    return "too_large"
                if not msg.get("more_body", False):
                    return "whole"
        try:
            outcome = await asyncio.wait_for(read(), read_timeout)
        except asyncio.TimeoutError:
            got = f"{len(body)} of {int(declared)} bytes" if declared is not None and declared.isdigit() else f"{len(body)} bytes"
            await refuse(408, "body_timeout", _error_body(408, "body_timeout", f"the whole body within {read_timeout:g} s (--read-timeout)",
                                                           "the request body arrived too slowly", got))
            return
        if outcome == "gone":
            return  # the client went away while sending: nothing to answer
        if outcome == "too_large":
            await refuse(413, "body_too_large", _error_body(413, "body_too_large", f"a body of at most {max_body} bytes", "request body too large"))
            return
        if self.in_flight.get(group, 0) >= capacity:  # admission, once the body is in (the connection stays usable)
            await refuse(503, "overloaded", _error_body(503, "overloaded", f"at most {capacity} requests in flight",
                                                         "overloaded; retry after a moment (answered by the proxy)"), close=False)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # then: the disconnect, when it comes

        self.in_flight[group] = self.in_flight.get(group, 0) + 1
        try:
            await self.app(self._with_counts(scope), replay, self._sender(send))
        finally:
            self.in_flight[group] -= 1

    def _with_counts(self, scope: dict) -> dict:
        """The scope with this proxy's own answers so far (and without any such header a client sent)."""
        headers = [(k, v) for k, v in scope.get("headers", []) if k != COUNTS_HEADER]
        if self.refused:
            headers.append((COUNTS_HEADER, encode_counts(self.token, self.proxy_id, self.refused)))
        return {**scope, "headers": headers}

    def _learn(self, value: bytes) -> None:
        parsed = _parse_limits(value)
        if parsed is not None:
            paths, limits = parsed
            group = paths[0]
            self.limits[group] = limits
            for p in paths:
                self.group[p] = group

    def _sender(self, send: Any) -> Any:
        held: dict[str, Any] = {}

        async def send_(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if any(k.lower() == LIMITS_HEADER for k, _ in headers):
                    for k, v in headers:
                        if k.lower() == LIMITS_HEADER:
                            self._learn(v)
                    headers = [(k, v) for k, v in headers if k.lower() != LIMITS_HEADER]
                    message = {**message, "headers": headers}
                status = int(message["status"])
                ctype = next((v.lower() for k, v in headers if k.lower() == b"content-type"), b"")
                if status >= 400 and not ctype.startswith(b"application/json"):  # one of Ray's own answers
                    held.update(status=status, headers=list(headers), body=b"")
                    return
            elif message["type"] == "http.response.body" and held:
                held["body"] += message.get("body", b"")
                if message.get("more_body", False):
                    return
                status = held["status"]
                body = _ray_error_body(status, held["body"].decode("utf-8", "replace"))
                headers = [(k, v) for k, v in held["headers"] if k.lower() not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                if status in (429, 503) and not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", RETRY_AFTER_S.encode()))
                held.clear()
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        return send_


def middlewares() -> list:
    """The callback Ray's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    from starlette.middleware import Middleware
    return [Middleware(GanDeployProxy)]

"""ASGI middleware for Ray Serve's own HTTP proxy: admission before Ray routes a request, and JSON for Ray's
own error answers.

Ray loads it in the proxy process from the environment variable
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=gan_deploy.serve.proxy_hooks:middlewares`, which must be set where
the proxy starts: `gan-deploy serve` sets it for the local Ray it starts; on a cluster set it in the
environment of `ray start` (or the RayCluster's container env). Without it the service works unchanged: the
replicas enforce the same limits, only more slowly under a flood, and Ray's few own answers stay plain text.

1. Admission in the proxy. Every request Ray routes costs milliseconds of CPU in the proxy and the replica
   (pickling the ASGI scope, the router, an actor call each way), so a flood of requests that will only be
   refused still queues behind itself (on 2 shared cores: ~8 ms each, a burst of 200 waited 1.6 s for its
   503s). The service's answers carry a header `x-gan-deploy-limits` (its POST paths, capacity, read timeout,
   body limit, metrics path); once the proxy has seen it, it reads each request's body there (bounded in
   time and size, before the request counts: a slow client holds only its own connection), counts the
   requests it forwarded and not yet answered, and answers a JSON 503 with Retry-After itself while that
   count is at capacity: no Ray routing, no replica. The header never reaches the client. With several
   proxies (one per node) each counts its own traffic, and the replicas still have the last word.
2. JSON errors. Ray's proxy answers some requests itself: 503 when a router queue is full or no replica is
   up, 408 past `request_timeout_s`, 500 when a replica died mid-request. Those are plain text; here every
   answer other than a 200 becomes JSON in the service's error shape, a 503/429 with Retry-After.
3. Its own counts in /metrics. What the proxy answered itself never reaches a replica, so the proxy adds it
   to each /metrics answer passing through: a `gan_deploy_proxy_answers_total{proxy, route, code, reason}`
   family in the Prometheus text, and in the JSON form merged into "requests" and "errors" (plus "proxy").

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
_REASONS = {404: "not_found", 408: "request_timeout", 413: "body_too_large", 429: "overloaded", 500: "internal",
            502: "unavailable", 503: "unavailable", 504: "request_timeout"}


def limits_header(paths: list[str], metrics_path: str, capacity: int, read_timeout_s: float, max_body_bytes: int) -> str:
    """The value the service sends on every answer (and this middleware reads and strips): the POST paths that
    share one admission limit, the path of its /metrics, and the limits."""
    return (f"paths={','.join(paths)};metrics={metrics_path};capacity={capacity};read_timeout={read_timeout_s:g};"
            f"max_body={max_body_bytes}")


def _parse_limits(value: bytes) -> tuple[list[str], str, tuple[int, float, int]] | None:
    try:
        kv = dict(part.split("=", 1) for part in value.decode().split(";"))
        return kv["paths"].split(","), kv["metrics"], (int(kv["capacity"]), float(kv["read_timeout"]), int(kv["max_body"]))
    except (ValueError, KeyError, UnicodeDecodeError):
        return None


def _error_body(status: int, reason: str, expected: str, message: str, value: Any = None) -> bytes:
    return json.dumps({"error": {"status": status, "reason": reason, "field": None, "value": value,
                                 "expected": expected, "message": message}}).encode()


def _ray_error_body(status: int, text: str) -> bytes:
    message = text.strip().splitlines()[0][:300] if text.strip() else f"HTTP {status}"
    reason = "overloaded" if status in (429, 503) and "backpressure" in text.lower() else _REASONS.get(status, "internal")
    return _error_body(status, reason, "a retry later" if status in (429, 503) else "a working service",
                       f"answered by Ray Serve's proxy: {message}")


async def _answer(send: Any, status: int, body: bytes, close: bool) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", RETRY_AFTER_S.encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


class GanDeployProxy:
    """Proxy-side admission for the service's /generate routes, JSON for Ray's own errors, counts in /metrics."""

    def __init__(self, app: Any):
        self.app = app
        self.group: dict[str, str] = {}  # POST path -> the group of paths sharing one limit (one app)
        self.limits: dict[str, tuple[int, float, int]] = {}  # group -> (capacity, read timeout, body limit)
        self.metrics_of: dict[str, str] = {}  # metrics path -> its group
        self.in_flight: dict[str, int] = {}  # group -> requests forwarded and not yet answered
        self.answered: dict[str, dict[tuple[str, int, str], int]] = {}  # group -> (route, status, reason) -> count
        self.proxy_id = f"{socket.gethostname()}:{os.getpid()}"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method")
        group = self.group.get(path) if method == "POST" else None
        if group is None:
            metrics_group = self.metrics_of.get(path) if method == "GET" else None
            await self.app(scope, receive, self._sender(send, metrics_group))
            return
        capacity, read_timeout, max_body = self.limits[group]
        route = "/generate" if path.endswith("/generate") else "/v2"

        async def refuse(status: int, reason: str, body: bytes, close: bool = True) -> None:
            counts = self.answered.setdefault(group, {})
            counts[(route, status, reason)] = counts.get((route, status, reason), 0) + 1
            await _answer(send, status, body, close)

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
            await self.app(scope, replay, self._sender(send, None))
        finally:
            self.in_flight[group] -= 1

    def _learn(self, value: bytes) -> None:
        parsed = _parse_limits(value)
        if parsed is not None:
            paths, metrics_path, limits = parsed
            group = paths[0]
            self.limits[group] = limits
            self.metrics_of[metrics_path] = group
            for p in paths:
                self.group[p] = group

    def _with_counts(self, group: str, ctype: bytes, body: bytes) -> bytes:
        """A /metrics answer with what this proxy answered itself for that app."""
        counts = self.answered.get(group, {})
        if ctype.startswith(b"text/plain"):
            lines = ["# HELP gan_deploy_proxy_answers_total Requests Ray's proxy answered itself (proxy_hooks), never routed to a replica.",
                     "# TYPE gan_deploy_proxy_answers_total counter"]
            lines += [f'gan_deploy_proxy_answers_total{{proxy="{_label(self.proxy_id)}",route="{r}",code="{c}",reason="{why}"}} {n}'
                      for (r, c, why), n in sorted(counts.items())]
            return body.rstrip(b"\n") + b"\n" + "\n".join(lines).encode() + b"\n"
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict):
            return body
        requests, errors = data.setdefault("requests", {}), data.setdefault("errors", [])
        for (route, status, reason), n in counts.items():
            requests[str(status)] = requests.get(str(status), 0) + n
            for e in errors:
                if e.get("code") == str(status) and e.get("reason") == reason:
                    e["count"] += n
                    break
            else:
                errors.append({"code": str(status), "reason": reason, "count": n})
        data["requests_total"] = sum(requests.values())
        data["errors_total"] = sum(e["count"] for e in errors)
        data["proxy"] = {"id": self.proxy_id, "answers": [{"route": r, "code": str(c), "reason": why, "count": n}
                                                          for (r, c, why), n in sorted(counts.items())]}
        return json.dumps(data).encode()

    def _sender(self, send: Any, metrics_group: str | None) -> Any:
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
                ray_error = status >= 400 and not ctype.startswith(b"application/json")  # one of Ray's own answers
                if ray_error or (metrics_group is not None and status == 200):
                    held.update(status=status, headers=list(headers), body=b"", ray_error=ray_error, ctype=ctype)
                    return
            elif message["type"] == "http.response.body" and held:
                held["body"] += message.get("body", b"")
                if message.get("more_body", False):
                    return
                status = held["status"]
                if held["ray_error"]:
                    body, ctype = _ray_error_body(status, held["body"].decode("utf-8", "replace")), b"application/json"
                else:
                    assert metrics_group is not None
                    body, ctype = self._with_counts(metrics_group, held["ctype"], held["body"]), held["ctype"]
                headers = [(k, v) for k, v in held["headers"] if k.lower() not in (b"content-type", b"content-length")]
                headers += [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
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

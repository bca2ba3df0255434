"""The service's metrics: a replica's counters and histograms (`Metrics`), and their Prometheus text exposition.

No Ray here: a replica updates a `Metrics` and answers GET /metrics with `prometheus_text(snapshot)` (or
`public_json(snapshot)` for ?format=json); both are tested without a service.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gan_deploy.serve.request import DEFAULT_REASONS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_WINDOW = 10_000  # summary quantiles over the most recent successful requests
QUANTILES = (0.5, 0.9, 0.99)
ROUTES = ("/generate", "/healthz", "/readyz", "/metrics", "/", "/v2")  # route label values; anything else is "other"


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was actually observed."""
    if not sorted_values:
        return 0.0
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def _fmt_float(v: float) -> str:
    """A number as Prometheus writes it: 0.5 not 0.50, +Inf, integers without a fraction."""
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    return repr(float(v))


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: bucket le=b counts observations <= b)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one: above the largest bound
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        cumulative, out = 0, {}
        for b, c in zip(self.buckets, self.counts):
            cumulative += c
            out[_fmt_float(b)] = cumulative
        out["+Inf"] = self.count
        return {"buckets": out, "sum": self.sum, "count": self.count}


@dataclass
class Metrics:
    """One replica's counters (its Prometheus series carry a `replica` label, so nothing jumps when scrapes
    reach different replicas; sum over the label for the service). Updated from the replica's event loop and
    its inference thread, hence the lock."""

    requests: dict[str, int] = field(default_factory=dict)  # HTTP status -> count, /generate only
    images: int = 0  # images returned with a 200
    batches: int = 0  # backend calls
    batch_images: int = 0  # images over all backend calls (mean formed batch = batch_images / batches)
    max_batch: int = 0
    disconnects: int = 0  # clients that went away before their answer
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.http: dict[tuple[str, str, str], int] = {}  # (route, method, code) -> count, every route
        self.errors: dict[tuple[str, str], int] = {}  # (code, reason) -> count, every non-200 answer
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.request_seconds = Histogram(SECONDS_BUCKETS)  # successful /generate, arrival in the replica -> answer
        self.queue_seconds = Histogram(SECONDS_BUCKETS)  # admitted -> its last piece's backend call starts
        self.compute_seconds = Histogram(SECONDS_BUCKETS)  # one backend call (per batch)
        self.disconnect_routes: dict[str, int] = {}
        self.connections: dict[str, int] = {}  # connection events at the edge: accepted, over_cap, header_timeout, idle_timeout

    def record_connection(self, event: str) -> None:
        with self._lock:
            self.connections[event] = self.connections.get(event, 0) + 1

    def record_http(self, route: str, method: str, status: int, reason: str | None = None) -> None:
        route = route if route in ROUTES else "other"
        method = method if method in ("GET", "HEAD", "POST") else "other"
        with self._lock:
            key = (route, method, str(status))
            self.http[key] = self.http.get(key, 0) + 1
            if status >= 400 or reason:
                ek = (str(status), reason or DEFAULT_REASONS.get(status, "internal"))
                self.errors[ek] = self.errors.get(ek, 0) + 1

    def record_queue(self, seconds: float) -> None:
        with self._lock:
            self.queue_seconds.observe(max(0.0, seconds))

    def record_request(self, status: int, images: int = 0, seconds: float | None = None, queue_s: float | None = None) -> None:
        """One /generate answer (any status)."""
        with self._lock:
            key = str(status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.images += images
            if seconds is not None:
                self._latencies.append(seconds)
                self.request_seconds.observe(seconds)
            if queue_s is not None:
                self.queue_seconds.observe(max(0.0, queue_s))

    def record_batch(self, size: int, compute_s: float | None = None) -> None:
        with self._lock:
            self.batches += 1
            self.batch_images += size
            self.max_batch = max(self.max_batch, size)
            self.batch_size.observe(size)
            if compute_s is not None:
                self.compute_seconds.observe(compute_s)

    def record_disconnect(self, route: str) -> None:
        with self._lock:
            self.disconnects += 1
            route = route if route in ROUTES else "other"
            self.disconnect_routes[route] = self.disconnect_routes.get(route, 0) + 1

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self._latencies)
            http, errors, requests = dict(self.http), dict(self.errors), dict(self.requests)
            legacy_hist: dict[str, int] = {}
            for b, c in zip(BATCH_BUCKETS, self.batch_size.counts):
                if c:
                    legacy_hist[f"le_{b}"] = c
            if self.batch_size.counts[-1]:
                legacy_hist["larger"] = self.batch_size.counts[-1]
            d = {
                "uptime_s": round(time.time() - self.started, 3),
                "started": self.started,
                "requests": requests,
                "requests_total": sum(requests.values()),
                "http_requests": [{"route": r, "method": m, "code": c, "count": n} for (r, m, c), n in sorted(http.items())],
                "errors": [{"code": c, "reason": r, "count": n} for (c, r), n in sorted(errors.items())],
                "errors_total": sum(errors.values()),
                "disconnects": self.disconnects,
                "images": self.images,
                "batches": self.batches,
                "batch_images": self.batch_images,
                "mean_batch_size": self.batch_images / self.batches if self.batches else 0.0,
                "max_batch_size_formed": self.max_batch,
                "batch_size_histogram": legacy_hist,
                "latency_ms": {
                    "window": len(lat),
                    "p50": 1000 * _percentile(lat, 50), "p90": 1000 * _percentile(lat, 90),
                    "p99": 1000 * _percentile(lat, 99), "max": 1000 * (lat[-1] if lat else 0.0),
                    "mean": 1000 * (sum(lat) / len(lat) if lat else 0.0),
                },
                "histograms": {"batch_size": self.batch_size.snapshot(), "request_seconds": self.request_seconds.snapshot(),
                               "queue_seconds": self.queue_seconds.snapshot(), "compute_seconds": self.compute_seconds.snapshot()},
                "_quantiles": [(q, _percentile(lat, 100 * q)) for q in QUANTILES],
                "_disconnect_routes": dict(self.disconnect_routes),
                "connections": dict(self.connections),
            }
        d.update(extra)
        return d


def public_json(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if not k.startswith("_")}


def _label(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(snap: dict[str, Any], prefix: str = "gan_deploy") -> str:
    """A `Metrics.snapshot()` in the Prometheus text exposition format (version 0.0.4)."""
    out: list[str] = []

    def head(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {prefix}_{name} {help_text}")
        out.append(f"# TYPE {prefix}_{name} {kind}")

    replica = {"replica": snap["replica"]} if snap.get("replica") else {}  # series never mix replicas

    def sample(name: str, value: float, **labels: Any) -> None:
        labels = {**labels, **replica}
        lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        out.append(f"{prefix}_{name}{{{lab}}} {_fmt_float(value)}" if lab else f"{prefix}_{name} {_fmt_float(value)}")

    def histogram(name: str, h: dict[str, Any], help_text: str) -> None:
        head(name, "histogram", help_text)
        for le, n in h["buckets"].items():
            sample(f"{name}_bucket", n, le=le)
        sample(f"{name}_sum", round(h["sum"], 9))
        sample(f"{name}_count", h["count"])

    head("http_requests_total", "counter", "HTTP requests answered, by route, method and status code.")
    for r in snap["http_requests"]:
        sample("http_requests_total", r["count"], route=r["route"], method=r["method"], code=r["code"])
    head("http_errors_total", "counter", "Answers other than 200, by status code and reason (500s included).")
    for e in snap["errors"]:
        sample("http_errors_total", e["count"], code=e["code"], reason=e["reason"])
    head("generate_requests_total", "counter", "/generate answers by status code.")
    for c, n in sorted(snap["requests"].items()):
        sample("generate_requests_total", n, code=c)
    head("client_disconnects_total", "counter", "Requests whose client went away before the answer.")
    sample("client_disconnects_total", snap["disconnects"])
    head("images_total", "counter", "Images returned in 200 answers.")
    sample("images_total", snap["images"])
    head("backend_calls_total", "counter", "Backend calls (batches formed across requests).")
    sample("backend_calls_total", snap["batches"])
    head("connections_total", "counter", "Connections at the edge: accepted, over_cap (past --max-connections), header_timeout, silent_timeout.")
    for ev, n in sorted(snap.get("connections", {}).items()):
        sample("connections_total", n, event=ev)
    hs = snap["histograms"]
    histogram("batch_size_images", hs["batch_size"], "Images per backend call (batches formed across requests).")
    histogram("request_duration_seconds", hs["request_seconds"], "Time from arrival in the replica to the answer, successful /generate.")
    histogram("queue_duration_seconds", hs["queue_seconds"], "Time an admitted /generate request waited before its last batch started.")
    histogram("compute_duration_seconds", hs["compute_seconds"], "Time of one backend call (one batch).")
    head("request_latency_seconds", "summary", f"Latency of successful /generate requests (quantiles over the last {LATENCY_WINDOW}).")
    for q, v in snap["_quantiles"]:
        sample("request_latency_seconds", round(v, 9), quantile=_fmt_float(q))
    sample("request_latency_seconds_sum", round(hs["request_seconds"]["sum"], 9))
    sample("request_latency_seconds_count", hs["request_seconds"]["count"])
    for name, key, help_text in (("in_flight_requests", "in_flight", "/generate requests admitted and not yet answered."),
                                 ("queue_capacity_requests", "capacity", "Most /generate requests this replica admits at once."),
                                 ("ready", "ready", "1 when the service takes traffic (model loaded and warmed, not draining)."),
                                 ("draining", "draining", "1 while draining before shutdown."),
                                 ("open_connections", "open_connections", "Connections open at the edge."),
                                 ("generator_replicas", "replicas", "Replicas configured.")):
        if key in snap:
            head(name, "gauge", help_text)
            sample(name, float(snap[key]))
    if "build" in snap:
        head("build_info", "gauge", "Version, model and backend of this service (value 1).")
        sample("build_info", 1, **snap["build"])
    head("start_time_seconds", "gauge", "Unix time this replica started.")
    sample("start_time_seconds", round(snap["started"], 3))
    return "\n".join(out) + "\n"

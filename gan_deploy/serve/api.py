"""The online service's contract, free of any serving engine: request parsing, responses, metrics.

`gan_deploy.serve.ray_serve` runs this on Ray Serve; keeping the contract here means it is tested without Ray and
`import gan_deploy.serve.api` stays cheap.

Request (POST /generate, a JSON object). An image is identified by a pair (seed, index), exactly as in
`gan-deploy generate`: the image for (S, i) is byte-identical to file i (`{i:06d}.png`) of
`gan-deploy generate --seed S -n N` for any N > i. Four ways to name the pairs, one per request:

    {"seed": S, "start": i0, "count": n}  -> (S, i0) ... (S, i0+n-1)     seed and start default to 0
    {"seed": S, "indices": [i, j, ...]}   -> (S, i), (S, j), ...
    {"seeds": [s, t, ...]}                -> (s, 0), (t, 0), ...         one image per seed (StyleGAN style):
                                                                        image 0 of `generate --seed s`
    {"start_seed": s0, "count": n}        -> (s0, 0) ... (s0+n-1, 0)

plus an optional "format":
    "base64" (default): JSON {"images": [{"seed", "index", "png": <base64 of the PNG file's bytes>}], ...}
    "png":    the PNG file's bytes themselves (image/png); one image per request
    "array":  a .npy file of uint8 pixels [N, H, W, C] (np.load(..., allow_pickle=False) reads it)

Errors are JSON {"error": {"status", "field", "value", "expected", "message"}}: 400 malformed request
(not JSON, not an object, unknown or conflicting fields), 413 too many images or too large a body,
422 a field of the wrong type or out of range, 503 overloaded (retry later), 404/405 wrong route or method.
"""
from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gan_deploy.core.images import encode
from gan_deploy.core.latents import MAX_SEED, latents_for

MAX_INDEX = MAX_SEED  # indices share the seed's range: latents_for hashes both as 64-bit words
RESPONSE_FORMATS = ("base64", "png", "array")
FIELDS = ("seed", "start", "count", "indices", "seeds", "start_seed", "format")
EXAMPLE = '{"seed": 0, "start": 0, "count": 4}'


class RequestError(Exception):
    """A bad request: the HTTP status and what the JSON error body says about it."""

    def __init__(self, status: int, field: str | None, value: Any, expected: str, message: str):
        super().__init__(message)
        self.status, self.field, self.value, self.expected, self.message = status, field, value, expected, message

    def body(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "field": self.field, "value": self.value,
                          "expected": self.expected, "message": self.message}}


@dataclass(frozen=True)
class ImageRequest:
    """What a valid request asks for: the (seed, index) pair of each image, in response order."""

    seeds: list[int]
    indices: list[int]
    fmt: str = "base64"

    def __len__(self) -> int:
        return len(self.indices)


def _preview(value: Any, limit: int = 80) -> Any:
    """The offending value as it goes into an error body: short, and always JSON-serializable."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:limit]).decode("utf-8", "replace")
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return value if len(text) <= limit else text[:limit] + "..."
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


def _int(v: Any, label: str, lo: int, hi: int, what: str) -> int:
    # bool is a subclass of int in Python, but `true` is not a seed
    if not isinstance(v, int) or isinstance(v, bool):
        raise RequestError(422, label, _preview(v), f"an integer {what}", f"{label} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise RequestError(422, label, v, f"an integer {what}", f"{label} = {v} is out of range")
    return v


def _count(data: dict[str, Any], max_images: int) -> int:
    n = _int(data["count"], "count", 1, MAX_INDEX, ">= 1")
    if n > max_images:
        raise RequestError(413, "count", n, f"at most {max_images} images per request",
                           "too many images in one request; split it into several requests")
    return n


def _int_list(data: dict[str, Any], name: str, max_images: int, what: str) -> list[int]:
    v = data[name]
    if not isinstance(v, list):
        raise RequestError(422, name, _preview(v), f"a list of integers {what}", f"{name} must be a list")
    if not v:
        raise RequestError(422, name, v, f"a non-empty list of integers {what}", f"{name} is empty")
    if len(v) > max_images:  # checked before the elements, so a huge list costs nothing more
        raise RequestError(413, name, f"{len(v)} items", f"at most {max_images} images per request",
                           "too many images in one request; split it into several requests")
    return [_int(x, f"{name}[{k}]", 0, MAX_SEED, what) for k, x in enumerate(v)]


def parse_request(body: bytes | str, max_images: int) -> ImageRequest:
    """A request body -> the images it asks for; RequestError (with its HTTP status) when it is bad."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, None, _preview(body), f"a JSON object such as {EXAMPLE}",
                           f"request body is not valid JSON ({getattr(e, 'msg', type(e).__name__)})") from None
    if not isinstance(data, dict):
        raise RequestError(400, None, _preview(data), f"a JSON object such as {EXAMPLE}", "request body must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(400, unknown[0], data[unknown[0]] if _is_small(data[unknown[0]]) else "...",
                           f"only the fields {', '.join(FIELDS)}", f"unknown field {unknown[0]!r}")
    fmt = data.get("format", "base64")
    if fmt not in RESPONSE_FORMATS:
        raise RequestError(422, "format", _preview(fmt), f"one of {', '.join(RESPONSE_FORMATS)}", "unknown response format")
    keys = set(data) - {"format"}

    def conflict(mode: str, allowed: set[str]) -> None:
        extra = sorted(keys - allowed)
        if extra:
            raise RequestError(400, extra[0], _preview(data[extra[0]]), f"with {mode!r} only the fields {', '.join(sorted(allowed | {'format'}))}",
                               f"field {extra[0]!r} cannot be combined with {mode!r}")

    seed_what = f"0 <= seed <= {MAX_SEED}"
    if "seeds" in data:
        conflict("seeds", {"seeds"})
        seeds = _int_list(data, "seeds", max_images, seed_what)
        indices = [0] * len(seeds)
    elif "start_seed" in data:
        conflict("start_seed", {"start_seed", "count"})
        if "count" not in data:
            raise RequestError(400, "count", None, "an integer >= 1 with 'start_seed'", "missing field 'count'")
        s0 = _int(data["start_seed"], "start_seed", 0, MAX_SEED, seed_what)
        n = _count(data, max_images)
        if s0 + n - 1 > MAX_SEED:
            raise RequestError(422, "count", n, f"start_seed + count - 1 <= {MAX_SEED}", "seeds run past the largest seed")
        seeds, indices = list(range(s0, s0 + n)), [0] * n
    elif "indices" in data:
        conflict("indices", {"indices", "seed"})
        seed = _int(data["seed"], "seed", 0, MAX_SEED, seed_what) if "seed" in data else 0
        indices = _int_list(data, "indices", max_images, f"0 <= index <= {MAX_INDEX}")
        seeds = [seed] * len(indices)
    elif "count" in data:
        conflict("count", {"seed", "start", "count"})
        seed = _int(data["seed"], "seed", 0, MAX_SEED, seed_what) if "seed" in data else 0
        i0 = _int(data["start"], "start", 0, MAX_INDEX, f"0 <= start <= {MAX_INDEX}") if "start" in data else 0
        n = _count(data, max_images)
        if i0 + n - 1 > MAX_INDEX:
            raise RequestError(422, "count", n, f"start + count - 1 <= {MAX_INDEX}", "indices run past the largest index")
        seeds, indices = [seed] * n, list(range(i0, i0 + n))
    else:
        raise RequestError(400, None, _preview(data), f"one of 'count', 'indices', 'seeds' or 'start_seed', e.g. {EXAMPLE}",
                           "the request names no images")
    if fmt == "png" and len(indices) != 1:
        raise RequestError(422, "format", fmt, "'png' with exactly one image; 'base64' or 'array' for several",
                           f"format 'png' returns one PNG file, but {len(indices)} images were asked for")
    return ImageRequest(seeds, indices, fmt)


def _is_small(v: Any) -> bool:
    return isinstance(v, (int, float, bool, type(None))) or (isinstance(v, str) and len(v) <= 80)


def request_latents(req: ImageRequest, latent_dim: int) -> np.ndarray:
    """Latents [N, Z] float32 of the request's images, in order; row k depends only on (seeds[k], indices[k])."""
    seeds = np.asarray(req.seeds, dtype=np.int64)
    idx = np.asarray(req.indices, dtype=np.uint64)
    first = req.seeds[0]
    if all(s == first for s in req.seeds):
        return latents_for(first, idx, latent_dim)
    z = np.empty((len(req), latent_dim), dtype=np.float32)
    for s in np.unique(seeds):  # latents_for is vectorized over indices for one seed
        rows = np.flatnonzero(seeds == s)
        z[rows] = latents_for(int(s), idx[rows], latent_dim)
    return z


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) pieces of at most `size`: a request larger than a batch is batched in pieces."""
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def render(req: ImageRequest, pixels: np.ndarray) -> tuple[bytes, str, dict[str, str]]:
    """uint8 pixels [N, H, W, C] -> (body, content type, extra headers) in the requested format.

    PNG bytes come from `images.encode`, the very function `generate` writes its files with."""
    if req.fmt == "png":
        headers = {"X-Gan-Seed": str(req.seeds[0]), "X-Gan-Index": str(req.indices[0])}
        return encode(pixels[0], "png"), "image/png", headers
    if req.fmt == "array":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
        return buf.getvalue(), "application/x-npy", {"X-Gan-Count": str(len(req))}
    images = [{"seed": s, "index": i, "png": base64.b64encode(encode(pixels[k], "png")).decode("ascii")}
              for k, (s, i) in enumerate(zip(req.seeds, req.indices))]
    body = {"format": "png", "count": len(images), "shape": list(pixels.shape[1:]), "images": images}
    return json.dumps(body).encode(), "application/json", {}


# -- metrics -------------------------------------------------------------------------------------------

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LATENCY_WINDOW = 10_000  # percentiles over the most recent successful requests


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was actually observed."""
    if not sorted_values:
        return 0.0
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


@dataclass
class Metrics:
    """Per-replica counters. Updated from the replica's event loop and its inference thread, hence the lock."""

    requests: dict[str, int] = field(default_factory=dict)  # HTTP status -> count, /generate only
    images: int = 0  # images returned with a 200
    batches: int = 0  # backend calls
    batch_images: int = 0  # images over all backend calls (mean formed batch = batch_images / batches)
    batch_hist: dict[int, int] = field(default_factory=dict)  # upper bucket bound -> batches of that size or less
    max_batch: int = 0
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._latency_sum = 0.0
        self._latency_count = 0

    def record_request(self, status: int, images: int = 0, seconds: float | None = None) -> None:
        with self._lock:
            key = str(status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.images += images
            if seconds is not None:
                self._latencies.append(seconds)
                self._latency_sum += seconds
                self._latency_count += 1

    def record_batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_images += size
            self.max_batch = max(self.max_batch, size)
            bound = next((b for b in BATCH_BUCKETS if size <= b), math.inf)
            key = int(bound) if bound != math.inf else -1  # -1: larger than the largest bucket
            self.batch_hist[key] = self.batch_hist.get(key, 0) + 1

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self._latencies)
            d = {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": dict(self.requests),
                "requests_total": sum(self.requests.values()),
                "images": self.images,
                "batches": self.batches,
                "batch_images": self.batch_images,
                "mean_batch_size": self.batch_images / self.batches if self.batches else 0.0,
                "max_batch_size_formed": self.max_batch,
                "batch_size_histogram": {("le_" + str(k) if k > 0 else "larger"): v for k, v in sorted(self.batch_hist.items(), key=lambda kv: kv[0] if kv[0] > 0 else math.inf)},
                "latency_ms": {
                    "window": len(lat),
                    "p50": 1000 * _percentile(lat, 50), "p90": 1000 * _percentile(lat, 90),
                    "p99": 1000 * _percentile(lat, 99), "max": 1000 * (lat[-1] if lat else 0.0),
                    "mean": 1000 * (sum(lat) / len(lat) if lat else 0.0),
                },
            }
            d["_latency_sum_s"], d["_latency_count"] = self._latency_sum, self._latency_count
        d.update(extra)
        return d


def prometheus_text(snap: dict[str, Any], prefix: str = "gan_deploy") -> str:
    """A `Metrics.snapshot()` in the Prometheus text exposition format (version 0.0.4)."""
    lines = [f"# HELP {prefix}_requests_total /generate requests by HTTP status.", f"# TYPE {prefix}_requests_total counter"]
    lines += [f'{prefix}_requests_total{{code="{c}"}} {n}' for c, n in sorted(snap["requests"].items())]
    lines += [f"# HELP {prefix}_images_total Images returned.", f"# TYPE {prefix}_images_total counter",
              f"{prefix}_images_total {snap['images']}"]
    lines += [f"# HELP {prefix}_batch_size Images per backend call (batches formed across requests).",
              f"# TYPE {prefix}_batch_size histogram"]
    cumulative = 0
    for k in BATCH_BUCKETS:
        cumulative += snap["batch_size_histogram"].get(f"le_{k}", 0)
        lines.append(f'{prefix}_batch_size_bucket{{le="{k}"}} {cumulative}')
    lines += [f'{prefix}_batch_size_bucket{{le="+Inf"}} {snap["batches"]}',
              f"{prefix}_batch_size_sum {snap['batch_images']}", f"{prefix}_batch_size_count {snap['batches']}"]
    lines += [f"# HELP {prefix}_request_latency_seconds Latency of successful /generate requests in the replica "
              f"(percentiles over the last {LATENCY_WINDOW}).", f"# TYPE {prefix}_request_latency_seconds summary"]
    for q in ("p50", "p90", "p99"):
        lines.append(f'{prefix}_request_latency_seconds{{quantile="0.{q[1:]}"}} {snap["latency_ms"][q] / 1000:.6f}')
    lines += [f"{prefix}_request_latency_seconds_sum {snap['_latency_sum_s']:.6f}",
              f"{prefix}_request_latency_seconds_count {snap['_latency_count']}"]
    if "in_flight" in snap:
        lines += [f"# HELP {prefix}_in_flight_requests /generate requests in this replica now.",
                  f"# TYPE {prefix}_in_flight_requests gauge", f"{prefix}_in_flight_requests {snap['in_flight']}"]
    return "\n".join(lines) + "\n"


@dataclass
class ServeConfig:
    """Everything a replica needs to build its runner and enforce its limits (sent to Ray, so plain data)."""

    artifact_kind: str  # checkpoint | onnx | engine
    artifact_path: str  # absolute: replicas may run with another working directory, or on another node
    artifact_sha256: str  # replicas refuse a different file at that path (e.g. a stale copy on another node)
    value_range: tuple[float, float] | None = None
    backend: str = "auto"
    device: str = "auto"
    max_batch_size: int = 64  # images per backend call
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests once its first image arrived
    max_images_per_request: int = 256
    max_queued: int = 64  # /generate requests a replica holds at once; more get 503
    num_replicas: int = 1
    num_cpus: float = 1.0  # per replica (Ray resource)
    num_gpus: float = 0.0  # per replica (Ray resource); 1 for a GPU backend

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def max_body_bytes(self) -> int:
        # the longest valid body: a list of max_images_per_request 19-digit seeds, plus slack for spaces
        return 4096 + 32 * self.max_images_per_request


def check_port_free(host: str, port: int) -> None:
    """Refuse an address already in use before starting anything (Ray's proxy would only log the failure)."""
    from gan_deploy.core.errors import GanDeployError
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise GanDeployError("cannot listen on this address", f"{host}:{port} ({e.strerror})", expected="a free port", hint="choose another --port, or stop what uses it") from None

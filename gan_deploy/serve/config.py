"""`ServeConfig`: what the service runs (an `Artifact`), its limits, and where it listens; checked on construction.

The replicas get it over Ray as plain data: `to_dict()` names the artifact by kind, absolute path and sha256
(with the rest of what a replica reads), and `ServeConfig.from_dict()` on the replica loads that file again and
refuses it if its sha256 differs (a stale copy on another node). The listener's and Ray's own settings (host,
port, route prefix, app name, Ray address, timeouts of the driver) stay in the process that starts the service.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.backends import CHOICES as BACKEND_CHOICES
from gan_deploy.core.errors import GanDeployError, StaleArtifact

APP_NAME = "gan-deploy"  # the Ray Serve application's default name
MAX_HEADER_BYTES = 16384  # the HTTP server itself refuses larger header blocks
# read by the process that starts the service only, never by a replica: not in to_dict()
DRIVER_FIELDS = ("host", "port", "route_prefix", "app_name", "ray_address", "keep_alive_s", "start_timeout_s", "access_log",
                 "max_connections", "header_timeout_s", "pre_stop_s", "ray")
# upper bounds of every resource option (one place): past them a one-line error, not an exhausted machine
MAX_CONNECTIONS = 100_000
MAX_REPLICAS = 1024
MAX_QUEUED = 100_000
MAX_IMAGES = 65_536
MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class ServeConfig:
    """The online service: the model, its backend, batching and limits per replica, replicas and their Ray
    resources, and the HTTP listener. Raises a one-line GanDeployError for a value it cannot run with."""

    artifact: Artifact
    backend: str = "auto"
    device: str = "auto"
    max_batch_size: int = 64  # images per backend call
    # how long a batch waits for more requests once its first image arrived. 0: a batch forms from what is waiting the
    # moment the backend is free; requests that arrive while one runs join the next. Waiting while the backend idles
    # only delays answers: 16 closed-loop 1-image clients got 661-731 requests/s at 5 ms, 1,412 at 0 (docs/serving.md)
    batch_wait_ms: float = 0.0
    max_images_per_request: int = 256
    max_queued: int = 64  # /generate requests admitted per replica at once; more get 503 at once
    num_replicas: int = 1
    num_cpus: float = 1.0  # per replica (Ray resource)
    num_gpus: float | None = None  # per replica (Ray resource); None: 1 on a CUDA device, else 0 (`gpus`)
    read_timeout_s: float = 10.0  # the whole body must arrive within this (slow clients get 408)
    request_timeout_s: float = 60.0  # arrival -> answer (504 past it)
    max_body_bytes: int = 0  # 0: derived from max_images_per_request (the longest valid body, with slack)
    max_header_bytes: int = 8192  # request headers larger than this get 431
    drain_timeout_s: float = 30.0  # SIGTERM: in-flight requests get this long to finish
    model_name: str = "gan_generator"  # the model's name on the KServe v2 routes (/v2/models/<name>)
    # the listener and Ray (DRIVER_FIELDS)
    host: str = "127.0.0.1"  # on loopback, a local Ray binds loopback too
    port: int = 8000
    route_prefix: str = "/"  # URL prefix of the app, e.g. /gan: /gan/generate
    app_name: str = APP_NAME  # Ray Serve application name (several can share a cluster)
    ray_address: str | None = None  # a Ray cluster to run on; None: $RAY_ADDRESS, else a new local Ray
    keep_alive_s: int = 5  # how long an idle keep-alive connection stays open
    start_timeout_s: float = 120.0  # placement, model load and warm-up of the replicas
    access_log: bool = False  # log every request (it costs throughput)
    max_connections: int = 1024  # open connections at the edge; past it: probes answered, everything else a JSON 503
    header_timeout_s: float = 10.0  # a connection's request line and headers must arrive within this
    pre_stop_s: float = 0.0  # SIGTERM: /readyz 503 for this long while requests are still served, then the listener closes
    ray: bool = False  # run the generator as Ray Serve replicas (implied by num_replicas > 1 or a ray_address)

    def __post_init__(self) -> None:
        if not isinstance(self.artifact, Artifact):
            raise GanDeployError("ServeConfig needs an Artifact", type(self.artifact).__name__,
                                 expected="gan_deploy.load_artifact(...)'s result")
        if self.backend not in BACKEND_CHOICES:
            raise GanDeployError("unknown backend", repr(self.backend), expected=f"one of {', '.join(BACKEND_CHOICES)}")
        _at_least("--max-batch-size", self.max_batch_size, 1, MAX_IMAGES, integer=True)
        _at_least("--batch-wait-ms", self.batch_wait_ms, 0, 1000 * MAX_SECONDS)
        _at_least("--max-images-per-request", self.max_images_per_request, 1, MAX_IMAGES, integer=True)
        _at_least("--max-queued", self.max_queued, 1, MAX_QUEUED, integer=True)
        _at_least("--replicas", self.num_replicas, 1, MAX_REPLICAS, integer=True)
        _at_least("--num-cpus", self.num_cpus, 0, 1024)
        if self.num_gpus is not None:
            _at_least("--num-gpus", self.num_gpus, 0, 64)
        _at_least("--read-timeout", self.read_timeout_s, 0.1, MAX_SECONDS)
        _at_least("--request-timeout", self.request_timeout_s, 0.1, MAX_SECONDS)
        if self.max_body_bytes != 0:  # 0: derived
            _at_least("--max-body-bytes", self.max_body_bytes, 64, 64 * 1024 * 1024, integer=True)
        _at_least("--max-header-bytes", self.max_header_bytes, 256, MAX_HEADER_BYTES, integer=True)
        _at_least("--drain-timeout", self.drain_timeout_s, 0, MAX_SECONDS)
        _at_least("--port", self.port, 0, 65535, integer=True)  # 0: any free port (tests)
        _at_least("--keep-alive-timeout", self.keep_alive_s, 1, MAX_SECONDS, integer=True)
        _at_least("--start-timeout", self.start_timeout_s, 1, MAX_SECONDS)
        _at_least("--max-connections", self.max_connections, 1, MAX_CONNECTIONS, integer=True)
        _at_least("--header-timeout", self.header_timeout_s, 0.1, MAX_SECONDS)
        _at_least("--pre-stop", self.pre_stop_s, 0, MAX_SECONDS)
        if self.batch_wait_ms >= 1000 * self.request_timeout_s:  # every request of an unfilled batch would get a 504
            raise GanDeployError("--batch-wait-ms is not shorter than --request-timeout", f"{self.batch_wait_ms:g} ms",
                                 expected=f"less than --request-timeout ({self.request_timeout_s:g} s), usually a few ms",
                                 hint="lower --batch-wait-ms (0: no waiting), or raise --request-timeout")
        if not isinstance(self.route_prefix, str) or not self.route_prefix.startswith("/") or (
                len(self.route_prefix) > 1 and self.route_prefix.endswith("/")):
            raise GanDeployError("bad --route-prefix", repr(self.route_prefix), expected="'/' or a path such as /gan (no trailing slash)")
        if self.artifact.kind == "engine":  # the engine's optimization profile bounds every batch it can run
            from gan_deploy.artifacts.engine import read_sidecar
            top = read_sidecar(self.artifact.path)["profile"]["max"]
            if self.max_batch_size > top:
                raise GanDeployError("--max-batch-size exceeds the engine's profile", self.max_batch_size, expected=f"<= {top}, the engine's max batch", hint="lower --max-batch-size, or rebuild the engine with a larger max batch")
        if self.max_batch_size > self.max_images_per_request * self.max_queued:
            raise GanDeployError("--max-batch-size can never fill", self.max_batch_size, expected=f"<= --max-images-per-request x --max-queued ({self.max_images_per_request * self.max_queued})")

    @property
    def gpus(self) -> float:
        """GPUs Ray reserves per replica: num_gpus, or by default 1 on a CUDA device and 0 elsewhere ("auto"
        counts as elsewhere until `serve()` settled the device on this machine)."""
        if self.num_gpus is not None:
            return float(self.num_gpus)
        return 1.0 if self.device.startswith("cuda") else 0.0

    @property
    def body_limit(self) -> int:
        if self.max_body_bytes:
            return self.max_body_bytes
        # the longest valid body: a list of max_images_per_request 19-digit seeds, plus slack for spaces
        # (a KServe v2 body with seeds and indices is about twice that)
        return 4096 + 64 * self.max_images_per_request

    @property
    def uses_ray(self) -> bool:
        """Whether the generator runs as Ray Serve replicas (else in the HTTP process itself)."""
        return self.ray or self.num_replicas > 1 or bool(self.ray_address or os.environ.get("RAY_ADDRESS"))

    @property
    def capacity(self) -> int:
        """/generate requests admitted at once over all replicas (what the edge admits)."""
        return self.max_queued * self.num_replicas

    def to_dict(self) -> dict[str, Any]:
        """What a replica needs, as plain data (for Ray and the config file): the artifact as kind, absolute path,
        sha256 and (ONNX) value range, then every field but DRIVER_FIELDS, with num_gpus settled."""
        art = self.artifact
        d: dict[str, Any] = {"artifact_kind": art.kind, "artifact_path": os.path.abspath(art.path), "artifact_sha256": art.sha256,
                             "value_range": list(art.spec.value_range) if art.kind == "onnx" else None}
        d.update((f.name, getattr(self, f.name)) for f in fields(self) if f.name != "artifact" and f.name not in DRIVER_FIELDS)
        d["num_gpus"] = self.gpus
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServeConfig:
        """`to_dict()`'s data -> a config, loading the artifact again from its path; StaleArtifact if that file's
        sha256 is not the one recorded (e.g. a stale copy on another node)."""
        from gan_deploy.artifacts.load import load_artifact

        d = dict(d)
        kind, path, sha256, value_range = (d.pop(k) for k in ("artifact_kind", "artifact_path", "artifact_sha256", "value_range"))
        paths = {kind: path}
        art = load_artifact(paths.get("checkpoint"), paths.get("onnx"), paths.get("engine"), tuple(value_range) if value_range else None)
        if art.sha256 != sha256:
            raise StaleArtifact("the model file on this replica differs from the one `serve` was started with", f"{art.path} sha256 {art.sha256[:12]}", expected=f"sha256 {sha256[:12]}", hint="copy the same file to every node (or use a shared filesystem)")
        return cls(art, **d)


def _at_least(flag: str, value: Any, lo: float, hi: float = math.inf, integer: bool = False) -> None:
    """One range check of a number (bools are not numbers here), named by its CLI option."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (lo <= value <= hi):
        bound = f"{lo:g} to {hi:g}" if hi != math.inf else f">= {lo:g}"
        raise GanDeployError(f"bad {flag}", value, expected=f"{'an integer' if integer else 'a number'} {bound}")


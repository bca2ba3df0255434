"""Load test of `gan-deploy serve`: N concurrent clients on loopback, every response checked byte for byte.

Starts the service in-process (local Ray, 127.0.0.1, a free port) unless --url points at one already running
on this machine, then runs N client threads, each with its own keep-alive connection, each sending requests
for 1..--max-count images of a random (seed, start) until --requests in all or --duration seconds have
passed, whichever comes first. Every image is compared with the file `gan-deploy generate` wrote for the
same seed and index. Reports throughput, client-side latency p50/p90/p99, and the mean batch size the
service actually formed (from its /metrics, before and after). With --compare-unbatched (self-started
only) the same load also runs against a second app with max batch size 1 (no batching across clients).

    python benchmarks/load_test.py                        # default model if trained, else one of its size
    python benchmarks/load_test.py --clients 32 --requests 2000 --duration 60 --json load.json
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --onnx models/digits_dcgan.onnx

Loopback only: --url must be 127.0.0.1, ::1 or localhost. Exit code 1 if any response is wrong or fails.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gan_deploy.artifacts.load import load_artifact  # noqa: E402
from gan_deploy.backends import make_runner  # noqa: E402
from gan_deploy.generate.pipeline import generate  # noqa: E402

MAX_REQUESTS, MAX_DURATION = 100_000, 600.0  # hard bounds whatever the arguments say
SEEDS, PER_SEED = (0, 1, 2, 3), 256  # the reference: generate's files for these seeds, indices 0..PER_SEED-1


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)] if v else float("nan")


def references(art, backend: str, folder: Path) -> dict[tuple[int, int], bytes]:
    """(seed, index) -> the bytes of `gan-deploy generate --seed seed`'s file for that index."""
    ref = {}
    for s in SEEDS:
        out = folder / f"seed{s}"
        generate(make_runner(backend, art, "cpu"), PER_SEED, out, batch_size=64, seed=s, progress=False)
        for i in range(PER_SEED):
            ref[(s, i)] = (out / f"{i:06d}.png").read_bytes()
    return ref


class Client(threading.Thread):
    def __init__(self, k: int, host: str, port: int, path: str, max_count: int, budget: "Budget",
                 ref: dict[tuple[int, int], bytes]):
        super().__init__(daemon=True)
        self.rng = random.Random(k)
        self.host, self.port, self.path, self.max_count, self.budget, self.ref = host, port, path, max_count, budget, ref
        self.latencies: list[float] = []
        self.images = 0
        self.statuses: dict[int, int] = {}
        self.wrong: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while self.budget.take():
            seed = self.rng.choice(SEEDS)
            count = self.rng.randint(1, self.max_count)
            start = self.rng.randrange(0, PER_SEED - count + 1)
            fmt = "png" if count == 1 else "base64"
            body = json.dumps({"seed": seed, "start": start, "count": count, "format": fmt})
            t0 = time.perf_counter()
            try:
                conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.statuses[-1] = self.statuses.get(-1, 0) + 1
                self.wrong.append(f"{body}: {type(e).__name__} {e}")
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                continue
            dt = time.perf_counter() - t0
            self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
            if resp.status != 200:
                self.wrong.append(f"{body}: HTTP {resp.status} {data[:200]!r}")
                continue
            got = [data] if fmt == "png" else [base64.b64decode(im["png"]) for im in json.loads(data)["images"]]
            want = [self.ref[(seed, i)] for i in range(start, start + count)]
            if got != want:
                self.wrong.append(f"{body}: images differ from generate's files")
                continue
            self.latencies.append(dt)
            self.images += count
        conn.close()


class Budget:
    """At most `requests` requests and `seconds` of wall time, shared by all clients."""

    def __init__(self, requests: int, seconds: float):
        self.left, self.deadline = requests, time.perf_counter() + seconds
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.perf_counter() > self.deadline:
                return False
            self.left -= 1
            return True


def metrics(host: str, port: int, prefix: str) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", f"{prefix}/metrics")
    m = json.loads(conn.getresponse().read())
    conn.close()
    return m


def run_load(host: str, port: int, prefix: str, clients: int, requests: int, duration: float, max_count: int,
             ref: dict) -> dict:
    before = metrics(host, port, prefix)
    budget = Budget(requests, duration)
    threads = [Client(k, host, port, f"{prefix}/generate", max_count, budget, ref) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = metrics(host, port, prefix)
    lat = [x for t in threads for x in t.latencies]
    statuses: dict[int, int] = {}
    for t in threads:
        for s, c in t.statuses.items():
            statuses[s] = statuses.get(s, 0) + c
    batches = after["batches"] - before["batches"]
    batch_images = after["batch_images"] - before["batch_images"]
    return {
        "clients": clients, "seconds": wall, "requests_ok": len(lat), "statuses": statuses,
        "images": sum(t.images for t in threads), "images_per_s": sum(t.images for t in threads) / wall,
        "requests_per_s": len(lat) / wall,
        "latency_ms": {q: 1000 * percentile(lat, float(q[1:])) for q in ("p50", "p90", "p99")},
        "backend_calls": batches, "mean_formed_batch": batch_images / batches if batches else 0.0,
        "max_formed_batch": after["max_batch_size_formed"],
        "server_latency_ms": after["latency_ms"],
        "wrong": [w for t in threads for w in t.wrong][:20],
        "n_wrong": sum(len(t.wrong) for t in threads),
    }


def default_model(tmp: Path, checkpoint: str | None, onnx: str | None):
    if onnx or checkpoint:
        return load_artifact(checkpoint, onnx)
    from gan_deploy.artifacts.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
    if DEFAULT_CHECKPOINT.exists():
        return load_artifact(DEFAULT_CHECKPOINT)
    import torch

    from gan_deploy.nets.config import GeneratorConfig
    from gan_deploy.nets.networks import build_generator, init_weights
    torch.manual_seed(0)
    cfg = GeneratorConfig()  # the default model's architecture and size, random weights
    g = build_generator(cfg)
    g.apply(init_weights)
    print(f"(no trained default model: using a random generator of its size, {cfg})", file=sys.stderr)
    return load_artifact(save_checkpoint(tmp / "random.safetensors", g, cfg, train={"dataset": "none"}).path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running service on loopback (default: start one here)")
    ap.add_argument("--checkpoint")
    ap.add_argument("--onnx")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1000, help=f"total requests (at most {MAX_REQUESTS})")
    ap.add_argument("--duration", type=float, default=60.0, help=f"seconds at most (at most {MAX_DURATION:g})")
    ap.add_argument("--max-count", type=int, default=4, help="images per request: uniform in 1..max-count")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--compare-unbatched", action="store_true", help="also run against max batch size 1")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    requests, duration = min(a.requests, MAX_REQUESTS), min(a.duration, MAX_DURATION)
    if not 1 <= a.max_count <= PER_SEED or a.clients < 1:
        ap.error(f"--max-count must be in 1..{PER_SEED} and --clients >= 1")

    with tempfile.TemporaryDirectory() as tmp:
        art = default_model(Path(tmp), a.checkpoint, a.onnx)
        print(f"model: {art.describe()}", file=sys.stderr)
        ref = references(art, a.backend, Path(tmp))
        apps = {"batched": ""}
        started = False
        if a.url:
            u = urlsplit(a.url)
            if u.hostname not in ("127.0.0.1", "::1", "localhost"):
                ap.error("--url must be on loopback (127.0.0.1, ::1 or localhost): this is a local load test")
            host, port, apps["batched"] = u.hostname, u.port or 80, u.path.rstrip("/")
        else:
            from ray import serve as ray_serve

            from gan_deploy import serve
            from gan_deploy.serve.api import ServeConfig
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                host, port = "127.0.0.1", s.getsockname()[1]
            common = dict(artifact_kind=art.kind, artifact_path=str(art.path.resolve()), artifact_sha256=art.sha256,
                          backend=a.backend, device="cpu", max_images_per_request=max(256, a.max_count),
                          max_queued=4 * a.clients, num_cpus=0.5)
            print("starting Ray Serve ...", file=sys.stderr)
            serve.start(ServeConfig(**common, max_batch_size=a.max_batch_size, batch_wait_ms=a.batch_wait_ms), host, port,
                        name="batched")
            started = True
            if a.compare_unbatched:
                ray_serve.run(serve.build_app(ServeConfig(**common, max_batch_size=1, batch_wait_ms=0.0)), name="unbatched",
                              route_prefix="/unbatched")
                apps["unbatched"] = "/unbatched"
        try:
            results = {}
            for name, prefix in apps.items():
                print(f"load: {a.clients} clients, <= {requests} requests, <= {duration:g} s, 1..{a.max_count} images "
                      f"per request -> {name} ...", file=sys.stderr)
                results[name] = run_load(host, port, prefix, a.clients, requests, duration, a.max_count, ref)
        finally:
            if started:
                serve.stop()

    print(f"{'app':<10} {'requests':>8} {'images/s':>9} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'mean batch':>10} {'max batch':>9} {'calls':>6} {'wrong':>5}")
    for name, r in results.items():
        print(f"{name:<10} {r['requests_ok']:>8} {r['images_per_s']:>9.0f} {r['requests_per_s']:>7.0f} "
              f"{r['latency_ms']['p50']:>8.1f} {r['latency_ms']['p90']:>8.1f} {r['latency_ms']['p99']:>8.1f} "
              f"{r['mean_formed_batch']:>10.2f} {r['max_formed_batch']:>9} {r['backend_calls']:>6} {r['n_wrong']:>5}")
        for w in r["wrong"][:5]:
            print(f"  wrong: {w}")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": art.describe(), "backend": a.backend, "results": results}, indent=2) + "\n")
    return 1 if any(r["n_wrong"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

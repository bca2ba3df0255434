"""Load test of `gan-deploy serve`: concurrent clients on loopback, every image response checked byte for byte.

Starts the service in-process (local Ray, 127.0.0.1, a free port) unless --url points at one already running
on this machine, and reports how long the start took. Then:

* load: N client threads, each with its own keep-alive connection, each sending requests for 1..--max-count
  images of a random (seed, start) until --requests in all or --duration seconds have passed, whichever
  comes first. Every image is compared with the file `gan-deploy generate` wrote for the same seed and index.
  Reports throughput, client-side latency p50/p90/p99 and the mean batch the service formed (its /metrics,
  before and after). --compare-unbatched (self-started only) runs the same load against a second app with
  max batch size 1 (no batching across clients).
* --overload K: K asyncio clients in a closed loop (each sends its next request as soon as it has an answer)
  for --overload-seconds against the batched app, whose queue holds --max-queued requests: reports how many
  got 200 and 503, and the time to a 503 (p50/p99/max): how fast an overloaded service says so.
* --slow-clients K: K connections that announce a 100-byte body and send 12 bytes stay open while the load
  runs; reports the load's figures meanwhile and when (and with what) the slow ones were answered.

    python benchmarks/load_test.py --clients 16 --requests 800 --duration 60 --compare-unbatched
    python benchmarks/load_test.py --overload 256 --slow-clients 64 --json load.json
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --onnx models/digits_dcgan.onnx

Loopback only: --url must be 127.0.0.1, ::1 or localhost. Every phase is bounded in requests and seconds.
Exit code 1 if any response is wrong or fails.
"""
from __future__ import annotations

import argparse
import asyncio
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
from gan_deploy.generate.pipeline import GenerateOptions, generate  # noqa: E402

MAX_REQUESTS, MAX_DURATION = 100_000, 600.0  # hard bounds whatever the arguments say
MAX_OVERLOAD_CLIENTS, MAX_SLOW_CLIENTS = 2000, 1000
SEEDS, PER_SEED = (0, 1, 2, 3), 256  # the reference: generate's files for these seeds, indices 0..PER_SEED-1


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)] if v else float("nan")


def references(art, backend: str, folder: Path) -> dict[tuple[int, int], bytes]:
    """(seed, index) -> the bytes of `gan-deploy generate --seed seed`'s file for that index."""
    ref = {}
    for s in SEEDS:
        out = folder / f"seed{s}"
        generate(make_runner(backend, art, "cpu"), GenerateOptions(n=PER_SEED, out=out, batch_size=64, seed=s, progress=False))
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
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
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
    conn.request("GET", f"{prefix}/metrics?format=json")
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
        t.join(timeout=duration + 120)
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


# -- overload: many closed-loop clients, a bounded queue ----------------------------------------------

class _Conn:
    """One keep-alive HTTP/1.1 connection (asyncio streams); reconnects when the server closes it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes, dict]:
        """(status, body, headers); status -1 on a failure (the connection is then dropped)."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
            assert self.reader is not None
            self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                              % (path.encode(), self.host.encode(), len(body)) + body)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            data = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), timeout)
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, data, headers
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError, AssertionError):
            self.close()
            return -1, b"", {}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def run_overload(host: str, port: int, prefix: str, clients: int, seconds: float, ref: dict, honor_retry_after: bool) -> dict:
    """`clients` closed-loop clients for `seconds`, each on its own keep-alive connection: a 1-image PNG request,
    wait for the answer, repeat (after a 503: at once, or after its Retry-After with honor_retry_after)."""
    path = f"{prefix}/generate"
    ok_t: list[float] = []
    refused_t: list[float] = []
    other: dict[int, int] = {}
    wrong: list[str] = []
    json_503 = retry_after = 0

    async def client(k: int, deadline: float) -> None:
        nonlocal json_503, retry_after
        rng = random.Random(1000 + k)
        conn = _Conn(host, port)
        while time.perf_counter() < deadline:
            seed, i = rng.choice(SEEDS), rng.randrange(PER_SEED)
            body = json.dumps({"seed": seed, "indices": [i], "format": "png"}).encode()
            t0 = time.perf_counter()
            status, data, headers = await conn.post(path, body, 60)
            dt = time.perf_counter() - t0
            if status == 200:
                ok_t.append(dt)
                if data != ref[(seed, i)]:
                    wrong.append(f"{body!r}: image differs from generate's file")
            elif status == 503:
                refused_t.append(dt)
                json_503 += headers.get("content-type", "").startswith("application/json")
                retry_after += "retry-after" in headers
                if honor_retry_after:
                    await asyncio.sleep(min(float(headers.get("retry-after", "1")), max(0.0, deadline - time.perf_counter())))
            else:
                other[status] = other.get(status, 0) + 1
                if len(wrong) < 20:
                    wrong.append(f"HTTP {status}: {data[:160]!r}")
        conn.close()

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k, t0 + seconds) for k in range(clients)))
        return time.perf_counter() - t0

    wall = asyncio.run(main())
    return {"clients": clients, "honor_retry_after": honor_retry_after, "seconds": wall, "ok": len(ok_t),
            "refused_503": len(refused_t), "other": other, "ok_per_s": len(ok_t) / wall, "refused_per_s": len(refused_t) / wall,
            "time_to_503_ms": {q: 1000 * percentile(refused_t, float(q[1:])) for q in ("p50", "p90", "p99")} | {"max": 1000 * max(refused_t, default=float("nan"))},
            "time_to_200_ms": {q: 1000 * percentile(ok_t, float(q[1:])) for q in ("p50", "p90", "p99")},
            "json_503s": json_503, "retry_after_503s": retry_after, "wrong": wrong[:20], "n_wrong": len(wrong)}


# -- slow clients -------------------------------------------------------------------------------------

def open_slow_clients(host: str, port: int, prefix: str, k: int) -> list[tuple[socket.socket, float]]:
    """k connections that announce a 100-byte body and send 12 bytes of it, then nothing."""
    out = []
    for _ in range(k):
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"POST %s/generate HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                  % (prefix.encode(), host.encode()) + b'{"count": 1,')
        out.append((s, time.perf_counter()))
    return out


def collect_slow_clients(slow: list[tuple[socket.socket, float]], limit_s: float) -> dict:
    """What each slow connection got (status line) and after how long; closes them."""
    answers: dict[str, int] = {}
    waited: list[float] = []
    deadline = time.perf_counter() + limit_s
    for s, t_open in slow:
        try:
            s.settimeout(max(0.1, deadline - time.perf_counter()))
            head = s.recv(4096)
            line = head.split(b"\r\n")[0].decode("latin-1") or "closed"
            waited.append(time.perf_counter() - t_open)
        except OSError as e:
            line = type(e).__name__
        answers[line] = answers.get(line, 0) + 1
        s.close()
    return {"answers": answers, "answered_after_s": {"min": min(waited, default=float("nan")), "max": max(waited, default=float("nan"))}}


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
    ap.add_argument("--max-queued", type=int, default=64, help="the batched app's queue (self-started only)")
    ap.add_argument("--compare-unbatched", action="store_true", help="also run against max batch size 1")
    ap.add_argument("--overload", type=int, default=0, metavar="K", help=f"then K closed-loop clients (at most {MAX_OVERLOAD_CLIENTS})")
    ap.add_argument("--overload-seconds", type=float, default=10.0)
    ap.add_argument("--honor-retry-after", action="store_true", help="overload clients wait Retry-After after a 503 (default: retry at once)")
    ap.add_argument("--slow-clients", type=int, default=0, metavar="K", help=f"K slow connections during a load run (at most {MAX_SLOW_CLIENTS})")
    ap.add_argument("--read-timeout", type=float, default=10.0, help="the service's body read timeout (self-started only)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    requests, duration = min(a.requests, MAX_REQUESTS), min(a.duration, MAX_DURATION)
    overload, slow_k = min(a.overload, MAX_OVERLOAD_CLIENTS), min(a.slow_clients, MAX_SLOW_CLIENTS)
    overload_s = min(a.overload_seconds, MAX_DURATION)
    if not 1 <= a.max_count <= PER_SEED or a.clients < 1:
        ap.error(f"--max-count must be in 1..{PER_SEED} and --clients >= 1")

    results: dict = {}
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
            from gan_deploy.serve import driver as serve
            from gan_deploy.serve.config import ServeConfig
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                host, port = "127.0.0.1", s.getsockname()[1]
            common = dict(backend=a.backend, device="cpu", max_images_per_request=max(256, a.max_count), num_cpus=0.5,
                          read_timeout_s=a.read_timeout, max_queued=a.max_queued, host=host, port=port)
            print("starting Ray Serve ...", file=sys.stderr)
            t0 = time.perf_counter()
            serve.start(ServeConfig(art, **common, max_batch_size=a.max_batch_size, batch_wait_ms=a.batch_wait_ms, app_name="batched"))
            results["startup_s"] = time.perf_counter() - t0
            print(f"started in {results['startup_s']:.1f} s (Ray, Serve, the replica with its model loaded and warmed)", file=sys.stderr)
            started = True
            if a.compare_unbatched:
                t0 = time.perf_counter()
                serve.deploy(ServeConfig(art, **common, max_batch_size=1, batch_wait_ms=0.0, app_name="unbatched", route_prefix="/unbatched"))
                serve.wait_for_http(f"http://{host}:{port}/unbatched")
                results["second_app_startup_s"] = time.perf_counter() - t0
                apps["unbatched"] = "/unbatched"
        try:
            results["load"] = {}
            for name, prefix in apps.items():
                print(f"load: {a.clients} clients, <= {requests} requests, <= {duration:g} s, 1..{a.max_count} images "
                      f"per request -> {name} ...", file=sys.stderr)
                results["load"][name] = run_load(host, port, prefix, a.clients, requests, duration, a.max_count, ref)
            if slow_k:
                print(f"slow clients: {slow_k} connections announce 100 bytes and send 12, while {a.clients} clients load "
                      f"the batched app ...", file=sys.stderr)
                slow = open_slow_clients(host, port, apps["batched"], slow_k)
                time.sleep(0.5)
                during = run_load(host, port, apps["batched"], a.clients, min(requests, 400), min(duration, 20.0), a.max_count, ref)
                results["slow_clients"] = {"k": slow_k, "load_meanwhile": during,
                                           **collect_slow_clients(slow, a.read_timeout + 30)}
            if overload:
                print(f"overload: {overload} closed-loop clients for {overload_s:g} s against a queue of "
                      f"{a.max_queued} ...", file=sys.stderr)
                results["overload"] = run_overload(host, port, apps["batched"], overload, overload_s, ref, a.honor_retry_after)
                results["overload"]["ready_after"] = metrics(host, port, apps["batched"]).get("ready")
        finally:
            if started:
                serve.stop()

    if "startup_s" in results:
        print(f"start-up: {results['startup_s']:.1f} s")
    print(f"{'app':<10} {'requests':>8} {'images/s':>9} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'mean batch':>10} {'max batch':>9} {'calls':>6} {'wrong':>5}")
    rows = list(results["load"].items()) + ([("w/ slow", results["slow_clients"]["load_meanwhile"])] if "slow_clients" in results else [])
    for name, r in rows:
        print(f"{name:<10} {r['requests_ok']:>8} {r['images_per_s']:>9.0f} {r['requests_per_s']:>7.0f} "
              f"{r['latency_ms']['p50']:>8.1f} {r['latency_ms']['p90']:>8.1f} {r['latency_ms']['p99']:>8.1f} "
              f"{r['mean_formed_batch']:>10.2f} {r['max_formed_batch']:>9} {r['backend_calls']:>6} {r['n_wrong']:>5}")
        for w in r["wrong"][:5]:
            print(f"  wrong: {w}")
    if "slow_clients" in results:
        sc = results["slow_clients"]
        print(f"slow clients: {sc['k']} answered {sc['answers']} after {sc['answered_after_s']['min']:.1f}-{sc['answered_after_s']['max']:.1f} s")
    if "overload" in results:
        o = results["overload"]
        t = o["time_to_503_ms"]
        print(f"overload: {o['clients']} clients ({'honouring Retry-After' if o['honor_retry_after'] else 'retrying at once'}), {o['seconds']:.1f} s: {o['ok']} x 200 ({o['ok_per_s']:.0f}/s), "
              f"{o['refused_503']} x 503 ({o['refused_per_s']:.0f}/s, {o['json_503s']} JSON, {o['retry_after_503s']} with Retry-After), "
              f"other {o['other']}; time to 503 p50 {t['p50']:.1f} ms, p90 {t['p90']:.1f} ms, p99 {t['p99']:.1f} ms, max {t['max']:.1f} ms; "
              f"time to 200 p50 {o['time_to_200_ms']['p50']:.0f} ms, p99 {o['time_to_200_ms']['p99']:.0f} ms")
        for w in o["wrong"][:5]:
            print(f"  wrong: {w}")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": art.describe(), "backend": a.backend, **results}, indent=2) + "\n")
    n_wrong = sum(r["n_wrong"] for _, r in rows) + results.get("overload", {}).get("n_wrong", 0)
    return 1 if n_wrong else 0


if __name__ == "__main__":
    sys.exit(main())

"""Load test of `gan-deploy serve`: keep-alive clients on loopback, every image checked byte for byte.

Starts `gan-deploy serve` as a process (the code of this tree, or of another checkout with --pythonpath, so
two versions run under the same load script) on a free loopback port, or uses --url (a service already
running on this machine). Then, for each images-per-request count in --counts (default 1,16,256):

* K asyncio clients (--clients, default 16), each with its own keep-alive connection, each sending its next
  request the moment it has the answer (a closed loop), for --duration seconds or --requests requests,
  whichever comes first. A request for 1 image asks for format "png" (the PNG file itself), more for
  "base64" JSON. Every image is compared with the file `gan-deploy generate` wrote for the same (seed, index).
  Reports requests/s, images/s, client-side latency p50/p90/p99, the 503 count, other failures and wrong images,
  and (for a service it started) the CPU time the service's processes spent per request and per image: on a
  shared machine the throughput follows the other jobs' load, the CPU cost per request much less.
* --overload K: then K such clients with 1-image requests for --overload-seconds against the service's queue:
  how many got 200 and 503, and the time to a 503 (how fast an overloaded service says so).

    python benchmarks/load_test.py --onnx models/digits_dcgan.onnx --counts 1,16,256 --duration 20
    python benchmarks/load_test.py --onnx g.onnx --pythonpath /tmp/oldserve     # another version of the code
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --onnx g.onnx    # a running service

Loopback only: --url must be 127.0.0.1, ::1 or localhost. Every phase is bounded in requests and seconds.
Exit code 1 if any image is wrong or any request failed other than with a 503.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gan_deploy.artifacts.load import load_artifact  # noqa: E402
from gan_deploy.backends import make_runner  # noqa: E402
from gan_deploy.generate.pipeline import GenerateOptions, generate  # noqa: E402

MAX_REQUESTS, MAX_DURATION, MAX_CLIENTS = 200_000, 600.0, 2000  # hard bounds whatever the arguments say
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


class Conn:
    """One keep-alive HTTP/1.1 connection (asyncio streams), reconnecting after Connection: close."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        data = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), timeout)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def run_load(host: str, port: int, prefix: str, clients: int, count: int, requests: int, seconds: float,
             ref: dict[tuple[int, int], bytes]) -> dict:
    """K closed-loop keep-alive clients asking for `count` images per request; every image checked."""
    fmt = "png" if count == 1 else "base64"
    lat: list[float] = []
    statuses: dict[int, int] = {}
    wrong: list[str] = []
    left = [requests]
    images = [0]

    async def client(k: int, deadline: float) -> None:
        rng = random.Random(k)
        conn = Conn(host, port)
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            seed = rng.choice(SEEDS)
            start = rng.randrange(0, PER_SEED - count + 1)
            body = json.dumps({"seed": seed, "start": start, "count": count, "format": fmt}).encode()
            t0 = time.perf_counter()
            try:
                status, _, data = await conn.post(f"{prefix}/generate", body)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                statuses[-1] = statuses.get(-1, 0) + 1
                wrong.append(f"{body.decode()}: {type(e).__name__} {e}")
                conn.close()
                continue
            dt = time.perf_counter() - t0
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                if status != 503:
                    wrong.append(f"{body.decode()}: HTTP {status} {data[:200]!r}")
                continue
            got = [data] if fmt == "png" else [base64.b64decode(im["png"]) for im in json.loads(data)["images"]]
            if got != [ref[(seed, i)] for i in range(start, start + count)]:
                wrong.append(f"{body.decode()}: images differ from generate's files")
                continue
            lat.append(dt)
            images[0] += count
        conn.close()

    wall = run_clients(client, clients, seconds)
    ok = statuses.get(200, 0)
    return {"clients": clients, "images_per_request": count, "format": fmt, "seconds": wall, "requests_ok": ok,
            "requests_per_s": ok / wall, "images_per_s": images[0] / wall, "refused_503": statuses.get(503, 0),
            "failed": sum(n for s, n in statuses.items() if s not in (200, 503)), "statuses": statuses,
            "latency_ms": {q: 1000 * percentile(lat, float(q[1:])) for q in ("p50", "p90", "p99")},
            "n_wrong": len(wrong), "wrong": wrong[:20]}


def run_clients(client, clients: int, seconds: float) -> float:
    """Run `clients` closed-loop coroutines `client(k, deadline)` together until the deadline; the wall time."""
    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k, t0 + seconds) for k in range(clients)))
        return time.perf_counter() - t0

    return asyncio.run(main())


def run_overload(host: str, port: int, prefix: str, clients: int, seconds: float) -> dict:
    """K closed-loop clients with 1-image requests: 200s, 503s, and how long a 503 took."""
    to_503: list[float] = []
    to_200: list[float] = []
    other: dict[int, int] = {}

    async def client(k: int, deadline: float) -> None:
        conn = Conn(host, port)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                status, headers, data = await conn.post(f"{prefix}/generate", json.dumps({"seed": k % 4, "indices": [k % PER_SEED], "format": "png"}).encode(), 30)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                other[-1] = other.get(-1, 0) + 1
                conn.close()
                await asyncio.sleep(0.01)
                continue
            (to_200 if status == 200 else to_503 if status == 503 else []).append(time.perf_counter() - t0)
            if status not in (200, 503):
                other[status] = other.get(status, 0) + 1
        conn.close()

    wall = run_clients(client, clients, seconds)
    return {"clients": clients, "seconds": wall, "ok": len(to_200), "ok_per_s": len(to_200) / wall, "refused_503": len(to_503),
            "refused_per_s": len(to_503) / wall, "other": other,
            "time_to_503_ms": {q: 1000 * percentile(to_503, float(q[1:])) for q in ("p50", "p99")},
            "time_to_200_ms": {q: 1000 * percentile(to_200, float(q[1:])) for q in ("p50", "p99")}}


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process `pid` and every process below it (Ray's too), from
    /proc (Linux); 0 when unknown. What a request costs in CPU depends much less on how busy the machine is
    than its latency does."""
    if pid is None or not os.path.isdir("/proc"):
        return 0.0
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime + stime
    children: dict[int, list[int]] = {}
    for p, (parent, _) in stats.items():
        children.setdefault(parent, []).append(p)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += children.get(p, [])
    return total


def start_service(args: list[str], pythonpath: str, log: Path, timeout_s: float) -> tuple[subprocess.Popen, str, float]:
    """`python -m gan_deploy serve ARGS` with PYTHONPATH=pythonpath on a free loopback port; (process, url, start-up s)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gan_deploy", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - t0
        except (OSError, http.client.HTTPException):  # not listening yet, or a proxy still starting
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"serve did not become ready in {timeout_s:g} s:\n{log.read_text()[-3000:]}")


def stop_service(proc: subprocess.Popen) -> float:
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running service on loopback (default: start `gan-deploy serve` here)")
    ap.add_argument("--pythonpath", default=str(ROOT), help="the code the started service runs (default: this tree)")
    ap.add_argument("--serve-args", default="", help="more `gan-deploy serve` options for the started service")
    ap.add_argument("--checkpoint")
    ap.add_argument("--onnx")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--counts", default="1,16,256", help="images per request, one load phase each")
    ap.add_argument("--requests", type=int, default=20000, help=f"requests per phase (at most {MAX_REQUESTS})")
    ap.add_argument("--duration", type=float, default=20.0, help=f"seconds per phase (at most {MAX_DURATION:g})")
    ap.add_argument("--overload", type=int, default=0, metavar="K", help=f"then K closed-loop clients (at most {MAX_CLIENTS})")
    ap.add_argument("--overload-seconds", type=float, default=10.0)
    ap.add_argument("--label", default="", help="a name for this run in the output")
    ap.add_argument("--json", help="append the figures (one JSON line) to this file")
    a = ap.parse_args()
    requests, duration = min(a.requests, MAX_REQUESTS), min(a.duration, MAX_DURATION)
    counts = [int(c) for c in a.counts.split(",")]
    if not all(1 <= c <= PER_SEED for c in counts) or not 1 <= a.clients <= MAX_CLIENTS:
        ap.error(f"--counts must be in 1..{PER_SEED} and --clients in 1..{MAX_CLIENTS}")
    if not (a.onnx or a.checkpoint):
        ap.error("--onnx or --checkpoint: the model the service runs (the reference files are made from it)")

    results: dict = {"label": a.label, "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        art = load_artifact(a.checkpoint, a.onnx)
        ref = references(art, a.backend, Path(tmp))
        proc = None
        if a.url:
            u = urlsplit(a.url)
            if u.hostname not in ("127.0.0.1", "::1", "localhost"):
                ap.error("--url must be on loopback (127.0.0.1, ::1 or localhost): this is a local load test")
            url = a.url.rstrip("/")
        else:
            model = ["--onnx", a.onnx] if a.onnx else ["--checkpoint", a.checkpoint]
            proc, url, results["startup_s"] = start_service([*model, "--backend", a.backend, "--max-images-per-request", "256",
                                                             *a.serve_args.split()], a.pythonpath, Path(tmp) / "serve.log", 300)
            print(f"{a.label}: started in {results['startup_s']:.1f} s", file=sys.stderr)
        u = urlsplit(url)
        host, port, prefix = u.hostname or "127.0.0.1", u.port or 80, u.path.rstrip("/")
        try:
            results["load"] = []
            for count in counts:
                cpu0, own0 = tree_cpu_s(proc.pid if proc else None), time.process_time()
                r = run_load(host, port, prefix, a.clients, count, requests, duration, ref)
                cpu, own = tree_cpu_s(proc.pid if proc else None) - cpu0, time.process_time() - own0
                r["client_cpu_ms_per_request"] = 1000 * own / max(1, r["requests_ok"] + r["refused_503"])
                r["server_cpu_ms_per_request"] = 1000 * cpu / max(1, r["requests_ok"] + r["refused_503"])
                r["server_cpu_ms_per_image"] = 1000 * cpu / max(1, r["requests_ok"] * count)
                results["load"].append(r)
                print(f"{a.label:<8} {count:>4} img/req {a.clients} clients: {r['requests_per_s']:>7.0f} req/s {r['images_per_s']:>7.0f} img/s "
                      f"p50 {r['latency_ms']['p50']:>6.1f} ms p90 {r['latency_ms']['p90']:>6.1f} ms p99 {r['latency_ms']['p99']:>6.1f} ms "
                      f"503s {r['refused_503']} failed {r['failed']} wrong {r['n_wrong']} server CPU {r['server_cpu_ms_per_request']:.2f} ms/req "
                      f"{r['server_cpu_ms_per_image']:.3f} ms/img, client CPU {r['client_cpu_ms_per_request']:.2f} ms/req (load avg {os.getloadavg()[0]:.1f})", flush=True)
                for w in r["wrong"][:3]:
                    print(f"  wrong: {w}")
            if a.overload:
                o = results["overload"] = run_overload(host, port, prefix, min(a.overload, MAX_CLIENTS), min(a.overload_seconds, MAX_DURATION))
                print(f"{a.label:<8} overload {o['clients']} clients: {o['ok_per_s']:.0f} ok/s, {o['refused_per_s']:.0f} 503/s; time to 503 "
                      f"p50 {o['time_to_503_ms']['p50']:.1f} ms p99 {o['time_to_503_ms']['p99']:.1f} ms; other {o['other']}", flush=True)
        finally:
            if proc is not None:
                results["stop_s"] = stop_service(proc)
                log = (Path(tmp) / "serve.log").read_text(errors="replace")
                results["stop_noise_lines"] = sum(1 for ln in log.splitlines() if "ray.kill" in ln or "Traceback" in ln)
                print(f"{a.label}: stopped in {results['stop_s']:.1f} s (exit {proc.returncode}; {results['stop_noise_lines']} "
                      "'ray.kill'/Traceback lines)", file=sys.stderr)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(results) + "\n")
    bad = sum(r["n_wrong"] for r in results["load"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

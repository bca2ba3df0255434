"""`gan-deploy serve`: the request contract, a replica and the proxy hook without Ray (fast), then the Ray
Serve service itself, started once per module on a free loopback port with a tiny generator and checked
against `generate`'s files byte for byte, then `gan-deploy serve` as a process (drain on SIGTERM, refusal at
start-up). Every network use is loopback; every loop is bounded in count and time.

The issue's seven defects, and where each is checked:
1 slow clients            test_replica_reads_the_body_before_taking_a_slot, test_proxy_hook_admits_*, test_slow_clients_do_not_lock_anyone_out
2 health behind inference test_replica_overload_*, test_health_and_readiness_answer_at_once_under_overload
3 plain-text 500s         test_parse_bad_requests (strict JSON), test_replica_every_error_is_json_and_counted, test_bad_requests_*,
                          test_proxy_hook_turns_rays_plain_errors_into_json
4 slow overload answers   test_replica_overload_*, test_proxy_hook_admits_*, test_overload_answers_503_fast_then_recovers
5 no drain                test_replica_drain_*, test_sigterm_drains_in_flight_requests_and_exits_0
6 start-up hangs          test_start_refuses_unplaceable_replicas_at_once, test_start_failures_are_one_line
7 observability           test_metrics_*, test_proxy_hook_admits_*, test_ray_binds_loopback_only, test_disconnects_are_counted_not_logged
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gan_deploy.core.latents import MAX_SEED, latents_for
from gan_deploy.serve.config import ServeConfig
from gan_deploy.serve.metrics import Metrics, prometheus_text
from gan_deploy.serve.request import (
    ImageRequest,
    RequestError,
    chunks,
    etag,
    parse_request,
    parse_v2_infer,
    request_latents,
)

MAX_IMAGES = 32
ROOT = Path(__file__).resolve().parent.parent


# -- the contract, without Ray -------------------------------------------------------------------------

@pytest.mark.parametrize("body, seeds, indices", [
    ({"seed": 5, "start": 3, "count": 3}, [5, 5, 5], [3, 4, 5]),
    ({"count": 2}, [0, 0], [0, 1]),
    ({"seed": 9, "indices": [7, 0, 7]}, [9, 9, 9], [7, 0, 7]),
    ({"indices": [4]}, [0], [4]),
    ({"seeds": [3, 1, MAX_SEED]}, [3, 1, MAX_SEED], [0, 0, 0]),
    ({"start_seed": 10, "count": 3, "format": "array"}, [10, 11, 12], [0, 0, 0]),
])
def test_parse_valid_requests(body, seeds, indices):
    req = parse_request(json.dumps(body), MAX_IMAGES)
    assert (req.seeds, req.indices) == (seeds, indices)
    assert req.fmt == body.get("format", "base64")


BAD = [  # (body, status, field named in the error, reason)
    (b"not json", 400, None, "bad_json"),
    (b"[1, 2]", 400, None, "not_object"),
    (b"\xff\xfe", 400, None, "bad_json"),
    ({}, 400, None, "no_images"),
    ({"seed": 1, "count": 2, "colour": "red"}, 400, "colour", "unknown_field"),
    ({"seed": 1, "start": 2, "indices": [1]}, 400, "start", "conflicting_fields"),
    ({"seeds": [1], "seed": 2}, 400, "seed", "conflicting_fields"),
    ({"start_seed": 1}, 400, "count", "missing_field"),
    ({"seed": "1", "count": 2}, 422, "seed", "wrong_type"),
    ({"seed": True, "count": 1}, 422, "seed", "wrong_type"),
    ({"seed": 1.0, "count": 1}, 422, "seed", "wrong_type"),
    ({"seed": -1, "count": 1}, 422, "seed", "out_of_range"),
    ({"seed": MAX_SEED + 1, "count": 1}, 422, "seed", "out_of_range"),
    ({"seed": 10**25, "count": 1}, 422, "seed", "out_of_range"),
    ({"seeds": [1, -2]}, 422, "seeds[1]", "out_of_range"),
    ({"seeds": "1,2"}, 422, "seeds", "wrong_type"),
    ({"seeds": []}, 422, "seeds", "out_of_range"),
    ({"indices": [0, -5]}, 422, "indices[1]", "out_of_range"),
    ({"start": -1, "count": 1}, 422, "start", "out_of_range"),
    ({"count": 0}, 422, "count", "out_of_range"),
    ({"start": MAX_SEED, "count": 2}, 422, "count", "out_of_range"),
    ({"count": 1, "format": "gif"}, 422, "format", "out_of_range"),
    ({"count": 2, "format": "png"}, 422, "format", "out_of_range"),
    ({"count": MAX_IMAGES + 1}, 413, "count", "too_many_images"),
    ({"indices": list(range(MAX_IMAGES + 1))}, 413, "indices", "too_many_images"),
    ({"seeds": list(range(10 * MAX_IMAGES))}, 413, "seeds", "too_many_images"),
    # defect 3: these were plain-text 500s (the 422 body for NaN could not even be encoded)
    (b'{"seed": NaN, "count": 1}', 400, None, "bad_number"),
    (b'{"seed": Infinity, "count": 1}', 400, None, "bad_number"),
    (b'{"seeds": [-Infinity]}', 400, None, "bad_number"),
    (b'{"seed": 1e400, "count": 1}', 400, None, "bad_number"),
    (b'{"seed": ' + b"7" * 5000 + b', "count": 1}', 400, None, "bad_number"),
    (b'{"seeds": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400, None, "too_deep"),
    (b'{"seeds": [[[[[[[[[[1]]]]]]]]]]}', 400, None, "too_deep"),
]


@pytest.mark.parametrize("body, status, field, reason", BAD)
def test_parse_bad_requests(body, status, field, reason):
    raw = body if isinstance(body, bytes) else json.dumps(body)
    with pytest.raises(RequestError) as info:
        parse_request(raw, MAX_IMAGES)
    e = info.value
    assert (e.status, e.field, e.reason) == (status, field, reason)
    err = json.loads(e.body_bytes())["error"]  # strict JSON (no NaN), whatever the value was
    assert err["status"] == status and err["expected"] and err["message"] and err["reason"] == reason
    json.dumps(e.body(), allow_nan=False)


def test_strings_that_look_nested_are_not_nesting():
    req = parse_request(b'{"seeds": [1], "format": "base64"}', MAX_IMAGES)
    assert req.seeds == [1]
    with pytest.raises(RequestError) as info:  # brackets inside a string do not count as nesting
        parse_request(json.dumps({"format": "[[[[[[[[[[[[[[["}), MAX_IMAGES)
    assert info.value.reason == "out_of_range"


def test_latents_are_generates_latents():
    req = ImageRequest([4, 9, 4], [2, 0, 7])
    z = request_latents(req, 8)
    assert np.array_equal(z[0], latents_for(4, [2], 8)[0]) and np.array_equal(z[1], latents_for(9, [0], 8)[0])
    assert np.array_equal(z[2], latents_for(4, [7], 8)[0])
    assert chunks(5, 2) == [(0, 2), (2, 4), (4, 5)] and chunks(2, 8) == [(0, 2)]


def test_etag_is_a_function_of_model_pairs_and_format():
    a = etag("ab" * 32, ImageRequest([1, 2], [3, 4], "png"))
    assert a == etag("ab" * 32, ImageRequest([1, 2], [3, 4], "png")) and a.startswith('"') and a.endswith('"')
    others = {etag("cd" * 32, ImageRequest([1, 2], [3, 4], "png")), etag("ab" * 32, ImageRequest([1, 2], [3, 4], "array")),
              etag("ab" * 32, ImageRequest([2, 1], [3, 4], "png")), etag("ab" * 32, ImageRequest([1, 2], [4, 3], "png"))}
    assert a not in others and len(others) == 4


def test_parse_v2_infer():
    body = {"id": "r1", "inputs": [{"name": "seed", "shape": [2], "datatype": "INT64", "data": [7, 8]},
                                   {"name": "index", "shape": [2, 1], "datatype": "INT64", "data": [[3], [0]]}]}
    req, rid = parse_v2_infer(json.dumps(body), MAX_IMAGES)
    assert (req.seeds, req.indices, req.fmt, rid) == ([7, 8], [3, 0], "v2", "r1")
    req, _ = parse_v2_infer(json.dumps({"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [5]}]}), MAX_IMAGES)
    assert (req.seeds, req.indices) == ([5], [0])
    for bad, status in ((b'{"inputs": [{"name": "seed", "shape": [1], "datatype": "FP32", "data": [1.5]}]}', 422),
                        (b'{"inputs": [{"name": "seed", "shape": [3], "datatype": "INT64", "data": [1]}]}', 422),
                        (b'{"inputs": [{"name": "z", "shape": [1], "datatype": "INT64", "data": [1]}]}', 400),
                        (b'{"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [NaN]}]}', 400),
                        (b'{"outputs": []}', 400)):
        with pytest.raises(RequestError) as info:
            parse_v2_infer(bad, MAX_IMAGES)
        assert info.value.status == status, bad


def _parse_prometheus(text: str) -> dict[str, list]:
    parser = pytest.importorskip("prometheus_client.parser")
    return {f.name: f.samples for f in parser.text_string_to_metric_families(text)}


def test_metrics_percentiles_and_prometheus():
    m = Metrics()
    for k in range(1, 101):
        m.record_request(200, 2, k / 1000, queue_s=k / 10_000)
        m.record_http("/generate", "POST", 200)
    m.record_request(422)
    m.record_http("/generate", "POST", 422, "out_of_range")
    m.record_http("/generate", "POST", 500, "internal")
    m.record_http("/weird/path", "DELETE", 404, "not_found")
    m.record_disconnect("/generate")
    for size in (1, 3, 64, 5000):
        m.record_batch(size, 0.01)
    s = m.snapshot(in_flight=0, capacity=64, ready=1, draining=0)
    assert s["requests"] == {"200": 100, "422": 1} and s["images"] == 200 and s["disconnects"] == 1
    assert (s["latency_ms"]["p50"], s["latency_ms"]["p99"]) == pytest.approx((50, 99))
    assert s["mean_batch_size"] == pytest.approx((1 + 3 + 64 + 5000) / 4) and s["max_batch_size_formed"] == 5000
    assert s["batch_size_histogram"] == {"le_1": 1, "le_4": 1, "le_64": 1, "larger": 1}
    text = prometheus_text(s)
    assert 'gan_deploy_http_requests_total{route="/generate",method="POST",code="422"} 1' in text
    assert 'gan_deploy_http_errors_total{code="500",reason="internal"} 1' in text
    assert 'gan_deploy_http_requests_total{route="other",method="other",code="404"} 1' in text  # bounded label values
    assert 'gan_deploy_batch_size_images_bucket{le="4"} 2' in text and 'gan_deploy_batch_size_images_bucket{le="+Inf"} 4' in text
    assert 'gan_deploy_request_latency_seconds{quantile="0.5"} 0.05' in text and 'quantile="0.50"' not in text
    fams = _parse_prometheus(text)  # the whole exposition parses
    assert fams["gan_deploy_batch_size_images"][-1].value == 4  # _count
    assert {"gan_deploy_queue_duration_seconds", "gan_deploy_compute_duration_seconds", "gan_deploy_request_duration_seconds",
            "gan_deploy_http_errors", "gan_deploy_client_disconnects", "gan_deploy_in_flight_requests"} <= set(fams)


# -- a replica and the proxy hook, without Ray ------------------------------------------------------------

def _replica(monkeypatch, checkpoint, delay: float | None = None, backend: str = "eager", **over):
    """A replica of the deployment, outside Ray (its methods run on the test's event loop): the tiny generator,
    and optionally a `delay` in seconds before every answer's images (a slow backend)."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from types import SimpleNamespace

    from ray import serve as ray_serve

    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.serve.deployment import GeneratorDeployment
    context = SimpleNamespace(replica_id=SimpleNamespace(unique_id="r0"), _deployment_config=SimpleNamespace(max_ongoing_requests=1024))
    monkeypatch.setattr(ray_serve, "get_replica_context", lambda: context)  # what @serve.batch and the replica ask Ray
    art = load_artifact(checkpoint)
    cfg = ServeConfig(art, backend=backend, device="cpu", max_batch_size=8, batch_wait_ms=5,
                      max_images_per_request=MAX_IMAGES, **{"max_queued": 2, "read_timeout_s": 0.5, "request_timeout_s": 5.0, **over})
    cls = GeneratorDeployment.func_or_class
    # @serve.batch keeps one lazily made queue per decorated method (a replica has one instance); each test
    # runs its own event loop, so each instance starts with a new queue, and none is left behind (the class
    # must stay picklable for the tests that deploy it)
    monkeypatch.setattr(cls._infer_pieces.set_max_batch_size.__self__, "_queue", None)
    dep = cls(cfg.to_dict())
    if delay is not None:
        real = dep._images

        async def slow(req):
            await asyncio.sleep(delay)
            return await real(req)
        dep._images = slow
    return dep


def _request(method: str, path: str, chunks_: list[tuple[float, bytes]] | None = None, headers=None, declared: int | None = None):
    """A starlette Request whose body arrives as (delay, bytes) chunks; then the client waits (no disconnect)."""
    from starlette.requests import Request
    chunks_ = list(chunks_ or [])
    total = declared if declared is not None else sum(len(c) for _, c in chunks_)
    hdrs = [(b"content-type", b"application/json")] + ([(b"content-length", str(total).encode())] if chunks_ or declared else [])
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": hdrs, "query_string": b"",
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1)}
    if "?" in path:
        scope["path"], qs = path.split("?", 1)
        scope["query_string"] = qs.encode()

    sent = 0

    async def receive():
        nonlocal sent
        if chunks_:
            delay, data = chunks_.pop(0)
            await asyncio.sleep(delay)
            sent += len(data)
            return {"type": "http.request", "body": data, "more_body": bool(chunks_) or sent < total}
        await asyncio.sleep(3600)  # a client that stopped sending (or is waiting for its answer)
        return {"type": "http.disconnect"}
    return Request(scope, receive)


def _run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_replica_reads_the_body_before_taking_a_slot(monkeypatch, tiny_checkpoint):
    """Defect 1: a client that announces 100 bytes and sends 12 gets 408 after --read-timeout and, while it
    dawdles, holds no queue slot: others are admitted (max_queued 2, here 3 slow clients)."""
    async def main():
        rep = _replica(monkeypatch, tiny_checkpoint)
        slow = [asyncio.ensure_future(rep(_request("POST", "/generate", [(0, b'{"count": 1,')], declared=100))) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert rep.in_flight == 0
        t0 = time.perf_counter()
        fast = await rep(_request("POST", "/generate", [(0, b'{"count": 1, "format": "png"}')]))
        assert fast.status_code == 200 and fast.body.startswith(b"\x89PNG") and time.perf_counter() - t0 < 0.4
        answers = await asyncio.gather(*slow)
        for r in answers:
            err = json.loads(r.body)["error"]
            assert r.status_code == 408 and err["reason"] == "body_timeout" and r.headers["connection"] == "close"
        big = await rep(_request("POST", "/generate", [(0, b"{}")], declared=10**6))  # refused before reading it
        assert big.status_code == 413 and json.loads(big.body)["error"]["reason"] == "body_too_large"
        huge = await rep(_request("GET", "/healthz", headers={"x-big": "a" * 9000}))
        assert huge.status_code == 431 and json.loads(huge.body)["error"]["reason"] == "headers_too_large"
        m = rep.snapshot()
        assert m["requests"]["408"] == 3 and m["requests"]["200"] == 1 and m["requests"]["413"] == 1
    _run(main())


def test_replica_runs_openvino(monkeypatch, tiny_checkpoint, tiny_onnx):
    """`serve --backend openvino`: the replica's runtime is OpenVINO, with eager's images (within a grey level)."""
    import io

    import numpy as np
    from PIL import Image

    from gan_deploy.backends import unavailable_reason
    if unavailable_reason("openvino"):
        pytest.skip("openvino is not installed")

    async def main():
        images = {}
        for backend, model in (("openvino", tiny_onnx), ("eager", tiny_checkpoint)):
            rep = _replica(monkeypatch, model, backend=backend)
            assert rep.runner.name == backend
            r = await rep(_request("POST", "/generate", [(0, b'{"seed": 3, "start": 5, "count": 1, "format": "png"}')]))
            assert r.status_code == 200, r.body
            images[backend] = np.asarray(Image.open(io.BytesIO(r.body)), dtype=int)
        assert np.abs(images["openvino"] - images["eager"]).max() <= 1
    _run(main())


def test_replica_overload_is_a_json_503_at_once(monkeypatch, tiny_checkpoint):
    """Defects 2 and 4: past max_queued in flight, a 503 with Retry-After in milliseconds; /healthz and
    /readyz answer at once meanwhile (readiness: 503 'overloaded' while full)."""
    async def main():
        rep = _replica(monkeypatch, tiny_checkpoint, delay=0.5)
        held = [asyncio.ensure_future(rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))) for _ in range(2)]
        await asyncio.sleep(0.05)
        times, answers = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            answers.append(await rep(_request("POST", "/generate", [(0, b'{"count": 1}')])))
            times.append(time.perf_counter() - t0)
        assert all(r.status_code == 503 and r.headers["retry-after"] == "1" for r in answers)
        assert json.loads(answers[0].body)["error"]["reason"] == "overloaded" and max(times) < 0.1
        t0 = time.perf_counter()
        live, ready = await rep(_request("GET", "/healthz")), await rep(_request("GET", "/readyz"))
        assert time.perf_counter() - t0 < 0.1 and live.status_code == 200
        assert ready.status_code == 503 and json.loads(ready.body)["error"]["reason"] == "overloaded"
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await rep(_request("GET", "/readyz"))).status_code == 200
    _run(main())


def test_replica_every_error_is_json_and_counted(monkeypatch, tiny_checkpoint):
    """Defect 3: every answer other than 200 is JSON with a reason and counted, 500s included."""
    async def main():
        rep = _replica(monkeypatch, tiny_checkpoint)

        def broken_backend(z):
            raise RuntimeError("CUDA error: out of memory")
        rep._pixels = broken_backend
        r = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert r.status_code == 500 and json.loads(r.body)["error"]["reason"] == "backend_failed"

        async def bug(req):
            raise KeyError("oops")
        rep._images = bug
        r = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert json.loads(r.body)["error"]["reason"] == "internal"
        snap = rep.snapshot()
        assert {"code": "500", "reason": "backend_failed", "count": 1} in snap["errors"]
        assert {"code": "500", "reason": "internal", "count": 1} in snap["errors"] and snap["requests"]["500"] == 2
        rep = _replica(monkeypatch, tiny_checkpoint, delay=10, request_timeout_s=0.3)
        r = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert r.status_code == 504 and json.loads(r.body)["error"]["reason"] == "request_timeout"
        for body in (b'{"seed": NaN, "count": 1}', b'{"count": 1e400}', b"[" * 3000 + b"]" * 3000):
            r = await rep(_request("POST", "/generate", [(0, body)]))
            assert r.status_code == 400 and json.loads(r.body)["error"]["reason"] in ("bad_number", "too_deep")
        for method, path, status in (("GET", "/generate", 405), ("GET", "/nope", 404), ("POST", "/metrics", 405),
                                     ("GET", "/metrics?format=xml", 422), ("GET", "/v2/models/other", 404)):
            r = await rep(_request(method, path))
            assert r.status_code == status and json.loads(r.body)["error"]["status"] == status
        text = (await rep(_request("GET", "/metrics"))).body.decode()
        fams = _parse_prometheus(text)
        codes = {s.labels["code"] for s in fams["gan_deploy_http_errors"]}
        assert {"400", "404", "405", "422", "504"} <= codes
        assert all(s.labels["replica"] == "r0" for s in fams["gan_deploy_http_errors"])  # series never mix replicas
    _run(main())


def test_replica_drain_refuses_new_and_finishes_in_flight(monkeypatch, tiny_checkpoint):
    """Defect 5 without Ray: drain() refuses new requests (503 draining, Connection: close), readiness fails,
    the in-flight request still gets its images, and drain returns once it did."""
    async def main():
        rep = _replica(monkeypatch, tiny_checkpoint, delay=0.4)
        inflight = asyncio.ensure_future(rep(_request("POST", "/generate", [(0, b'{"count": 1}')])))
        await asyncio.sleep(0.05)
        drained = asyncio.ensure_future(rep.drain(5.0))
        await asyncio.sleep(0.05)
        refused = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert refused.status_code == 503 and json.loads(refused.body)["error"]["reason"] == "draining"
        assert refused.headers["connection"] == "close"
        assert (await rep(_request("GET", "/readyz"))).status_code == 503
        assert (await rep(_request("GET", "/healthz"))).status_code == 200  # alive, just not taking work
        assert (await inflight).status_code == 200
        report = await drained
        assert report["in_flight_left"] == 0 and report["waited_s"] < 1.0 and report["replica"] == "r0"
    _run(main())


def _asgi_app_answering(status: int, body: bytes, ctype: bytes, headers=(), seen=None, delay: float = 0.0, scopes=None):
    async def app(scope, receive, send):
        if scopes is not None:
            scopes.append(scope)
        if seen is not None and scope["method"] == "POST":
            seen.append((await receive()).get("body"))
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype), *headers]})
        await send({"type": "http.response.body", "body": body})
    return app


async def _call_asgi(app, method: str, path: str, chunks_, declared=None, query: bytes = b""):
    sent = []

    async def receive():
        if chunks_:
            delay, data = chunks_.pop(0)
            await asyncio.sleep(delay)
            return {"type": "http.request", "body": data, "more_body": bool(chunks_)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)
    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    await app({"type": "http", "method": method, "path": path, "headers": headers, "query_string": query}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_proxy_hook_turns_rays_plain_errors_into_json():
    from gan_deploy.serve.proxy_hooks import GanDeployProxy
    mw = GanDeployProxy(_asgi_app_answering(503, b"Request dropped due to backpressure (num_queued_requests=9).", b"text/plain"))
    status, headers, body = _run(_call_asgi(mw, "POST", "/generate", [(0, b"{}")]))
    err = json.loads(body)["error"]
    assert status == 503 and headers[b"content-type"] == b"application/json" and headers[b"retry-after"] == b"1"
    assert err["reason"] == "overloaded" and "Ray Serve" in err["message"]
    mw = GanDeployProxy(_asgi_app_answering(200, b"\x89PNG", b"image/png"))
    assert _run(_call_asgi(mw, "POST", "/generate", [(0, b"{}")]))[2] == b"\x89PNG"  # everything else passes untouched


def test_proxy_hook_admits_before_ray_routes():
    """Defects 1 and 4 in Ray's proxy: once the service's limits header was seen (and stripped), a full queue
    is answered there at once, and bodies are read there first (slow ones get 408 and never count); what the
    proxy answered itself shows in /metrics passing through (defect 7)."""
    from gan_deploy.serve.proxy_hooks import LIMITS_HEADER, GanDeployProxy, limits_header
    seen: list = []
    value = limits_header(["/p/generate", "/p/v2/models/m/infer"], "/p/metrics", 2, 0.3, 100).encode()
    prom = b"# HELP gan_deploy_x X.\n# TYPE gan_deploy_x counter\ngan_deploy_x 1\n"

    async def app(scope, receive, send):
        if scope["path"] == "/p/metrics":
            ctype, body = (b"application/json", b'{"requests": {"200": 2}, "errors": []}') if scope.get("query_string") else (b"text/plain; version=0.0.4", prom)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype), (LIMITS_HEADER, value)]})
            await send({"type": "http.response.body", "body": body})
            return
        await _asgi_app_answering(200, b"ok", b"image/png", [(LIMITS_HEADER, value)], seen, delay=0.3)(scope, receive, send)
    mw = GanDeployProxy(app)

    async def main():
        status, headers, _ = await _call_asgi(mw, "GET", "/p/readyz", [])
        assert status == 200 and LIMITS_HEADER not in headers  # learnt, and not passed on to the client
        slow = asyncio.ensure_future(_call_asgi(mw, "POST", "/p/generate", [(0, b'{"count"'), (5, b": 1}")], declared=12))
        held = [asyncio.ensure_future(_call_asgi(mw, "POST", "/p/generate", [(0, b'{"count": 1}')])) for _ in range(2)]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        status, headers, body = await _call_asgi(mw, "POST", "/p/v2/models/m/infer", [(0, b"{}")])  # same app, same limit
        assert status == 503 and headers[b"retry-after"] == b"1" and time.perf_counter() - t0 < 0.05
        assert json.loads(body)["error"]["reason"] == "overloaded" and b"connection" not in headers  # keep-alive
        assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]
        status, _, body = await slow
        assert status == 408 and json.loads(body)["error"]["reason"] == "body_timeout"
        status, _, body = await _call_asgi(mw, "POST", "/p/generate", [(0, b"x" * 50)], declared=500)
        assert status == 413
        assert seen == [b'{"count": 1}', b'{"count": 1}']  # the app got whole bodies, and only the admitted ones
        status, headers, text = await _call_asgi(mw, "GET", "/p/metrics", [])
        fams = _parse_prometheus(text.decode())
        answers = {(s.labels["code"], s.labels["reason"]): s.value for s in fams["gan_deploy_proxy_answers"]}
        assert answers == {("503", "overloaded"): 1, ("408", "body_timeout"): 1, ("413", "body_too_large"): 1}
        assert int(headers[b"content-length"]) == len(text) and "gan_deploy_x" in fams
        status, _, raw = await _call_asgi(mw, "GET", "/p/metrics", [], query=b"format=json")
        data = json.loads(raw)
        assert data["requests"] == {"200": 2, "503": 1, "408": 1, "413": 1} and data["errors_total"] == 3
    _run(main())


def test_write_config_is_a_valid_ray_serve_config(cli, tiny_checkpoint, tmp_path):
    """`--write-config` writes what `serve deploy` / KubeRay take, from the same options, without starting Ray."""
    yaml = pytest.importorskip("yaml")
    out = tmp_path / "serve.yaml"
    r = cli("serve", "--checkpoint", tiny_checkpoint, "--host", "0.0.0.0", "--port", 8123, "--replicas", 3, "--max-queued", 16,
            "--read-timeout", 4, "--drain-timeout", 12, "--write-config", out)
    assert r.exit_code == 0, r.output
    conf = yaml.safe_load(out.read_text())
    assert conf["http_options"]["port"] == 8123 and conf["http_options"]["host"] == "0.0.0.0"
    app = conf["applications"][0]
    assert app["import_path"] == "gan_deploy.serve.deployment:app_builder"
    c = app["args"]["config"]
    assert c["num_replicas"] == 3 and c["max_queued"] == 16 and c["read_timeout_s"] == 4 and os.path.isabs(c["artifact_path"])
    deps = {d["name"]: d for d in app["deployments"]}
    assert deps["GanGenerator"]["num_replicas"] == 3 and deps["GanGenerator"]["graceful_shutdown_timeout_s"] == 12
    pytest.importorskip("ray.serve")
    from ray.serve.schema import ServeDeploySchema

    from gan_deploy.serve.deployment import app_builder
    ServeDeploySchema.model_validate(conf)
    built = app_builder(app["args"])  # what `serve deploy` imports and calls
    assert type(built).__name__ == "Application"


def test_start_failures_are_one_line():
    """What Ray says about a deployment that failed (a traceback) becomes the last line that names the error."""
    pytest.importorskip("ray.serve")
    from types import SimpleNamespace

    from gan_deploy.serve.driver import _status_message
    trace = ("The deployment failed to start 3 times in a row.\nTraceback (most recent call last):\n  File \"x.py\", line 3, in f\n"
             "    raise StaleArtifact(...)\ngan_deploy.core.errors.StaleArtifact: the model file on this replica differs\n")
    app = SimpleNamespace(status="DEPLOY_FAILED", message="", deployments={"GanGenerator": SimpleNamespace(message=trace)})
    msg = _status_message(app)
    assert msg == "gan_deploy.core.errors.StaleArtifact: the model file on this replica differs" and "\n" not in msg
    assert _status_message(None) == "no status yet"


def test_serve_config_travels_as_plain_data_and_reloads_its_artifact(tiny_checkpoint, tiny_onnx, tmp_path):
    """What a replica gets: the artifact by kind, absolute path and sha256 (JSON-able), loaded again there; a
    different file at that path is refused (a stale copy on another node)."""
    import shutil

    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.core.errors import StaleArtifact

    onnx = load_artifact(onnx=tiny_onnx)
    cfg = ServeConfig(onnx, backend="onnxruntime", max_queued=3, host="0.0.0.0", port=9000, app_name="a")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert (d["artifact_kind"], d["artifact_path"], d["artifact_sha256"]) == ("onnx", str(Path(tiny_onnx).resolve()), onnx.sha256)
    assert d["value_range"] == list(onnx.spec.value_range) and d["num_gpus"] == 0.0 and d["max_queued"] == 3
    assert not {"host", "port", "app_name", "route_prefix", "artifact"} & set(d)  # the driver's, not a replica's
    back = ServeConfig.from_dict(d)
    assert back.artifact.sha256 == onnx.sha256 and back.max_queued == 3 and back.backend == "onnxruntime"
    assert back.to_dict() == d

    copy = tmp_path / "g.safetensors"
    shutil.copy(tiny_checkpoint, copy)
    shutil.copy(Path(tiny_checkpoint).with_suffix(".json"), copy.with_suffix(".json"))
    d = ServeConfig(load_artifact(copy)).to_dict()
    assert d["value_range"] is None and d["artifact_kind"] == "checkpoint"
    side = json.loads(copy.with_suffix(".json").read_text())  # another checkpoint at the same path
    copy.with_suffix(".json").write_text(json.dumps({**side, "weights_sha256": "0" * 64}))
    with pytest.raises(StaleArtifact, match="differs from the one"):
        ServeConfig.from_dict(d)


def test_serve_config_gpus_follow_the_device_unless_given(tiny_checkpoint):
    from gan_deploy.artifacts.load import load_artifact

    art = load_artifact(tiny_checkpoint)
    assert ServeConfig(art).gpus == 0.0 and ServeConfig(art, device="cuda:1").gpus == 1.0
    assert ServeConfig(art, device="cuda", num_gpus=0.5).gpus == 0.5 and ServeConfig(art, num_gpus=0).to_dict()["num_gpus"] == 0.0


@pytest.mark.parametrize("over, words", [
    (dict(route_prefix="gan"), "bad --route-prefix"),
    (dict(route_prefix="/gan/"), "bad --route-prefix"),
    (dict(max_batch_size=100, max_images_per_request=1, max_queued=2), "--max-batch-size can never fill"),
    (dict(max_batch_size=0), "bad --max-batch-size"),
    (dict(max_queued=2.5), "bad --max-queued"),
    (dict(num_replicas=True), "bad --replicas"),
    (dict(num_cpus=-1), "bad --num-cpus"),
    (dict(num_gpus=float("nan")), "bad --num-gpus"),
    (dict(batch_wait_ms=-1), "bad --batch-wait-ms"),
    (dict(read_timeout_s=0), "bad --read-timeout"),
    (dict(request_timeout_s=0.01), "bad --request-timeout"),
    (dict(max_body_bytes=10), "bad --max-body-bytes"),
    (dict(max_header_bytes=17000), "bad --max-header-bytes"),
    (dict(drain_timeout_s=-0.5), "bad --drain-timeout"),
    (dict(port=70000), "bad --port"),
    (dict(keep_alive_s=0), "bad --keep-alive-timeout"),
    (dict(start_timeout_s=0.5), "bad --start-timeout"),
    (dict(backend="tpu"), "unknown backend"),
])
def test_serve_config_checks_itself(tiny_checkpoint, over, words):
    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.core.errors import GanDeployError

    art = load_artifact(tiny_checkpoint)
    with pytest.raises(GanDeployError) as e:
        ServeConfig(art, **over)
    assert str(e.value).startswith(words) and "\n" not in str(e.value)
    with pytest.raises(GanDeployError, match="needs an Artifact"):
        ServeConfig(str(tiny_checkpoint))


def test_run_service_settles_locally_before_starting_ray(tiny_onnx):
    """A backend that cannot take the artifact is a one-line error before any Ray starts; "auto" is resolved."""
    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.core.errors import GanDeployError
    from gan_deploy.serve.driver import run_service, settle_locally

    art = load_artifact(onnx=tiny_onnx)
    lines: list[str] = []
    with pytest.raises(GanDeployError, match="cannot run an ONNX file"):
        run_service(ServeConfig(art, backend="eager", port=_free_port()), echo=lines.append)
    assert lines == []  # nothing was started, so nothing said
    settled = settle_locally(ServeConfig(art, device="cpu", port=_free_port()))
    assert (settled.backend, settled.device, settled.gpus) == ("onnxruntime", "cpu", 0.0)


def test_serve_cli_refuses_bad_options(cli, tiny_checkpoint):
    r = cli("serve", "--checkpoint", tiny_checkpoint, "--backend", "tensorrt")
    assert r.exit_code == 2 and "tensorrt" in r.output and "Traceback" not in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = cli("serve", "--checkpoint", tiny_checkpoint, "--backend", "eager", "--port", s.getsockname()[1])
    assert r.exit_code == 2 and "cannot listen" in r.output


# -- `gan-deploy serve` as a process ----------------------------------------------------------------

def _serve_process(args: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1", "GAN_DEPLOY_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)  # a new local Ray, unless extra_env says otherwise
    env.update(extra_env or {})
    log = open(tmp_path / "serve.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "gan_deploy", "serve", *args], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http(f"{url}/readyz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"serve did not become ready in {seconds} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow  # a `gan-deploy serve` process (it refuses before starting Ray; runs before this module's Ray starts)
def test_start_refuses_unplaceable_replicas_at_once(tiny_checkpoint, tmp_path):
    """Defect 6: --num-gpus 1 where Ray has no GPU: a one-line error and exit 2 within 30 s, not a hang."""
    pytest.importorskip("ray.serve")
    import importlib.util
    if importlib.util.find_spec("torch") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU: --num-gpus 1 can be placed")
    t0 = time.monotonic()
    proc = _serve_process(["--checkpoint", str(tiny_checkpoint), "--backend", "eager", "--port", str(_free_port()),
                           "--num-gpus", "1"], tmp_path)
    try:
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    elapsed = time.monotonic() - t0
    out = (tmp_path / "serve.log").read_text()
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert rc == 2 and len(errors) == 1 and "GPU" in errors[0] and "Traceback" not in out, out[-2000:]
    assert elapsed < 30, elapsed


# -- the service ---------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body=None, method: str | None = None, timeout: float = 60, headers=None):
    """(status, headers, body bytes); a 4xx/5xx is an answer here, not an exception."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


SEED, N_REF, BATCH_REF = 5, 40, 7


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tmp_path_factory):
    """generate's files for --seed SEED -n N_REF, and for --seed s -n 1 (s = 11, 12, 13): name -> bytes."""
    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.backends import make_runner
    from gan_deploy.generate.pipeline import GenerateOptions, generate

    art = load_artifact(tiny_checkpoint)
    out = tmp_path_factory.mktemp("ref")
    generate(make_runner("eager", art, "cpu"), GenerateOptions(n=N_REF, out=out / "main", batch_size=BATCH_REF, seed=SEED, progress=False))
    files = {("main", p.name): p.read_bytes() for p in (out / "main").glob("*.png")}
    for s in (11, 12, 13):
        generate(make_runner("eager", art, "cpu"), GenerateOptions(n=1, out=out / f"s{s}", seed=s, progress=False))
        files[("seed", s)] = (out / f"s{s}" / "000000.png").read_bytes()
    return files


def _config(art, **over) -> ServeConfig:
    base = dict(backend="eager", device="cpu", max_images_per_request=MAX_IMAGES, num_cpus=0.5)
    return ServeConfig(art, **{**base, **over})


@pytest.fixture(scope="module")
def service(tiny_checkpoint):
    """One local Ray (loopback only), two apps: "/" (batching: 80 ms wait, 2 s read timeout) and "/tight"
    (2 queued requests, 2.5 s batch wait)."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[serve]'")
    from ray import serve

    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.serve import driver as service
    from gan_deploy.serve.config_file import http_options

    art = load_artifact(tiny_checkpoint)
    port = _free_port()
    main = _config(art, max_batch_size=16, batch_wait_ms=80, max_queued=32, read_timeout_s=2.0, app_name="main", port=port)
    tight = _config(art, max_batch_size=64, batch_wait_ms=2500, max_queued=2, app_name="tight", route_prefix="/tight")
    service.init_local_ray("127.0.0.1", num_cpus=2, log_to_driver=False)
    try:
        t0 = time.monotonic()
        serve.start(http_options=http_options(main), logging_config={"log_level": "WARNING"})
        service.deploy_many([main, tight], {"log_level": "WARNING"})
        url = f"http://127.0.0.1:{port}"
        service.wait_for_http(url)
        service.wait_for_http(f"{url}/tight")
        print(f"\nserve started in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield url
    finally:
        service.stop()


def _b64_images(body: bytes) -> list[bytes]:
    return [base64.b64decode(im["png"]) for im in json.loads(body)["images"]]


@pytest.mark.slow  # a Ray Serve application
def test_images_are_generates_files(service, reference):
    status, headers, body = http(f"{service}/generate", {"seed": SEED, "start": 3, "count": 10})
    assert status == 200
    got = json.loads(body)
    assert [(im["seed"], im["index"]) for im in got["images"]] == [(SEED, i) for i in range(3, 13)]
    assert _b64_images(body) == [reference[("main", f"{i:06d}.png")] for i in range(3, 13)]
    assert headers["etag"].startswith('"') and "immutable" in headers["cache-control"]
    again = http(f"{service}/generate", {"seed": SEED, "start": 3, "count": 10})
    assert again[1]["etag"] == headers["etag"] and again[2] == body  # a pure function of (model, pairs, format)

    status, _, body = http(f"{service}/generate", {"seed": SEED, "indices": [39, 0, 7, 39]})
    assert _b64_images(body) == [reference[("main", f"{i:06d}.png")] for i in (39, 0, 7, 39)]

    status, headers, body = http(f"{service}/generate", {"seed": SEED, "indices": [21], "format": "png"})
    assert status == 200 and headers["content-type"] == "image/png" and body == reference[("main", "000021.png")]
    assert "x-gan-deploy-limits" not in headers  # the proxy hook's header stays inside

    from PIL import Image
    status, headers, body = http(f"{service}/generate", {"seed": SEED, "start": 30, "count": 5, "format": "array"})
    arr = np.load(io.BytesIO(body), allow_pickle=False)
    assert status == 200 and arr.dtype == np.uint8 and arr.shape == (5, 16, 16, 1)
    want = np.stack([np.asarray(Image.open(io.BytesIO(reference[("main", f"{i:06d}.png")])))[:, :, None] for i in range(30, 35)])
    assert np.array_equal(arr, want)

    v2 = {"id": "q7", "inputs": [{"name": "seed", "shape": [2], "datatype": "INT64", "data": [SEED, SEED]},
                                 {"name": "index", "shape": [2], "datatype": "INT64", "data": [30, 34]}]}
    status, _, body = http(f"{service}/v2/models/gan_generator/infer", v2)
    out = json.loads(body)
    assert status == 200 and out["id"] == "q7" and out["outputs"][0]["shape"] == [2, 16, 16, 1]
    assert np.array_equal(np.array(out["outputs"][0]["data"], dtype=np.uint8).reshape(2, 16, 16, 1), want[[0, 4]])
    assert http(f"{service}/v2/health/ready")[0] == 200 and http(f"{service}/v2/models/gan_generator")[0] == 200


@pytest.mark.slow  # a Ray Serve application
def test_seeds_are_image_zero_of_each_seed(service, reference):
    want = [reference[("seed", s)] for s in (11, 12, 13)]
    assert _b64_images(http(f"{service}/generate", {"seeds": [11, 12, 13]})[2]) == want
    assert _b64_images(http(f"{service}/generate", {"start_seed": 11, "count": 3})[2]) == want


@pytest.mark.slow  # a Ray Serve application
def test_concurrent_requests_are_batched_and_correct(service, reference):
    before = json.loads(http(f"{service}/metrics?format=json")[2])
    barrier = threading.Barrier(8)

    def one(i: int):
        barrier.wait(timeout=30)
        return i, http(f"{service}/generate", {"seed": SEED, "indices": [i], "format": "png"})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, (status, _, body) in results:
        assert status == 200 and body == reference[("main", f"{i:06d}.png")]
    # a request larger than the batch is cut into batch-sized pieces, and still comes back whole and in order
    status, _, body = http(f"{service}/generate", {"seed": SEED, "start": 0, "count": MAX_IMAGES})
    assert status == 200 and _b64_images(body) == [reference[("main", f"{i:06d}.png")] for i in range(MAX_IMAGES)]
    after = json.loads(http(f"{service}/metrics?format=json")[2])
    batches = after["batches"] - before["batches"]
    images = after["batch_images"] - before["batch_images"]
    assert images == 8 + MAX_IMAGES
    # 8 single-image requests within one 80 ms window, plus the 32-image request in pieces of <= 16:
    # without batching across requests that is 8 + 2 = 10 backend calls
    assert batches < 10, f"no batching across requests: {batches} calls for {images} images"
    assert after["max_batch_size_formed"] <= 16


@pytest.mark.slow  # a Ray Serve application
def test_bad_requests_are_json_counted_and_the_service_keeps_running(service, reference):
    """Defect 3 through the whole stack: NaN, 1e400, 5000 digits, deep nesting: 400 JSON, counted."""
    before = json.loads(http(f"{service}/metrics?format=json")[2])
    for body, status, field, reason in BAD:
        got, headers, raw = http(f"{service}/generate", body)
        assert got == status and headers["content-type"] == "application/json", (body[:60], raw[:200])
        err = json.loads(raw)["error"]
        assert (err["status"], err["field"], err["reason"]) == (status, field, reason) and err["expected"]
    got, _, raw = http(f"{service}/generate", b'{"seeds": [' + b"1, " * 20000 + b"1]}")
    assert got == 413 and json.loads(raw)["error"]["reason"] == "body_too_large"
    for method, path, status in (("GET", "/generate", 405), ("GET", "/nope", 404), ("POST", "/metrics", 405)):
        got, headers, raw = http(f"{service}{path}", b"{}" if method == "POST" else None, method=method)
        assert got == status and json.loads(raw)["error"]["status"] == status
    assert http(f"{service}/healthz")[0] == 200
    status, _, body = http(f"{service}/generate", {"seed": SEED, "indices": [2], "format": "png"})
    assert status == 200 and body == reference[("main", "000002.png")]
    after = json.loads(http(f"{service}/metrics?format=json")[2])
    counted = {s: n - before["requests"].get(s, 0) for s, n in after["requests"].items()}
    assert counted["400"] >= sum(1 for b in BAD if b[1] == 400) and counted["422"] >= sum(1 for b in BAD if b[1] == 422)


@pytest.mark.slow  # a Ray Serve application
def test_slow_clients_do_not_lock_anyone_out(service, reference):
    """Defect 1: 64 connections that announce 100 bytes and send 12 stay open; everyone else gets answers,
    and the slow ones get a JSON 408 after the read timeout (2 s here)."""
    slow = []
    try:
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", int(service.rsplit(":", 1)[1])), timeout=10)
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                      b'{"count": 1,')
            slow.append(s)
        time.sleep(0.3)
        t0 = time.monotonic()
        for i in range(3):
            status, _, body = http(f"{service}/generate", {"seed": SEED, "indices": [i], "format": "png"}, timeout=10)
            assert status == 200 and body == reference[("main", f"{i:06d}.png")]
        assert time.monotonic() - t0 < 5
        assert http(f"{service}/readyz", timeout=5)[0] == 200
        deadline = time.monotonic() + 15
        for s in slow:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            head = s.recv(4096)
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 408"), head[:100]
            assert b"body_timeout" in head or b"content-type: application/json" in head.lower()
    finally:
        for s in slow:
            s.close()


@pytest.mark.slow  # a Ray Serve application
def test_overload_answers_503_fast_then_recovers(service, reference):
    """Defect 4: two requests fit /tight (max_queued 2) and wait 2.5 s for company; every other request gets
    a JSON 503 with Retry-After at once, whichever layer answers it."""
    url = f"{service}/tight"
    barrier = threading.Barrier(6)

    def one(i: int):
        barrier.wait(timeout=30)
        t0 = time.perf_counter()
        return i, http(f"{url}/generate", {"seed": SEED, "indices": [i], "format": "png"}), time.perf_counter() - t0

    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(lambda: [pool.submit(one, i) for i in range(6)]).result()
        results = [f.result() for f in first]
        # while the two are held: a burst of 40 more, all refused quickly
        burst_at = time.perf_counter()
        with ThreadPoolExecutor(20) as burst_pool:
            burst = list(burst_pool.map(lambda i: (http(f"{url}/generate", {"count": 1}, timeout=10), time.perf_counter()), range(40)))
    statuses = sorted(s for _, (s, _, _), _ in results)
    assert statuses == [200, 200, 503, 503, 503, 503], statuses
    for i, (status, headers, body), seconds in results:
        if status == 200:
            assert body == reference[("main", f"{i:06d}.png")] and seconds > 2.0
        else:
            assert headers.get("retry-after") == "1" and json.loads(body)["error"]["reason"] == "overloaded"
            assert seconds < 1.0, seconds
    late = [(s, t) for (s, _, _), t in burst]
    refused = [t - burst_at for s, t in late if s == 503]
    assert len(refused) >= 30 and max(refused) < 2.0, refused  # 40 requests, all answered while the two still wait
    assert http(f"{url}/healthz")[0] == 200
    status, headers, body = http(f"{url}/generate", {"seed": SEED, "indices": [3], "format": "png"})
    assert status == 200 and body == reference[("main", "000003.png")]
    m = json.loads(http(f"{url}/metrics?format=json")[2])
    assert m["requests"].get("503", 0) >= 4 and m["in_flight"] == 0


@pytest.mark.slow  # a Ray Serve application
def test_health_and_readiness_answer_at_once_under_overload(service):
    """Defect 2: with /tight's queue full and requests being refused, /healthz and /readyz answer in
    milliseconds (readiness: 503 'overloaded' while full, 200 once it drains)."""
    url = f"{service}/tight"
    stop = time.monotonic() + 2.0
    with ThreadPoolExecutor(8) as pool:
        held = [pool.submit(http, f"{url}/generate", {"count": 1}) for _ in range(2)]
        time.sleep(0.3)
        flood = [pool.submit(lambda: [http(f"{url}/generate", {"count": 1}, timeout=10) for _ in range(15)]) for _ in range(4)]
        times, ready_codes = [], []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status, _, _ = http(f"{url}/healthz", timeout=5)
            times.append(time.perf_counter() - t0)
            assert status == 200
            t0 = time.perf_counter()
            ready_codes.append(http(f"{url}/readyz", timeout=5)[0])
            times.append(time.perf_counter() - t0)
            time.sleep(0.05)
        [f.result() for f in flood + held]
    times.sort()
    assert times[len(times) // 2] < 0.1 and times[-1] < 1.0, times
    assert 503 in ready_codes
    assert http(f"{url}/readyz")[0] == 200


@pytest.mark.slow  # a Ray Serve application
def test_metrics_are_prometheus_by_default(service):
    """Defect 7: Prometheus text by default, standard names, quantile="0.5", queue vs compute histograms,
    error counters; JSON with ?format=json."""
    http(f"{service}/generate", {"count": 2})
    http(f"{service}/generate", {"count": -2})
    status, headers, text = http(f"{service}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = _parse_prometheus(text.decode())
    gen = {s.labels["code"]: s.value for s in fams["gan_deploy_generate_requests"]}
    assert gen["200"] >= 1 and gen["422"] >= 1
    assert any(s.labels.get("quantile") == "0.5" for s in fams["gan_deploy_request_latency_seconds"])
    for name in ("gan_deploy_queue_duration_seconds", "gan_deploy_compute_duration_seconds", "gan_deploy_batch_size_images"):
        assert [s for s in fams[name] if s.name.endswith("_count")][0].value >= 1
    assert any(s.labels["reason"] == "out_of_range" for s in fams["gan_deploy_http_errors"])
    m = json.loads(http(f"{service}/metrics?format=json")[2])
    assert m["requests"]["200"] >= 1 and m["images"] >= 2 and m["batches"] >= 1 and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"] > 0
    assert m["config"]["max_batch_size"] == 16 and not any(k.startswith("_") for k in m) and m["ready"] == 1
    assert json.loads(http(f"{service}/")[2])["max_images_per_request"] == MAX_IMAGES


@pytest.mark.slow  # a Ray Serve application
def test_disconnects_are_counted_not_logged(service, capfd):
    """Defect 7: a client that leaves mid-request is one counter increment, not a traceback in the logs."""
    import ray
    log_dir = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"

    def log_lines() -> int:
        return sum(len(p.read_text(errors="replace").splitlines()) for p in log_dir.glob("*.log"))

    url = f"{service}/tight"
    before_m = json.loads(http(f"{url}/metrics?format=json")[2])["disconnects"]
    before_l = log_lines()
    port = int(service.rsplit(":", 1)[1])
    for _ in range(3):  # well inside the 2.5 s batch window, then gone
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b'POST /tight/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n{"count": 16}\n')
        time.sleep(0.3)
        s.close()
    deadline = time.monotonic() + 10
    while json.loads(http(f"{url}/metrics?format=json")[2])["disconnects"] < before_m + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(http(f"{url}/metrics?format=json")[2])["disconnects"] >= before_m + 3
    assert json.loads(http(f"{url}/metrics?format=json")[2])["in_flight"] == 0  # and their slots are free again
    time.sleep(0.5)
    assert log_lines() - before_l <= 3
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow  # a Ray Serve application
def test_ray_binds_loopback_only(service):
    """Defect 7: with the service on 127.0.0.1, every socket the local Ray listens on is loopback too."""
    import ray
    psutil = pytest.importorskip("psutil")  # Ray ships it
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    procs = psutil.Process().children(recursive=True)
    listening = []
    for p in procs:
        try:
            listening += [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    assert listening, "found no Ray sockets"
    import ipaddress
    outside = [a for a in listening if not ipaddress.ip_address(a.ip.removeprefix("::ffff:")).is_loopback]
    assert not outside, outside


@pytest.mark.slow  # a Ray Serve application, deployed by `gan-deploy serve` in a subprocess
def test_sigterm_drains_in_flight_requests_and_exits_0(service, tiny_checkpoint, tmp_path):
    """Defect 5: SIGTERM: new requests are refused (503 draining), the in-flight one still gets its 200, and
    the process exits 0 well within --drain-timeout. The process joins this module's Ray (RAY_ADDRESS, as on
    a cluster: one Ray start less) with its own app, and on exit removes only that app."""
    import ray
    url = f"{service}/drain"
    proc = _serve_process(["--checkpoint", str(tiny_checkpoint), "--backend", "eager", "--num-cpus", "0.5",
                           "--app-name", "drain", "--route-prefix", "/drain", "--batch-wait-ms", "3000",
                           "--max-batch-size", "64", "--drain-timeout", "20"], tmp_path,
                          {"RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    try:
        _wait_for(url, proc, tmp_path / "serve.log", 120)
        with ThreadPoolExecutor(2) as pool:
            inflight = pool.submit(http, f"{url}/generate", {"seed": SEED, "count": 2}, None, 30)
            time.sleep(0.8)  # it now waits (3 s batch window) inside the service
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            refused = http(f"{url}/generate", {"count": 1}, timeout=5)
            assert refused[0] == 503 and json.loads(refused[2])["error"]["reason"] == "draining"
            assert refused[1].get("connection") == "close"
            status, _, body = inflight.result(timeout=30)
        assert status == 200 and json.loads(body)["count"] == 2
        rc = proc.wait(timeout=60)
        out = (tmp_path / "serve.log").read_text()
        assert rc == 0, out[-3000:]
        assert time.monotonic() - t_term < 30
        assert "draining" in out and "stopped: drained in" in out and "Traceback" not in out
        assert http(f"{url}/generate", {"count": 1})[0] == 404  # its app is gone ...
        assert http(f"{service}/generate", {"count": 1})[0] == 200  # ... and only its app
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

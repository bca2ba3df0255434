"""`gan-deploy serve`: the request contract and the HTTP application without a listener (fast), the edge (our
listener on loopback: header timeout, connection cap, malformed HTTP, capacity, drain), the service checked
against `generate`'s files byte for byte, then `gan-deploy serve` as a process (drain on SIGTERM with a
pre-stop, Ray Serve replicas behind the edge, refusal at start-up). Every network use is loopback; every loop
is bounded in count and time.

Issue 19's items and where each is checked:
1 header timeout, cap     test_silent_and_partial_header_*, test_connection_flood_*
2 drain an LB can follow  test_drain_readyz_*, test_sigterm_drains_with_a_pre_stop_and_exits_0, test_service_drain_*
3 refusals past capacity  test_exactly_max_queued_one_at_a_time_clients_see_no_503
4 every answer JSON       test_malformed_http_*, test_service_every_error_is_json_and_counted, test_disconnects_*
5 documented Ray APIs     test_no_private_ray_apis_or_environment_switches, test_ray_replicas_behind_the_edge_*
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
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


# -- the HTTP application, without a listener ---------------------------------------------------------------

class _Resp:
    def __init__(self, status: int, headers: list, body: bytes):
        self.status_code, self.body = status, body
        self.headers = {k.decode().lower(): v.decode() for k, v in headers}


class _Svc:
    """A GanService on a LocalGenerator (the tiny generator), called with raw ASGI messages on the test's loop."""

    def __init__(self, checkpoint, delay: float | None = None, backend: str = "eager", **over):
        from gan_deploy.artifacts.load import load_artifact
        from gan_deploy.serve.batcher import LocalGenerator
        from gan_deploy.serve.service import GanService

        art = load_artifact(onnx=checkpoint) if str(checkpoint).endswith(".onnx") else load_artifact(checkpoint)
        cfg = ServeConfig(art, backend=backend, device="cpu", max_batch_size=8, batch_wait_ms=5,
                          max_images_per_request=MAX_IMAGES, **{"max_queued": 2, "read_timeout_s": 0.5, "request_timeout_s": 5.0, **over})
        self.svc = GanService(cfg, LocalGenerator(cfg))  # the service attaches its metrics, as `serve` does
        if delay is not None:
            real = self.svc.gen.pixels

            async def slow(seeds, indices):
                await asyncio.sleep(delay)
                return await real(seeds, indices)
            self.svc.gen.pixels = slow

    def __getattr__(self, name):
        return getattr(self.svc, name)

    async def __call__(self, req) -> _Resp:
        scope, receive = req
        sent: list = []

        async def send(msg):
            sent.append(msg)
        await self.svc(scope, receive, send)
        start = next((m for m in sent if m["type"] == "http.response.start"), None)
        if start is None:
            return _Resp(499, [], b"")
        return _Resp(start["status"], start["headers"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def _request(method: str, path: str, chunks_: list[tuple[float, bytes]] | None = None, headers=None, declared: int | None = None):
    """(scope, receive): a body arriving as (delay, bytes) chunks; then the client waits (no disconnect)."""
    chunks_ = list(chunks_ or [])
    total = declared if declared is not None else sum(len(c) for _, c in chunks_)
    hdrs = [(b"host", b"x"), (b"content-type", b"application/json")] + ([(b"content-length", str(total).encode())] if chunks_ or declared else [])
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    hdrs = [h for h in hdrs if h[0] not in {k for k, _ in extra}] + extra
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
    return scope, receive


def _run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_service_reads_the_body_before_taking_a_slot(tiny_checkpoint):
    """A client that announces 100 bytes and sends 12 gets 408 after --read-timeout and, while it dawdles, holds
    no slot: others are admitted (max_queued 2, here 3 slow clients)."""
    async def main():
        rep = _Svc(tiny_checkpoint)
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
        png = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')], headers={"content-type": "image/png"}))
        assert png.status_code == 415 and json.loads(png.body)["error"]["reason"] == "unsupported_media_type"
        m = rep.snapshot()
        assert m["requests"]["408"] == 3 and m["requests"]["200"] == 1 and m["requests"]["413"] == 1 and m["requests"]["415"] == 1
    _run(main())


def test_service_runs_openvino(tiny_checkpoint, tiny_onnx):
    """`serve --backend openvino`: the generator's runtime is OpenVINO, with eager's images (within a grey level)."""
    import io

    import numpy as np
    from PIL import Image

    from gan_deploy.backends import unavailable_reason
    if unavailable_reason("openvino"):
        pytest.skip("openvino is not installed")

    async def main():
        images = {}
        for backend, model in (("openvino", tiny_onnx), ("eager", tiny_checkpoint)):
            rep = _Svc(model, backend=backend)
            assert rep.svc.gen.runner.name == backend
            r = await rep(_request("POST", "/generate", [(0, b'{"seed": 3, "start": 5, "count": 1, "format": "png"}')]))
            assert r.status_code == 200, r.body
            images[backend] = np.asarray(Image.open(io.BytesIO(r.body)), dtype=int)
        assert np.abs(images["openvino"] - images["eager"]).max() <= 1
    _run(main())


def test_service_overload_is_a_json_503_at_once(tiny_checkpoint):
    """Past max_queued in flight, a 503 with Retry-After in milliseconds; /healthz and /readyz answer at once
    meanwhile (readiness: 503 'overloaded' while full)."""
    async def main():
        rep = _Svc(tiny_checkpoint, delay=0.5)
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


def test_service_every_error_is_json_and_counted(tiny_checkpoint, monkeypatch):
    """Every answer other than 200 is JSON with a reason and counted, 500s included; a missing Host is a 400."""
    async def main():
        rep = _Svc(tiny_checkpoint)

        def broken_backend(seeds, indices):
            raise RuntimeError("CUDA error: out of memory")
        rep.gen.batcher.infer = broken_backend
        r = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert r.status_code == 500 and json.loads(r.body)["error"]["reason"] == "backend_failed"
        rep.gen.batcher.infer = rep.gen._infer

        def bug(*a, **k):
            raise KeyError("oops")
        monkeypatch.setattr("gan_deploy.serve.service.render", bug)
        r = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert json.loads(r.body)["error"]["reason"] == "internal"
        monkeypatch.undo()
        snap = rep.snapshot()
        assert {"code": "500", "reason": "backend_failed", "count": 1} in snap["errors"]
        assert {"code": "500", "reason": "internal", "count": 1} in snap["errors"] and snap["requests"]["500"] == 2
        slow = _Svc(tiny_checkpoint, delay=10, request_timeout_s=0.3)
        r = await slow(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert r.status_code == 504 and json.loads(r.body)["error"]["reason"] == "request_timeout"
        for body in (b'{"seed": NaN, "count": 1}', b'{"count": 1e400}', b"[" * 3000 + b"]" * 3000):
            r = await rep(_request("POST", "/generate", [(0, body)]))
            assert r.status_code == 400 and json.loads(r.body)["error"]["reason"] in ("bad_number", "too_deep")
        for method, path, status in (("GET", "/generate", 405), ("GET", "/nope", 404), ("POST", "/metrics", 405),
                                     ("GET", "/metrics?format=xml", 422), ("GET", "/v2/models/other", 404)):
            r = await rep(_request(method, path))
            assert r.status_code == status and json.loads(r.body)["error"]["status"] == status
        scope, receive = _request("GET", "/healthz")
        scope["headers"] = [h for h in scope["headers"] if h[0] != b"host"]
        r = await rep((scope, receive))
        assert r.status_code == 400 and json.loads(r.body)["error"]["field"] == "Host"
        text = (await rep(_request("GET", "/metrics"))).body.decode()
        fams = _parse_prometheus(text)
        codes = {s.labels["code"] for s in fams["gan_deploy_http_errors"]}
        assert {"400", "404", "405", "422", "500"} <= codes
        assert all(s.labels["replica"] == "edge" for s in fams["gan_deploy_http_errors"])
    _run(main())


def test_service_drain_serves_then_refuses(tiny_checkpoint):
    """Draining (SIGTERM, the pre-stop period): /readyz 503 at once, requests still served with Connection:
    close; closing (after the listener closed): new requests 503 draining; the in-flight one gets its images."""
    async def main():
        rep = _Svc(tiny_checkpoint, delay=0.4)
        inflight = asyncio.ensure_future(rep(_request("POST", "/generate", [(0, b'{"count": 1}')])))
        await asyncio.sleep(0.05)
        rep.svc.draining = True
        assert (await rep(_request("GET", "/readyz"))).status_code == 503
        served = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert served.status_code == 200 and served.headers["connection"] == "close"
        rep.svc.closing = True
        refused = await rep(_request("POST", "/generate", [(0, b'{"count": 1}')]))
        assert refused.status_code == 503 and json.loads(refused.body)["error"]["reason"] == "draining"
        assert (await rep(_request("GET", "/healthz"))).status_code == 200  # alive, just not taking work
        assert (await inflight).status_code == 200
        report = await rep.wait_idle(5.0)
        assert report["in_flight_left"] == 0 and report["waited_s"] < 1.0
    _run(main())


def test_batcher_merges_concurrent_pieces_and_drops_cancelled_ones():
    from gan_deploy.serve.batcher import Batcher
    calls: list[int] = []

    def infer(seeds, indices):
        calls.append(len(seeds))
        return np.array(indices) * 2

    async def main():
        b = Batcher(infer, max_batch_size=8, batch_wait_s=0.05)
        pieces = [list(range(10 * k, 10 * k + k)) for k in (1, 3, 4, 2)]
        gone = asyncio.ensure_future(b.run([0] * 5, list(range(5))))
        await asyncio.sleep(0)
        gone.cancel()
        out = await asyncio.gather(*(b.run([0] * len(p), p) for p in pieces))
        for p, (px, _) in zip(pieces, out):
            assert px.tolist() == [2 * i for i in p]
        assert calls == [8, 2]  # 1 + 3 + 4 in one call (the cancelled 5 never ran), then the 2 that did not fit
    _run(main())


def test_batcher_without_a_wait_runs_at_once_and_merges_what_arrives_meanwhile():
    """The default (--batch-wait-ms 0): a lone piece runs the moment it arrives (no waiting while the backend idles),
    and the pieces that arrive while a batch runs form the next batch together, not one call each."""
    import threading

    from gan_deploy.serve.batcher import Batcher
    calls: list[int] = []
    release = threading.Event()

    def infer(seeds, indices):
        calls.append(len(seeds))
        if len(calls) == 1:
            release.wait(5)  # the first batch runs until the others have arrived
        return np.array(indices)

    async def main():
        b = Batcher(infer, max_batch_size=8, batch_wait_s=0.0)
        first = asyncio.ensure_future(b.run([0], [0]))
        for _ in range(100):  # the first batch starts without company
            await asyncio.sleep(0.01)
            if calls:
                break
        assert calls == [1]
        rest = [asyncio.ensure_future(b.run([0] * 2, [k, k + 1])) for k in (1, 3, 5)]
        await asyncio.sleep(0.05)
        release.set()
        out = await asyncio.gather(first, *rest)
        assert [px.tolist() for px, _ in out] == [[0], [1, 2], [3, 4], [5, 6]]
        assert calls == [1, 6]
    _run(main())


def test_replica_answers_the_same_contract_behind_rays_proxy(tiny_checkpoint):
    """What `serve deploy` of the config file runs: a replica's __call__ (Ray's proxy as the listener) is the
    same GanService, with its own batcher; and its pixels() (the edge's handle call) the same images."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from starlette.requests import Request

    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.serve.deployment import GeneratorDeployment

    cfg = ServeConfig(load_artifact(tiny_checkpoint), backend="eager", device="cpu", max_images_per_request=MAX_IMAGES)
    replica = GeneratorDeployment.func_or_class(cfg.to_dict())

    async def main():
        scope, receive = _request("POST", "/generate", [(0, b'{"seed": 5, "indices": [3], "format": "png"}')])
        ok = await replica(Request(scope, receive))
        scope, receive = _request("POST", "/generate", [(0, b'{"seeds": [1, -2]}')])
        bad = await replica(Request(scope, receive))
        px = await replica.pixels([5], [3])
        return ok, bad, px
    ok, bad, px = _run(main())
    assert ok.status_code == 200 and ok.body.startswith(b"\x89PNG") and ok.headers["etag"]
    assert bad.status_code == 422 and json.loads(bad.body)["error"]["field"] == "seeds[1]"
    from gan_deploy.core.images import encode
    assert encode(px[0], "png") == ok.body


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
    (dict(batch_wait_ms=60_000, request_timeout_s=60), "--batch-wait-ms is not shorter than --request-timeout"),
    (dict(read_timeout_s=0), "bad --read-timeout"),
    (dict(request_timeout_s=0.01), "bad --request-timeout"),
    (dict(max_body_bytes=10), "bad --max-body-bytes"),
    (dict(max_header_bytes=17000), "bad --max-header-bytes"),
    (dict(drain_timeout_s=-0.5), "bad --drain-timeout"),
    (dict(port=70000), "bad --port"),
    (dict(keep_alive_s=0), "bad --keep-alive-timeout"),
    (dict(start_timeout_s=0.5), "bad --start-timeout"),
    (dict(backend="tpu"), "unknown backend"),
    (dict(max_connections=0), "bad --max-connections"),
    (dict(max_connections=100_001), "bad --max-connections"),
    (dict(num_replicas=1025), "bad --replicas"),
    (dict(max_queued=100_001), "bad --max-queued"),
    (dict(max_images_per_request=70_000), "bad --max-images-per-request"),
    (dict(header_timeout_s=0), "bad --header-timeout"),
    (dict(pre_stop_s=-1), "bad --pre-stop"),
    (dict(pre_stop_s=4000), "bad --pre-stop"),
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
    for flag, value in (("--max-connections", 10**6), ("--replicas", 5000), ("--header-timeout", 0), ("--pre-stop", -2)):
        r = cli("serve", "--checkpoint", tiny_checkpoint, flag, value)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"Error: bad {flag}"), r.output


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
    base = dict(backend="eager", device="cpu", max_images_per_request=MAX_IMAGES, num_cpus=0.5, port=0)
    return ServeConfig(art, **{**base, **over})


class _Edge:
    """`gan-deploy serve`'s listener and service in a thread of this process (no Ray): url, server, service."""

    def __init__(self, art, **over):
        from gan_deploy.serve.batcher import LocalGenerator
        from gan_deploy.serve.edge import make_server
        from gan_deploy.serve.service import GanService

        cfg = _config(art, **over)
        self.service = GanService(cfg, LocalGenerator(cfg))  # wired as driver.run_service wires it
        urls: list[str] = []
        self.server = make_server(self.service, cfg, ready=urls.append)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not urls and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        assert urls, "the listener did not start"
        self.url = urls[0]
        self.port = int(self.url.split(":")[2].split("/")[0])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def edges(tiny_checkpoint):
    """Two services on two loopback ports: "main" (batching: 80 ms wait, 2 s read timeout) and "tight"
    (2 queued requests, 2.5 s batch wait)."""
    from gan_deploy.artifacts.load import load_artifact

    art = load_artifact(tiny_checkpoint)
    t0 = time.monotonic()
    main = _Edge(art, max_batch_size=16, batch_wait_ms=80, max_queued=32, read_timeout_s=2.0)
    tight = _Edge(art, max_batch_size=64, batch_wait_ms=2500, max_queued=2)
    print(f"\nserve started in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    try:
        yield {"main": main, "tight": tight}
    finally:
        main.stop()
        tight.stop()


@pytest.fixture(scope="module")
def service(edges):
    return edges["main"].url


@pytest.fixture(scope="module")
def tight(edges):
    return edges["tight"].url


def _b64_images(body: bytes) -> list[bytes]:
    return [base64.b64decode(im["png"]) for im in json.loads(body)["images"]]


@pytest.mark.slow  # a service on loopback
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


@pytest.mark.slow  # a service on loopback
def test_seeds_are_image_zero_of_each_seed(service, reference):
    want = [reference[("seed", s)] for s in (11, 12, 13)]
    assert _b64_images(http(f"{service}/generate", {"seeds": [11, 12, 13]})[2]) == want
    assert _b64_images(http(f"{service}/generate", {"start_seed": 11, "count": 3})[2]) == want


@pytest.mark.slow  # a service on loopback
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


@pytest.mark.slow  # a service on loopback
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


@pytest.mark.slow  # a service on loopback
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


@pytest.mark.slow  # a service on loopback
def test_overload_answers_503_fast_then_recovers(tight, reference):
    """Defect 4: two requests fit /tight (max_queued 2) and wait 2.5 s for company; every other request gets
    a JSON 503 with Retry-After at once, whichever layer answers it."""
    url = tight
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


@pytest.mark.slow  # a service on loopback
def test_health_and_readiness_answer_at_once_under_overload(tight):
    """Defect 2: with /tight's queue full and requests being refused, /healthz and /readyz answer in
    milliseconds (readiness: 503 'overloaded' while full, 200 once it drains)."""
    url = tight
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


@pytest.mark.slow  # a service on loopback
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


@pytest.mark.slow  # a service on loopback
def test_disconnects_are_counted_not_logged(tight, edges, capfd, caplog):
    """A client that leaves mid-request is one counter increment (and 499), not a traceback in the logs."""
    url = tight
    before_m = json.loads(http(f"{url}/metrics?format=json")[2])["disconnects"]
    port = edges["tight"].port
    for _ in range(3):  # well inside the 2.5 s batch window, then gone
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b'POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{"count": 16}\n')
        time.sleep(0.3)
        s.close()
    deadline = time.monotonic() + 10
    while json.loads(http(f"{url}/metrics?format=json")[2])["disconnects"] < before_m + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    m = json.loads(http(f"{url}/metrics?format=json")[2])
    assert m["disconnects"] == before_m + 3 and m["requests"].get("499", 0) >= 3
    assert m["in_flight"] == 0  # and their slots are free again
    assert "Traceback" not in capfd.readouterr().err and not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- the edge: connections, headers, malformed HTTP, capacity, drain (a listener on loopback, no Ray) ----------

def _raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes on a new connection; (status, headers, body) of the answer (status 0: closed silently)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                if b"\r\n\r\n" in got:
                    head, _, body = got.partition(b"\r\n\r\n")
                    n = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")), None)
                    if n is not None and len(body) >= n:
                        break
        except (ConnectionResetError, socket.timeout):
            pass
    if not got:
        return 0, {}, b""
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    return int(lines[0].split()[1]), headers, body


MALFORMED = [
    ("chunked and Content-Length", b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("two Content-Lengths", b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
    ("obs-fold", b"POST /generate HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\n{}"),
    ("bad chunk size", b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("space before colon", b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}"),
    ("no Host", b"GET /healthz HTTP/1.1\r\n\r\n"),
    ("bare LF", b"GET /healthz HTTP/1.1\nHost: x\n\n"),
]


@pytest.fixture(scope="module")
def edge(tiny_checkpoint):
    """A service with a small connection cap and short header timeout (for the edge tests)."""
    from gan_deploy.artifacts.load import load_artifact
    e = _Edge(load_artifact(tiny_checkpoint), max_connections=64, header_timeout_s=1.5, max_queued=8, batch_wait_ms=2)
    try:
        yield e
    finally:
        e.stop()


def test_malformed_http_is_a_counted_json_400_without_smuggling(edge):
    """Item 4: what the HTTP parser rejects is a JSON 400 `bad_http` in the service's shape, counted; the
    connection closes (nothing after it is read as a request); no Server banner; image/png is a 415."""
    before = json.loads(http(f"{edge.url}/metrics?format=json")[2])
    for name, data in MALFORMED:
        status, headers, body = _raw(edge.port, data + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 400, name
        assert headers["content-type"] == "application/json" and headers["connection"] == "close" and "server" not in headers, name
        err = json.loads(body)["error"]
        assert err["reason"] == "bad_http" and err["status"] == 400 and err["message"], name
        assert body.count(b'{"error"') == 1 and b'"status":"ok"' not in body, name  # the smuggled request was not answered
    status, headers, body = _raw(edge.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert status == 431 and json.loads(body)["error"]["reason"] == "headers_too_large"
    status, headers, body = _raw(edge.port, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 12\r\n\r\n{\"count\": 1}")
    assert status == 415 and json.loads(body)["error"]["reason"] == "unsupported_media_type"
    status, headers, _ = _raw(edge.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and "server" not in headers and "date" in headers
    after = json.loads(http(f"{edge.url}/metrics?format=json")[2])
    bad = {(e["code"], e["reason"]): e["count"] for e in after["errors"]}
    was = {(e["code"], e["reason"]): e["count"] for e in before["errors"]}
    assert bad[("400", "bad_http")] - was.get(("400", "bad_http"), 0) == len(MALFORMED)
    assert bad[("431", "headers_too_large")] >= 1 and bad[("415", "unsupported_media_type")] >= 1


def test_silent_and_partial_header_connections_are_closed_after_the_header_timeout(edge):
    """Item 1: a silent connection is closed after --header-timeout (1.5 s here); a partial header block gets a
    JSON 408 `header_timeout`; both counted."""
    before = json.loads(http(f"{edge.url}/metrics?format=json")[2])["connections"]
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as silent:
        assert silent.recv(100) == b""  # closed by the server, nothing said
    assert 1.3 < time.monotonic() - t0 < 5
    t0 = time.monotonic()
    status, headers, body = _raw(edge.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert status == 408 and json.loads(body)["error"]["reason"] == "header_timeout" and 1.3 < time.monotonic() - t0 < 5
    after = json.loads(http(f"{edge.url}/metrics?format=json")[2])["connections"]
    assert after.get("silent_timeout", 0) > before.get("silent_timeout", 0) and after["header_timeout"] > before.get("header_timeout", 0)


@pytest.mark.slow  # 2,000 sockets on loopback
def test_connection_flood_is_capped_counted_logged_once_and_probes_still_answer(edge, caplog):
    """Item 1: 2,000 idle connections against a cap of 64: past the cap new connections get a JSON 503 (probes
    are still answered), counted, one log line for the burst; the idle ones are closed by the header timeout."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4600:
        pytest.skip(f"open-file limit {soft}")
    caplog.set_level(logging.WARNING, logger="gan_deploy.serve")
    flood: list[socket.socket] = []
    probes: list[int] = []
    try:
        for k in range(2000):
            flood.append(socket.create_connection(("127.0.0.1", edge.port), timeout=10))
            if k % 250 == 249:
                probes.append(http(f"{edge.url}/healthz", timeout=5)[0])
        status, headers, body = _raw(edge.port, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"count\": 1}")
        assert status == 503 and json.loads(body)["error"]["reason"] == "too_many_connections" and headers["connection"] == "close"
        assert probes == [200] * len(probes)
        m = json.loads(http(f"{edge.url}/metrics?format=json")[2])
        assert m["connections"]["over_cap"] >= 2000 - 64
    finally:
        for s in flood:
            s.close()
    deadline = time.monotonic() + 10
    while json.loads(http(f"{edge.url}/metrics?format=json")[2])["open_connections"] > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert http(f"{edge.url}/generate", {"count": 1})[0] == 200
    starts = [r for r in caplog.records if "past --max-connections" in r.getMessage()]
    assert len(starts) == 1, [r.getMessage() for r in starts]


def test_exactly_max_queued_one_at_a_time_clients_see_no_503(edge):
    """Item 3: --max-queued 8 and 8 keep-alive clients, each sending its next request the moment it has its
    answer: zero refusals (the slot is free before the answer is sent)."""
    import http.client

    def client(k: int) -> dict[int, int]:
        conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=30)
        seen: dict[int, int] = {}
        for i in range(30):
            conn.request("POST", "/generate", json.dumps({"seed": k, "indices": [i]}), {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            seen[r.status] = seen.get(r.status, 0) + 1
        conn.close()
        return seen

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    assert all(r == {200: 30} for r in results), results


def test_drain_readyz_turns_503_at_once_requests_served_then_listener_closes(tiny_checkpoint):
    """Item 2: begin_drain (what SIGTERM does): /readyz 503 at once and throughout the pre-stop period (1.5 s),
    /generate still served; then new connections are refused, and the request in flight when the listener
    closed still gets its 200."""
    from gan_deploy.artifacts.load import load_artifact
    e = _Edge(load_artifact(tiny_checkpoint), pre_stop_s=1.5, batch_wait_ms=1500, max_batch_size=64, drain_timeout_s=10)
    try:
        with ThreadPoolExecutor(2) as pool:
            t0 = time.monotonic()
            e.server.begin_drain("SIGTERM")
            assert http(f"{e.url}/readyz", timeout=5)[0] == 503
            inflight = pool.submit(http, f"{e.url}/generate", {"count": 2}, None, 30)  # waits 1.5 s for company
            codes = []
            while time.monotonic() - t0 < 1.2:
                codes.append(http(f"{e.url}/readyz", timeout=5)[0])
                time.sleep(0.1)
            assert set(codes) == {503}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    http(f"{e.url}/healthz", timeout=2)
                except OSError:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the listener did not close")
            assert time.monotonic() - t0 >= 1.4
            status, headers, body = inflight.result(timeout=30)
            assert status == 200 and json.loads(body)["count"] == 2
        e.thread.join(15)
        assert not e.thread.is_alive() and e.server.drain_report["in_flight_left"] == 0
    finally:
        e.stop()


# -- `gan-deploy serve` as a process -------------------------------------------------------------------------

@pytest.mark.slow  # a `gan-deploy serve` process (no Ray)
def test_sigterm_drains_with_a_pre_stop_and_exits_0(tiny_checkpoint, tmp_path):
    """Item 2 end to end: SIGTERM: /readyz 503 within 0.3 s, requests still served during --pre-stop, then
    connections refused, the process exits 0 quickly and prints no traceback."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve_process(["--checkpoint", str(tiny_checkpoint), "--backend", "eager", "--port", str(port),
                           "--pre-stop", "2", "--drain-timeout", "10"], tmp_path)
    try:
        _wait_for(url, proc, tmp_path / "serve.log", 120)
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert http(f"{url}/readyz", timeout=5)[0] == 503
        status, _, body = http(f"{url}/generate", {"count": 1}, timeout=5)
        assert status == 200
        rc = proc.wait(timeout=30)
        out = (tmp_path / "serve.log").read_text()
        assert rc == 0, out[-3000:]
        assert 1.9 < time.monotonic() - t_term < 10
        assert "draining" in out and "stopped: drained in" in out and "Traceback" not in out
        with pytest.raises(OSError):
            http(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.slow  # a `gan-deploy serve --ray` process: Ray Serve replicas behind the edge, through a handle
def test_ray_replicas_behind_the_edge_same_images_clean_stop(tiny_checkpoint, reference, tmp_path):
    """Item 5: with --ray the replicas run on Ray Serve (its HTTP proxy off) and the edge calls them through a
    DeploymentHandle: the same bytes as `generate`, the same JSON errors; SIGTERM stops quickly with exit 0
    and no Ray noise ("killed by ray.kill")."""
    pytest.importorskip("ray.serve")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve_process(["--checkpoint", str(tiny_checkpoint), "--backend", "eager", "--port", str(port), "--ray",
                           "--num-cpus", "0.5", "--max-images-per-request", str(MAX_IMAGES)], tmp_path)
    try:
        _wait_for(url, proc, tmp_path / "serve.log", 240)
        status, _, body = http(f"{url}/generate", {"seed": SEED, "start": 3, "count": 10})
        assert status == 200 and _b64_images(body) == [reference[("main", f"{i:06d}.png")] for i in range(3, 13)]
        status, _, body = http(f"{url}/generate", {"seeds": [1, -2]})
        assert status == 422 and json.loads(body)["error"]["field"] == "seeds[1]"
        assert "Ray Serve" in json.loads(http(f"{url}/healthz")[2])["backend"]
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        out = (tmp_path / "serve.log").read_text()
        assert rc == 0, out[-3000:]
        assert time.monotonic() - t_term < 30, out[-2000:]
        assert "killed by ray.kill" not in out and "Traceback" not in out and "stopped: drained in" in out, out[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_no_private_ray_apis_or_environment_switches():
    """Item 5: the service uses only documented Ray APIs: no private modules, constants or environment switches."""
    src = "\n".join(p.read_text() for p in (ROOT / "gan_deploy" / "serve").glob("*.py"))
    for needle in ("ray._private", "serve._private", "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                   "ray_constants", "_global_client", "_blocking=", "run_many"):
        assert needle not in src, needle

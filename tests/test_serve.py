"""`gan-deploy serve`: the request contract (no Ray needed), then the Ray Serve service itself, started once
per module on a free loopback port with a tiny generator, checked against `generate`'s files byte for byte."""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gan_deploy.core.latents import MAX_SEED, latents_for
from gan_deploy.serve.api import ImageRequest, Metrics, RequestError, ServeConfig, chunks, parse_request, prometheus_text, request_latents

MAX_IMAGES = 32


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


BAD = [  # (body, status, field named in the error)
    (b"not json", 400, None),
    (b"[1, 2]", 400, None),
    (b"\xff\xfe", 400, None),
    ({}, 400, None),
    ({"seed": 1, "count": 2, "colour": "red"}, 400, "colour"),
    ({"seed": 1, "start": 2, "indices": [1]}, 400, "start"),
    ({"seeds": [1], "seed": 2}, 400, "seed"),
    ({"start_seed": 1}, 400, "count"),
    ({"seed": "1", "count": 2}, 422, "seed"),
    ({"seed": True, "count": 1}, 422, "seed"),
    ({"seed": 1.0, "count": 1}, 422, "seed"),
    ({"seed": -1, "count": 1}, 422, "seed"),
    ({"seed": MAX_SEED + 1, "count": 1}, 422, "seed"),
    ({"seeds": [1, -2]}, 422, "seeds[1]"),
    ({"seeds": "1,2"}, 422, "seeds"),
    ({"seeds": []}, 422, "seeds"),
    ({"indices": [0, -5]}, 422, "indices[1]"),
    ({"start": -1, "count": 1}, 422, "start"),
    ({"count": 0}, 422, "count"),
    ({"start": MAX_SEED, "count": 2}, 422, "count"),
    ({"count": 1, "format": "gif"}, 422, "format"),
    ({"count": 2, "format": "png"}, 422, "format"),
    ({"count": MAX_IMAGES + 1}, 413, "count"),
    ({"indices": list(range(MAX_IMAGES + 1))}, 413, "indices"),
    ({"seeds": list(range(10 * MAX_IMAGES))}, 413, "seeds"),
]


@pytest.mark.parametrize("body, status, field", BAD)
def test_parse_bad_requests(body, status, field):
    raw = body if isinstance(body, bytes) else json.dumps(body)
    with pytest.raises(RequestError) as info:
        parse_request(raw, MAX_IMAGES)
    e = info.value
    assert (e.status, e.field) == (status, field)
    err = json.loads(json.dumps(e.body()))["error"]  # the body must be JSON-serializable as it is
    assert err["status"] == status and err["expected"] and err["message"]


def test_latents_are_generates_latents():
    req = ImageRequest([4, 9, 4], [2, 0, 7])
    z = request_latents(req, 8)
    assert np.array_equal(z[0], latents_for(4, [2], 8)[0]) and np.array_equal(z[1], latents_for(9, [0], 8)[0])
    assert np.array_equal(z[2], latents_for(4, [7], 8)[0])
    assert chunks(5, 2) == [(0, 2), (2, 4), (4, 5)] and chunks(2, 8) == [(0, 2)]


def test_metrics_percentiles_and_prometheus():
    m = Metrics()
    for k in range(1, 101):
        m.record_request(200, 2, k / 1000)
    m.record_request(422)
    for size in (1, 3, 64, 5000):
        m.record_batch(size)
    s = m.snapshot(in_flight=0)
    assert s["requests"] == {"200": 100, "422": 1} and s["images"] == 200
    assert (s["latency_ms"]["p50"], s["latency_ms"]["p99"]) == pytest.approx((50, 99))
    assert s["mean_batch_size"] == pytest.approx((1 + 3 + 64 + 5000) / 4) and s["max_batch_size_formed"] == 5000
    assert s["batch_size_histogram"] == {"le_1": 1, "le_4": 1, "le_64": 1, "larger": 1}
    text = prometheus_text(s)
    assert 'gan_deploy_requests_total{code="422"} 1' in text and 'gan_deploy_batch_size_bucket{le="4"} 2' in text
    assert 'gan_deploy_batch_size_bucket{le="+Inf"} 4' in text and "gan_deploy_batch_size_count 4" in text


# -- the service ---------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body=None, method: str | None = None, timeout: float = 60):
    """(status, headers, body bytes); a 4xx/5xx is an answer here, not an exception."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


SEED, N_REF, BATCH_REF = 5, 40, 7


@pytest.fixture(scope="module")
def reference(tiny_onnx, tmp_path_factory):
    """generate's files for --seed SEED -n N_REF, and for --seed s -n 1 (s = 11, 12, 13): name -> bytes."""
    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.backends import make_runner
    from gan_deploy.generate.pipeline import GenerateOptions, generate

    art = load_artifact(onnx=tiny_onnx)
    out = tmp_path_factory.mktemp("ref")
    generate(make_runner("onnxruntime", art, "cpu"), GenerateOptions(n=N_REF, out=out / "main", batch_size=BATCH_REF, seed=SEED, progress=False))
    files = {("main", p.name): p.read_bytes() for p in (out / "main").glob("*.png")}
    for s in (11, 12, 13):
        generate(make_runner("onnxruntime", art, "cpu"), GenerateOptions(n=1, out=out / f"s{s}", seed=s, progress=False))
        files[("seed", s)] = (out / f"s{s}" / "000000.png").read_bytes()
    return files


@pytest.fixture(scope="module")
def service(tiny_onnx):
    """One Ray instance, two apps: "/" (batching: 80 ms wait) and "/tight" (2 queued requests, 2.5 s wait)."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'gan-deploy[serve]'")
    import ray
    from ray import serve as ray_serve

    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.serve import ray_serve as service

    art = load_artifact(onnx=tiny_onnx)
    common = dict(artifact_kind="onnx", artifact_path=str(art.path), artifact_sha256=art.sha256, backend="onnxruntime",
                  device="cpu", max_images_per_request=MAX_IMAGES, num_cpus=0.5)
    main = ServeConfig(**common, max_batch_size=16, batch_wait_ms=80, max_queued=32)
    tight = ServeConfig(**common, max_batch_size=64, batch_wait_ms=2500, max_queued=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = service.start(main, "127.0.0.1", _free_port(), name="main")
        ray_serve.run(service.build_app(tight), name="tight", route_prefix="/tight")
        yield url
    finally:
        service.stop()


def _b64_images(body: bytes) -> list[bytes]:
    return [base64.b64decode(im["png"]) for im in json.loads(body)["images"]]


@pytest.mark.slow  # a Ray Serve application
def test_images_are_generates_files(service, reference):
    status, _, body = http(f"{service}/generate", {"seed": SEED, "start": 3, "count": 10})
    assert status == 200
    got = json.loads(body)
    assert [(im["seed"], im["index"]) for im in got["images"]] == [(SEED, i) for i in range(3, 13)]
    assert _b64_images(body) == [reference[("main", f"{i:06d}.png")] for i in range(3, 13)]

    status, _, body = http(f"{service}/generate", {"seed": SEED, "indices": [39, 0, 7, 39]})
    assert _b64_images(body) == [reference[("main", f"{i:06d}.png")] for i in (39, 0, 7, 39)]

    status, headers, body = http(f"{service}/generate", {"seed": SEED, "indices": [21], "format": "png"})
    assert status == 200 and headers["content-type"] == "image/png" and body == reference[("main", "000021.png")]

    from PIL import Image
    status, headers, body = http(f"{service}/generate", {"seed": SEED, "start": 30, "count": 5, "format": "array"})
    arr = np.load(io.BytesIO(body), allow_pickle=False)
    assert status == 200 and arr.dtype == np.uint8 and arr.shape == (5, 16, 16, 1)
    want = np.stack([np.asarray(Image.open(io.BytesIO(reference[("main", f"{i:06d}.png")])))[:, :, None] for i in range(30, 35)])
    assert np.array_equal(arr, want)


@pytest.mark.slow  # a Ray Serve application
def test_seeds_are_image_zero_of_each_seed(service, reference):
    want = [reference[("seed", s)] for s in (11, 12, 13)]
    assert _b64_images(http(f"{service}/generate", {"seeds": [11, 12, 13]})[2]) == want
    assert _b64_images(http(f"{service}/generate", {"start_seed": 11, "count": 3})[2]) == want


@pytest.mark.slow  # a Ray Serve application
def test_concurrent_requests_are_batched_and_correct(service, reference):
    before = json.loads(http(f"{service}/metrics")[2])
    barrier = threading.Barrier(8)

    def one(i: int):
        barrier.wait()
        return i, http(f"{service}/generate", {"seed": SEED, "indices": [i], "format": "png"})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, (status, _, body) in results:
        assert status == 200 and body == reference[("main", f"{i:06d}.png")]
    # a request larger than the batch is cut into batch-sized pieces, and still comes back whole and in order
    status, _, body = http(f"{service}/generate", {"seed": SEED, "start": 0, "count": MAX_IMAGES})
    assert status == 200 and _b64_images(body) == [reference[("main", f"{i:06d}.png")] for i in range(MAX_IMAGES)]
    after = json.loads(http(f"{service}/metrics")[2])
    batches = after["batches"] - before["batches"]
    images = after["batch_images"] - before["batch_images"]
    assert images == 8 + MAX_IMAGES
    # 8 single-image requests within one 80 ms window, plus the 32-image request in pieces of <= 16:
    # without batching across requests that is 8 + 2 = 10 backend calls
    assert batches < 10, f"no batching across requests: {batches} calls for {images} images"
    assert after["max_batch_size_formed"] <= 16


@pytest.mark.slow  # a Ray Serve application
def test_bad_requests_get_4xx_and_the_service_keeps_running(service, reference):
    for body, status, field in BAD:
        got, headers, raw = http(f"{service}/generate", body)
        assert got == status, (body, raw)
        err = json.loads(raw)["error"]
        assert (err["status"], err["field"]) == (status, field) and err["expected"]
    got, _, raw = http(f"{service}/generate", b'{"seeds": [' + b"1, " * 20000 + b"1]}")
    assert got == 413 and "too large" in json.loads(raw)["error"]["message"]
    assert http(f"{service}/generate", method="GET")[0] == 405
    assert http(f"{service}/nope")[0] == 404
    assert http(f"{service}/metrics", b"{}", method="POST")[0] == 405
    assert http(f"{service}/healthz")[0] == 200
    status, _, body = http(f"{service}/generate", {"seed": SEED, "indices": [2], "format": "png"})
    assert status == 200 and body == reference[("main", "000002.png")]


@pytest.mark.slow  # a Ray Serve application
def test_overload_answers_503_then_recovers(service, reference):
    url = f"{service}/tight"
    barrier = threading.Barrier(6)

    def one(i: int):
        barrier.wait()
        return i, http(f"{url}/generate", {"seed": SEED, "indices": [i], "format": "png"})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    statuses = sorted(s for _, (s, _, _) in results)
    # two requests fit (max_queued=2) and wait 2.5 s for company; the other four arrive meanwhile
    assert statuses == [200, 200, 503, 503, 503, 503], statuses
    for i, (status, headers, body) in results:
        if status == 200:
            assert body == reference[("main", f"{i:06d}.png")]
        else:
            assert headers.get("retry-after") == "1" and json.loads(body)["error"]["status"] == 503
    assert http(f"{url}/healthz")[0] == 200
    status, _, body = http(f"{url}/generate", {"seed": SEED, "indices": [3], "format": "png"})
    assert status == 200 and body == reference[("main", "000003.png")]
    m = json.loads(http(f"{url}/metrics")[2])
    assert m["requests"]["503"] == 4 and m["in_flight"] == 0


@pytest.mark.slow  # a Ray Serve application
def test_healthz_and_metrics(service):
    status, _, body = http(f"{service}/healthz")
    h = json.loads(body)
    assert status == 200 and h["status"] == "ok" and "onnxruntime" in h["backend"] and len(h["sha256"]) == 64
    http(f"{service}/generate", {"count": 2})
    http(f"{service}/generate", {"count": -2})
    m = json.loads(http(f"{service}/metrics")[2])
    assert m["requests"]["200"] >= 1 and m["requests"]["422"] >= 1 and m["images"] >= 2
    assert m["batches"] >= 1 and m["mean_batch_size"] >= 1 and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"] > 0
    assert m["config"]["max_batch_size"] == 16 and not any(k.startswith("_") for k in m)
    status, headers, text = http(f"{service}/metrics?format=prometheus")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert f'gan_deploy_requests_total{{code="200"}} {m["requests"]["200"] + 0}'.split(" ")[0] in text.decode()
    assert 'gan_deploy_request_latency_seconds{quantile="0.99"}' in text.decode()
    assert json.loads(http(f"{service}/")[2])["max_images_per_request"] == MAX_IMAGES


def test_serve_cli_refuses_bad_options(cli, tiny_onnx):
    r = cli("serve", "--onnx", tiny_onnx, "--backend", "eager")
    assert r.exit_code == 2 and "cannot run a onnx" in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = cli("serve", "--onnx", tiny_onnx, "--port", s.getsockname()[1])
    assert r.exit_code == 2 and "cannot listen" in r.output

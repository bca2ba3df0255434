"""`generate --jpeg-encoder cuda`: the checks (on any machine), the hand-off of encoded files through both kinds of
encoder workers and both file sinks, the run record, and nvJPEG itself where a GPU and torchvision are present."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, make_checkpoint

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.images import encode_batch
from gan_deploy.generate import GenerateInterrupted, pipeline
from gan_deploy.generate.device_jpeg import DeviceJpegEncoder, check_jpeg_encoder
from gan_deploy.generate.pipeline import GenerateOptions, generate
from gan_deploy.generate.sinks import Encoded
from gan_deploy.generate.sinks.base import Task, batch_files


@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory):
    from dataclasses import replace
    return make_checkpoint(tmp_path_factory.mktemp("rgb") / "rgb.safetensors", replace(TINY, channels=3))


@pytest.mark.parametrize("args, message", [
    (dict(fmt="png"), "--format jpg"),
    (dict(sink="array"), "raw pixels"),
    (dict(backend="onnxruntime"), "backend eager or compile"),
    (dict(device="cpu"), "needs a CUDA device"),
    (dict(channels=1), "RGB images only"),
    (dict(encoder="gpu"), "unknown JPEG encoder"),
])
def test_the_checks_name_what_is_wrong(args, message):
    a = dict(encoder="cuda", fmt="jpg", sink="folder", device="cuda:0", backend="eager", channels=3) | args
    with pytest.raises(GanDeployError, match=message):
        check_jpeg_encoder(a["encoder"], a["fmt"], a["sink"], a["device"], a["backend"], a["channels"])
    check_jpeg_encoder("cpu", "png", "array", "cpu", "onnxruntime", 1)  # the CPU encoder: nothing to check


def test_the_cli_refuses_it_on_this_machine_before_writing(cli, rgb_checkpoint, tmp_path):
    r = cli("generate", "-c", rgb_checkpoint, "-n", 4, "--format", "jpg", "--jpeg-encoder", "cuda", "--device", "cpu",
            "--backend", "eager", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "needs a CUDA device" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()
    r = cli("generate", "-c", rgb_checkpoint, "-n", 4, "--jpeg-encoder", "cuda", "--out", tmp_path / "p")
    assert r.exit_code == 2 and "--format jpg" in r.output


def test_batch_files_slices_what_was_encoded():
    blobs = [bytes([k]) * (k + 1) for k in range(6)]
    assert batch_files(Task(0, 10, 6, 12, 15), Encoded(blobs), "jpg") == blobs[2:5]
    pix = np.zeros((6, 4, 4, 3), np.uint8)
    assert batch_files(Task(0, 10, 6, 12, 15), pix, "png") == encode_batch(pix[2:5], "png")


class _HostJpeg:
    """Stands in for nvJPEG: encodes the 'device' pixels with the CPU encoder, so the outputs must be identical."""

    def encode(self, pixels):
        return Encoded(encode_batch(np.asarray(pixels), "jpg"))


class _DevicePixels:
    """A CPU runner that pretends to leave its pixels on a device (what eager does on CUDA)."""

    def __init__(self, runner):
        self._r, self.calls = runner, 0
        self.artifact, self.spec, self.options, self.name, self.device = runner.artifact, runner.spec, runner.options, "eager", "cuda:0"

    def __getattr__(self, name):
        return getattr(self._r, name)

    def infer_pixels_device(self, z):
        self.calls += 1
        return self._r.infer_pixels(z)


@pytest.mark.parametrize("sink, kind", [("folder", "thread"), ("folder", "process"), ("tar", "thread"), ("tar", "process")])
def test_encoded_files_reach_the_sink_unchanged(rgb_checkpoint, tmp_path, monkeypatch, sink, kind):
    art = load_artifact(rgb_checkpoint)
    ref = tmp_path / "cpu"
    o = dict(n=23, batch_size=5, fmt="jpg", sink=sink, progress=False, writer_kind=kind, writers=2,
             sink_options={"shard_size": 10} if sink == "tar" else {})
    generate(make_runner("eager", art, "cpu"), GenerateOptions(out=ref, **o))
    monkeypatch.setattr(pipeline, "DeviceJpegEncoder", _HostJpeg)
    runner = _DevicePixels(make_runner("eager", art, "cpu"))
    rep = generate(runner, GenerateOptions(out=tmp_path / "gpu", jpeg_encoder="cuda", **o))
    assert runner.calls == 5 and rep.n_written == 23
    got = {p.name: p.read_bytes() for p in (tmp_path / "gpu").iterdir() if p.suffix in (".jpg", ".tar")}
    want = {p.name: p.read_bytes() for p in ref.iterdir() if p.suffix in (".jpg", ".tar")}
    assert got == want and len(got) == (23 if sink == "folder" else 3)
    import json
    assert json.loads((tmp_path / "gpu" / "generate.json").read_text())["jpeg_encoder"] == "cuda"


def test_a_run_resumes_only_with_the_encoder_it_was_made_with(rgb_checkpoint, tmp_path, monkeypatch):
    art = load_artifact(rgb_checkpoint)
    monkeypatch.setattr(pipeline, "DeviceJpegEncoder", _HostJpeg)
    out = tmp_path / "o"

    def stop(b0):
        if b0 >= 10:
            raise KeyboardInterrupt
    with pytest.raises(GenerateInterrupted):
        generate(_DevicePixels(make_runner("eager", art, "cpu")),
                 GenerateOptions(n=30, out=out, batch_size=5, fmt="jpg", progress=False, jpeg_encoder="cuda"), on_batch=stop)
    with pytest.raises(GanDeployError, match="jpeg_encoder: recorded 'cuda', now 'cpu'"):
        generate(_DevicePixels(make_runner("eager", art, "cpu")),
                 GenerateOptions(n=30, out=out, batch_size=5, fmt="jpg", progress=False, resume=True))
    rep = generate(_DevicePixels(make_runner("eager", art, "cpu")),
                   GenerateOptions(n=30, out=out, batch_size=5, fmt="jpg", progress=False, resume=True, jpeg_encoder="cuda"))
    assert rep.n_written + rep.n_resumed == 30


def test_the_ray_executor_refuses_it(rgb_checkpoint, tmp_path):
    from gan_deploy.generate.ray_executor import generate_ray
    with pytest.raises(GanDeployError, match="--executor ray"):
        generate_ray(load_artifact(rgb_checkpoint), GenerateOptions(n=4, out=tmp_path / "o", fmt="jpg", jpeg_encoder="cuda"))


def test_a_backend_without_device_pixels_says_so(rgb_checkpoint):
    for name in ("onnxruntime", "eager"):  # eager on the CPU has no device pixels either
        with pytest.raises(GanDeployError, match="cannot leave pixels on the GPU"):
            make_runner(name, load_artifact(rgb_checkpoint), "cpu").infer_pixels_device(np.zeros((1, 8), np.float32))


def test_without_torchvision_the_message_says_how_to_get_it(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_torchvision(name, *a, **k):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(GanDeployError, match="needs torchvision.*pip install torchvision"):
        DeviceJpegEncoder()


def test_a_missing_torchvision_is_found_before_anything_is_written(rgb_checkpoint, tmp_path, monkeypatch):
    def missing():
        raise GanDeployError("--jpeg-encoder cuda needs torchvision", "No module named 'torchvision'")
    monkeypatch.setattr(pipeline, "DeviceJpegEncoder", missing)
    with pytest.raises(GanDeployError, match="needs torchvision"):
        generate(_DevicePixels(make_runner("eager", load_artifact(rgb_checkpoint), "cpu")),
                 GenerateOptions(n=4, out=tmp_path / "o", fmt="jpg", progress=False, jpeg_encoder="cuda"))
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
def test_nvjpeg_files_decode_close_to_the_pixels(rgb_checkpoint):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("torchvision")
    from gan_deploy.core.images import decode_bytes
    runner = make_runner("eager", load_artifact(rgb_checkpoint), "cuda").activate()
    z = np.random.default_rng(0).standard_normal((16, 8), dtype=np.float32)
    pix = runner.infer_pixels_device(z)
    assert pix.is_cuda and pix.dtype == torch.uint8 and tuple(pix.shape) == (16, 16, 16, 3)
    files = DeviceJpegEncoder().encode(pix).blobs
    host = runner.infer_pixels(z)
    for k, f in enumerate(files):
        assert f[:2] == b"\xff\xd8"
        assert np.abs(decode_bytes(f, "jpg").astype(int) - host[k]).mean() < 8  # quality 95

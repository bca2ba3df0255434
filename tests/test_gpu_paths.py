"""The GPU inference path's logic, checked on any machine: the on-device uint8 conversion is bit-identical to the
host one, CUDA-graph bookkeeping, `auto` per device, precision plumbing. Tests marked gpu run it on CUDA."""
import numpy as np
import pytest
import torch

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import choose_backend, make_runner
from gan_deploy.backends.torch_common import TORCH_PRECISIONS, GraphCache, pixels_on_device, tf32
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.images import to_uint8
from gan_deploy.core.latents import latents_range

CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_device_conversion_is_bit_identical_to_the_host_one(value_range):
    lo, hi = value_range
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 3, 9, 7, generator=g) * 1.4 - 0.2) * (hi - lo) + lo  # beyond the range on both sides
    # every rounding boundary k + 0.5 of the 0..255 grid, exactly representable where float32 allows
    edges = torch.tensor([(k + 0.5) / 255.0 * (hi - lo) + lo for k in range(256)], dtype=torch.float32)
    x.view(-1)[: edges.numel()] = edges
    x.view(-1)[300:303] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        got = pixels_on_device(t, value_range).numpy()
        assert got.dtype == np.uint8 and got.shape == (64, 9, 7, 3)
        assert np.array_equal(got, to_uint8(x.numpy(), value_range))


def test_graph_cache_captures_once_per_batch_and_evicts_the_least_recent():
    made = []
    cache = GraphCache(lambda b: made.append(b) or f"graph{b}", max_graphs=2)
    assert cache.get(4) == "graph4" and cache.get(4) == "graph4" and made == [4]
    cache.get(8)
    cache.get(4)  # 4 is now the most recent
    cache.get(16)  # evicts 8
    assert 8 not in cache and 4 in cache and 16 in cache and len(cache) == 2 and cache.captures == 3
    cache.get(8)
    assert made == [4, 8, 16, 8]


def test_tf32_switch_restores_the_flags():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32(False):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        with tf32(True):
            assert torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_auto_on_a_gpu_never_picks_the_cpu_runtime_when_a_cuda_path_exists(monkeypatch, tiny_checkpoint, tiny_onnx):
    import gan_deploy.backends.base as base

    ck, onnx = load_artifact(tiny_checkpoint), load_artifact(onnx=tiny_onnx)
    assert choose_backend(ck, "cpu")[0] == "onnxruntime"
    monkeypatch.setattr(base, "resolve_device", lambda d: "cuda")
    name, why = choose_backend(ck, "auto")
    # this machine's onnxruntime is the CPU build: a checkpoint runs on the GPU with PyTorch, and the message says why
    assert name == "eager" and "auto on cuda: eager" in why and "onnxruntime (no CUDA provider" in why
    name, why = choose_backend(onnx, "auto")  # an ONNX file without torch weights: the CPU runtime, said out loud
    assert name == "onnxruntime" and "no CUDA path" in why and "export --factory" in why


def test_precision_applies_to_torch_backends_only(tiny_checkpoint):
    art = load_artifact(tiny_checkpoint)
    with pytest.raises(GanDeployError, match="precision fp16 applies to the PyTorch backends only"):
        make_runner("onnxruntime", art, "cpu", precision="fp16")
    with pytest.raises(GanDeployError, match="unknown precision"):
        make_runner("eager", art, "cpu", precision="int4").activate()


@pytest.mark.parametrize("precision", TORCH_PRECISIONS)
def test_eager_precisions_on_cpu(tiny_checkpoint, precision):
    art = load_artifact(tiny_checkpoint)
    z = latents_range(1, 0, 5, art.spec.latent_dim)
    ref = make_runner("eager", art, "cpu").infer(z)
    r = make_runner("eager", art, "cpu", precision=precision)
    if precision == "fp16" and not _cpu_has_fp16_conv():
        pytest.skip("this torch build has no FP16 transposed convolution on the CPU")
    y = r.infer(z)
    assert y.dtype == np.float32 and np.abs(y - ref).max() <= r.tolerance
    if precision in ("fp32", "tf32"):  # TF32 only exists on GPUs: on the CPU both are IEEE FP32
        assert np.array_equal(y, ref)
    assert np.array_equal(r.infer_pixels(z), to_uint8(y, art.spec.value_range))


def _cpu_has_fp16_conv() -> bool:
    try:
        torch.nn.functional.conv_transpose2d(torch.zeros(1, 2, 2, 2, dtype=torch.float16), torch.zeros(2, 1, 2, 2, dtype=torch.float16))
        return True
    except RuntimeError:
        return False


# -- on a GPU ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", TORCH_PRECISIONS)
@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_cuda_graphs_equal_plain_calls_and_pixels_match(tiny_checkpoint, backend, precision):
    art = load_artifact(tiny_checkpoint)
    z = latents_range(2, 0, 7, art.spec.latent_dim)
    with_graphs = make_runner(backend, art, "cuda", precision=precision)
    plain = make_runner(backend, art, "cuda", precision=precision, cuda_graphs=False)
    a, b = with_graphs.infer(z), plain.infer(z)
    assert np.abs(a - b).max() <= 1e-3  # the same kernels; compile may fuse differently under capture
    px = with_graphs.infer_pixels(z)
    assert np.array_equal(px, to_uint8(a, art.spec.value_range))  # on-device conversion == host conversion
    assert np.array_equal(with_graphs.infer(z[:3]), with_graphs.infer(z[:3]))  # a second graph, replayed twice
    ref = make_runner("eager", art, "cpu").infer(z)  # strict FP32 on the CPU
    assert np.abs(a - ref).max() <= with_graphs.tolerance


@pytest.mark.gpu
@needs_gpu
def test_strict_fp32_on_cuda_matches_the_cpu_closely(tiny_checkpoint):
    art = load_artifact(tiny_checkpoint)
    z = latents_range(3, 0, 64, art.spec.latent_dim)
    cpu = make_runner("eager", art, "cpu").infer(z)
    strict = make_runner("eager", art, "cuda", precision="fp32").infer(z)
    assert np.abs(strict - cpu).max() < 1e-4  # TF32 (10-bit mantissa) would be ~1e-3


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16", "tf32"])
def test_reduced_torch_precision_passes_the_gate(tiny_checkpoint, precision):
    from gan_deploy.precision.gate import run_gate, thresholds_for

    art = load_artifact(tiny_checkpoint)
    cand = make_runner("eager", art, "cuda", precision=precision)
    ref = make_runner("eager", art, "cpu")
    t = thresholds_for("fp16" if precision != "bf16" else "int8")
    assert run_gate(cand, ref, t, precision, 256).accepted


@pytest.mark.gpu
@needs_gpu
def test_bench_on_cuda_has_a_row_per_precision_against_strict_fp32(cli, tiny_checkpoint, tmp_path):
    import json

    r = cli("bench", "-c", tiny_checkpoint, "--device", "cuda", "--backends", "eager", "--batch-sizes", "1,64",
            "--iters", 5, "--warmup", 2, "--min-time", 0, "--gate-samples", 64, "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "b.json").read_text())
    labels = {(row["backend"], row["batch_size"]) for row in rep["rows"]}
    assert labels == {(n, b) for n in ("eager", "eager:tf32", "eager:fp16", "eager:bf16") for b in (1, 64)}
    strict = [row for row in rep["rows"] if row["backend"] == "eager"]
    assert all(row["max_abs_err"] == 0 for row in strict)  # the reference itself
    assert all(g["verdict"] == "pass" for g in rep["gate"].values()), rep["gate"]
    assert "TFLOP/s" in r.output and "CUDA graphs" in r.output


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", TORCH_PRECISIONS)
def test_generate_on_cuda_writes_what_the_runner_computes(cli, tiny_checkpoint, tmp_path, precision):
    from gan_deploy.core.images import decode

    r = cli("generate", "-c", tiny_checkpoint, "--device", "cuda", "--backend", "eager", "--precision", precision,
            "-n", 10, "-b", 4, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    art = load_artifact(tiny_checkpoint)
    runner = make_runner("eager", art, "cuda", precision=precision)
    want = np.concatenate([runner.infer_pixels(latents_range(0, s, min(4, 10 - s), art.spec.latent_dim)) for s in range(0, 10, 4)])
    got = np.stack([decode(tmp_path / "o" / f"{i:06d}.png") for i in range(10)])
    assert np.array_equal(got, want)

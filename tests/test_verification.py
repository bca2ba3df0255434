"""The checks that make gan-deploy a *verified* deployment tool, each fed a real near-miss, so that weakening the
check itself fails a test (issue 17, item 6; `benchmarks/mutation.py` measures how many weakenings these catch):

* export: onnxruntime vs eager is compared by the worst pixel, at every batch size, at the stated tolerance;
* the quality gate holds FP16 candidates to the FP16 thresholds, not the looser INT8 ones;
* `generate --resume` refuses another model, value range, backend or precision than the interrupted run's;
* `auto` never hands an artifact to a backend that does not accept its kind, on either device;
* calibration ranges stay inside the observed min/max, and calibration never sees the gate's latents.
"""
from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from gan_deploy import GanDeployError, GenerateOptions, generate_images, load_artifact
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.backends import choose_backend, make_runner, runner_class
from gan_deploy.core.errors import BackendUnavailable
from gan_deploy.export.onnx import DEFAULT_TOLERANCE, onnx_from_module
from gan_deploy.precision.gate import check_artifact, gate_latents, thresholds_for

# --------------------------------------------------------------------------------------------------------------
# export: the check that an ONNX file computes what eager PyTorch computes


class OffAtOneBatchSize(torch.nn.Module):
    """A generator whose eager output differs from its exported graph by `delta` in one pixel of image `image`,
    at batch size `batch` only: the exporter traces at batch 2, so the ONNX never takes the branch (like an
    op the exporter translates wrongly for some shapes). Everywhere else ONNX and eager differ by rounding."""

    def __init__(self, batch: int, image: int, delta: float):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 64)
        self.batch, self.image, self.delta = batch, image, delta

    def forward(self, z):  # [N, 4] -> [N, 1, 8, 8]
        x = torch.tanh(self.fc(z)).reshape(-1, 1, 8, 8)
        if not torch.onnx.is_in_onnx_export() and z.shape[0] == self.batch:
            x = x.clone()
            x[self.image, 0, 5, 3] += self.delta
        return x


SPEC = GeneratorSpec(4, 1, 8, 8)
BATCHES = (1, 7, 64)  # the export check's batch sizes


@pytest.mark.parametrize("batch,image", [(1, 0), (7, 4), (64, 63)])
def test_export_refuses_a_mismatch_just_above_the_tolerance_in_one_image_of_one_batch_size(tmp_path, batch, image):
    """1.3x the default tolerance in a single pixel of a single image, at one batch size: refused, nothing written.
    (A mean instead of a max dilutes it below the tolerance; checking only the first batch size misses it at 7 and
    64; a tolerance ten times looser lets it through.)"""
    out = tmp_path / "g.onnx"
    with pytest.raises(GanDeployError, match="onnxruntime disagrees with eager PyTorch: max abs err 0.00013") as e:
        onnx_from_module(OffAtOneBatchSize(batch, image, 1.3 * DEFAULT_TOLERANCE), SPEC, out, {}, batch_sizes=BATCHES)
    assert f"<= {DEFAULT_TOLERANCE:g}" in str(e.value)
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("batch,image", [(1, 0), (7, 4), (64, 63)])
def test_export_accepts_a_mismatch_just_below_the_tolerance(tmp_path, batch, image):
    out = tmp_path / "g.onnx"
    rep = onnx_from_module(OffAtOneBatchSize(batch, image, 0.7 * DEFAULT_TOLERANCE), SPEC, out, {}, batch_sizes=BATCHES)
    assert out.exists() and rep.batch_sizes == BATCHES and rep.tolerance == DEFAULT_TOLERANCE
    # the worst pixel is reported, not an average: the one shifted pixel plus rounding
    assert 0.69 * DEFAULT_TOLERANCE < rep.max_abs_err < 0.71 * DEFAULT_TOLERANCE


def test_export_default_tolerance_is_the_documented_one():
    # the README and the ONNX metadata say 1e-4; a looser default would let real export bugs through
    assert DEFAULT_TOLERANCE == 1e-4


# --------------------------------------------------------------------------------------------------------------
# the quality gate: FP16 candidates are held to FP16's thresholds


def _reference(n: int = 64, seed: int = 0) -> np.ndarray:
    """Images in (-0.9, 0.9): none near the rails (so saturation is only what a candidate adds)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.9, 0.9, (n, 1, 16, 16)).astype(np.float32)


def _noisy(ref: np.ndarray, sigma: np.ndarray, seed: int = 1) -> np.ndarray:
    """ref + Gaussian noise of standard deviation sigma[i] in image i (PSNR of image i ~ 20 log10(2 / sigma[i]))."""
    rng = np.random.default_rng(seed)
    return (ref + rng.normal(0, 1, ref.shape) * sigma[:, None, None, None]).astype(np.float32)


def _int8_like(ref: np.ndarray) -> np.ndarray:
    """The per-image damage of an INT8 model: ~38 dB median (between INT8's 30 and FP16's 45)."""
    return _noisy(ref, np.full(len(ref), 0.025))


def _one_bad_image(ref: np.ndarray) -> np.ndarray:
    """FP16-like everywhere (~60 dB) except one image at ~26 dB (between INT8's worst 20 and FP16's 30)."""
    sigma = np.full(len(ref), 0.002)
    sigma[17] = 0.1
    return _noisy(ref, sigma)


def _pushed_to_the_rail(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0.75% of the pixels moved from just inside the top edge to just across it (a layer starting to saturate),
    each by 0.01: saturation +0.0075 (between FP16's 0.005 and INT8's 0.01) while PSNR stays high."""
    ref = ref.copy()
    flat = ref.reshape(-1)
    idx = np.random.default_rng(2).choice(flat.size, int(0.0075 * flat.size), replace=False)
    flat[idx] = 0.985  # not saturated: the edge is 1 - 0.005 * span = 0.99
    cand = ref.copy()
    cand.reshape(-1)[idx] = 0.995
    return cand, ref


def _no_fd(precision: str):
    return dataclasses.replace(thresholds_for(precision), max_fd_ratio=None)  # PSNR and saturation checks only


@pytest.mark.parametrize("case,failing", [("int8_like", "psnr_median_db"), ("one_bad_image", "psnr_worst_db"),
                                          ("pushed_to_the_rail", "saturation_increase")])
def test_a_candidate_int8_accepts_is_rejected_as_fp16(case, failing):
    ref = _reference()
    if case == "pushed_to_the_rail":
        cand, ref = _pushed_to_the_rail(ref)
    else:
        cand = {"int8_like": _int8_like, "one_bad_image": _one_bad_image}[case](ref)
    as_int8 = check_artifact(cand, ref, _no_fd("int8"), "int8")
    assert as_int8.accepted, as_int8.summary()
    as_fp16 = check_artifact(cand, ref, _no_fd("fp16"), "fp16")
    assert as_fp16.failed == [failing], as_fp16.summary()
    # a TensorRT FP32 engine (TF32 inside) is held to the same bar as FP16
    assert check_artifact(cand, ref, _no_fd("fp32"), "fp32").failed == [failing]


def test_the_real_int8_model_is_accepted_as_int8_and_rejected_as_fp16(tiny_checkpoint, tmp_path, cli):
    """The INT8 model `quantize` writes for the tiny generator is good INT8 and far from FP16 quality."""
    out = tmp_path / "q.int8.onnx"
    r = cli("quantize", "--int8", "-c", tiny_checkpoint, "-o", out, "--calib-samples", 64, "--gate-samples", 64, "--no-mixed")
    assert r.exit_code == 0, r.output
    parent = load_artifact(tiny_checkpoint)
    z = gate_latents(64, parent.spec.latent_dim)
    ref = make_runner("eager", parent, "cpu").infer(z)
    int8 = make_runner("onnxruntime", load_artifact(onnx=out), "cpu").infer(z)
    assert check_artifact(int8, ref, _no_fd("int8"), "int8").accepted
    rep = check_artifact(int8, ref, _no_fd("fp16"), "fp16")
    assert not rep.accepted and "psnr_median_db" in rep.failed, rep.summary()


def _gate_sets(n: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FP32-like reference images, a candidate with INT8-like per-image noise, and FP32 images of fresh latents."""
    ref = _reference(n)
    return ref, _noisy(ref, np.linspace(0.01, 0.04, n).astype(np.float32)), _reference(n, seed=5)


def test_gate_limits_are_inclusive_and_each_check_reports_its_figure():
    """Thresholds set exactly at the measured figures pass; one step beyond fails, each check on its own. Each check
    reports the figure it compared (the saturation one the increase over the reference), and the report keeps the
    precision and the quality score."""
    ref, cand, noise = _gate_sets()
    ref, cand = ref.copy(), cand.copy()
    ref.reshape(-1)[::131] = cand.reshape(-1)[::131] = -1.0  # background both have: the reference's rate is not 0
    cand.reshape(-1)[::97] = 1.0  # and some the candidate adds
    fig = check_artifact(cand, ref, thresholds_for("fp16", max_fd_ratio=1e9), "fp16", noise_reference=noise).figures
    inc = fig["saturated_rate"] - fig["reference_saturated_rate"]
    assert inc > 0 and fig["reference_saturated_rate"] > 0 and fig["fd_ratio"] > 0
    at = dataclasses.replace(thresholds_for("fp16"), max_saturation_increase=inc, min_psnr_worst=fig["psnr_worst_db"],
                             min_psnr_median=fig["psnr_median_db"], max_fd_ratio=fig["fd_ratio"])
    rep = check_artifact(cand, ref, at, "fp16", noise_reference=noise)
    assert rep.accepted, rep.summary()
    assert rep.precision == "fp16" and rep.n_images == 64 and rep.quality is not None and rep.quality["fd"] == fig["fd"]
    values = {c.name: c.value for c in rep.checks}
    assert values == {"nonfinite": 0, "saturation_increase": inc, "psnr_worst_db": fig["psnr_worst_db"],
                      "psnr_median_db": fig["psnr_median_db"], "fd_ratio": fig["fd_ratio"]}
    assert [c.note for c in rep.checks][:4] == ["", "", "", ""]
    assert rep.checks[4].note == f"FD {fig['fd']:.3g} vs noise floor {fig['fd_noise']:.3g}"
    assert fig["psnr_worst_db"] < fig["psnr_mean_db"] < 200 and fig["psnr_mean_db"] != fig["psnr_median_db"]
    beyond = {"max_saturation_increase": np.nextafter(inc, -1), "min_psnr_worst": np.nextafter(fig["psnr_worst_db"], 1e9),
              "min_psnr_median": np.nextafter(fig["psnr_median_db"], 1e9), "max_fd_ratio": np.nextafter(fig["fd_ratio"], -1)}
    names = {"max_saturation_increase": "saturation_increase", "min_psnr_worst": "psnr_worst_db",
             "min_psnr_median": "psnr_median_db", "max_fd_ratio": "fd_ratio"}
    for field, value in beyond.items():
        rep = check_artifact(cand, ref, dataclasses.replace(at, **{field: value}), "fp16", noise_reference=noise)
        assert rep.failed == [names[field]], (field, rep.summary())


def test_gate_saturation_counts_pixels_exactly_at_the_edges():
    """A pixel exactly at lo + edge or hi - edge is saturated (float64 images, so the edge is exact)."""
    from gan_deploy.precision.gate import SATURATION_EDGE, image_figures

    for lo, hi in ((-1.0, 1.0), (0.0, 1.0)):
        edge = SATURATION_EDGE * (hi - lo)
        ref = np.full((4, 1, 4, 4), (lo + hi) / 2)
        cand = ref.copy()
        cand[0, 0, 0, 0] = lo + edge
        cand[1, 0, 0, 0] = hi - edge
        cand[2, 0, 0, 0] = hi
        fig = image_figures(cand, ref, (lo, hi))
        assert fig["saturated_rate"] == 3 / 64 and fig["reference_saturated_rate"] == 0.0
        assert fig["n_images"] == 4


def test_gate_nan_figures_and_notes():
    ref, cand, noise = _gate_sets()
    cand = cand.copy()
    cand[3, 0, 1, 1] = np.nan
    cand[9, 0, 2, 2] = np.inf
    rep = check_artifact(cand, ref, thresholds_for("int8"), "int8", noise_reference=noise)
    nonfinite = rep.checks[0]
    assert nonfinite.name == "nonfinite" and nonfinite.value == 2 and not nonfinite.passed and nonfinite.note == "in 2 images"
    fd = next(c for c in rep.checks if c.name == "fd_ratio")
    assert fd.value is None and not fd.passed and fd.note == "not computed: images contain NaN/Inf"
    allnan = np.full_like(ref, np.nan)
    fig = check_artifact(allnan, ref, _no_fd("int8"), "int8").figures
    assert fig["psnr_mean_db"] == float("-inf") and fig["psnr_worst_db"] == float("-inf") and fig["nonfinite_images"] == 64


def test_gate_without_the_quality_score_does_not_compute_it():
    ref, cand, _ = _gate_sets()
    rep = check_artifact(cand, ref, _no_fd("int8"), "int8")
    assert rep.quality is None and rep.figures["fd"] is None and [c.name for c in rep.checks][-1] == "psnr_median_db"


def test_gate_latents_are_the_gate_seeds_from_index_0():
    from gan_deploy.core.latents import latents_range
    from gan_deploy.precision.gate import GATE_SEED

    assert np.array_equal(gate_latents(5, 8), latents_range(GATE_SEED, 0, 5, 8))
    assert np.array_equal(gate_latents(5, 8, start=5), latents_range(GATE_SEED, 5, 5, 8))


def test_run_gate_needs_32_images_for_the_quality_score_only(tiny_checkpoint):
    from gan_deploy.precision.gate import run_gate

    art = load_artifact(tiny_checkpoint)
    eager, ort = make_runner("eager", art, "cpu"), make_runner("onnxruntime", art, "cpu")
    with pytest.raises(GanDeployError) as e:
        run_gate(ort, eager, thresholds_for("int8"), "int8", n=31)
    assert str(e.value) == ("too few gate images for the quality score: 31; expected at least 32. "
                            "Note: raise --gate-samples or pass --max-fd-ratio none")
    rep = run_gate(ort, eager, thresholds_for("int8"), "int8", n=32)
    assert rep.accepted and rep.n_images == 32 and rep.precision == "int8" and rep.figures["fd_ratio"] is not None
    rep = run_gate(ort, eager, _no_fd("fp32"), "fp32", n=8, batch_size=3)  # no FD: any n, batches of 3
    assert rep.accepted and rep.n_images == 8 and rep.precision == "fp32"


def test_gate_bad_inputs_are_one_clear_line():
    ref, cand, _ = _gate_sets()

    class NoSpec:
        def infer(self, z):
            return z

    cases = [
        (lambda: check_artifact(NoSpec(), ref, _no_fd("int8")), "bad gate candidate: NoSpec; expected images [N, C, H, W] or a runner"),
        (lambda: check_artifact(cand[:10], ref, _no_fd("int8")),
         "candidate and reference images differ in shape: (10, 1, 16, 16) vs (64, 1, 16, 16); expected the same latents through both"),
        (lambda: check_artifact(cand, ref, thresholds_for("int8")),
         "the FD check needs FP32 images of fresh latents; expected noise_reference [N, C, H, W]. "
         "Note: pass max_fd_ratio=None to skip the quality-score check"),
        (lambda: check_artifact(cand, ref[:, 0], _no_fd("int8")),
         "bad reference images: ndarray float32 (64, 16, 16); expected a float array [N, C, H, W]"),
        (lambda: check_artifact(cand.astype(np.uint8), ref, _no_fd("int8")),
         "bad candidate images: ndarray uint8 (64, 1, 16, 16); expected a float array [N, C, H, W]"),
        (lambda: thresholds_for("int4"), "unknown precision: 'int4'; expected one of int8, fp16, fp32"),
    ]
    for call, message in cases:
        with pytest.raises(GanDeployError) as e:
            call()
        assert str(e.value) == message


# --------------------------------------------------------------------------------------------------------------
# generate --resume: the interrupted run's model, value range, backend and precision, or nothing


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _interrupted(out: Path, keep: int) -> None:
    """What a run stopped after `keep` images leaves: the manifest lists only those, the later files are gone."""
    manifest = out / "manifest.csv"
    rows = list(csv.reader(manifest.open(newline="")))
    header, body = rows[0], rows[1:]
    with manifest.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *body[:keep]])
    for row in body[keep:]:
        (out / row[header.index("file")]).unlink()


def _one_line_refusal(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def partial_run(tiny_checkpoint, tmp_path, cli):
    """A finished reference run and the same run cut short after 8 of 12 images (onnxruntime, fp32, batch 4)."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    for o in (ref, out):
        r = cli("generate", "-c", tiny_checkpoint, "-n", 12, "-b", 4, "--seed", 3, "--backend", "onnxruntime", "--out", o)
        assert r.exit_code == 0, r.output
    _interrupted(out, 8)
    return ref, out


def test_resume_with_another_model_is_refused(partial_run, tmp_path, cli):
    from conftest import make_checkpoint

    ref, out = partial_run
    other = make_checkpoint(tmp_path / "other.safetensors", seed=1)  # same architecture and shapes, other weights
    before = _files(out)
    r = cli("generate", "-c", other, "--out", out, "--resume")
    _one_line_refusal(r, "another model")
    assert _files(out) == before
    r = cli("generate", "--out", out, "--resume")  # the interrupted run's own model: finishes it, byte for byte
    assert r.exit_code == 0, r.output
    assert _files(out).keys() == _files(ref).keys()
    assert {k: v for k, v in _files(out).items() if k.endswith(".png")} == {k: v for k, v in _files(ref).items() if k.endswith(".png")}


@pytest.mark.parametrize("option,value,recorded", [("--backend", "eager", "onnxruntime"), ("--precision", "bf16", "fp32")])
def test_resume_with_another_backend_or_precision_is_refused(partial_run, cli, option, value, recorded):
    _, out = partial_run
    before = _files(out)
    r = cli("generate", "--out", out, "--resume", option, value)
    _one_line_refusal(r, "differs from the interrupted run's", value, recorded)
    assert _files(out) == before


@pytest.mark.parametrize("backend,precision", [("onnxruntime", "fp32"), ("eager", "fp32")])
def test_resume_through_the_api_checks_backend_and_precision_itself(tiny_checkpoint, tmp_path, backend, precision):
    """The Python API has no command line to catch a changed setting: the run compares its record itself.
    An onnxruntime run resumed with eager, and an eager fp32 run resumed in bf16, are refused."""
    out = tmp_path / "out"
    art = load_artifact(tiny_checkpoint)
    opts = GenerateOptions(n=12, out=out, batch_size=4, seed=3, backend=backend, device="cpu", precision=precision, progress=False)
    generate_images(art, opts)
    _interrupted(out, 8)
    before = _files(out)
    key, changed = ("backend", {"backend": "eager"}) if backend == "onnxruntime" else ("precision", {"precision": "bf16"})
    with pytest.raises(GanDeployError, match=f"other settings: {key}: recorded"):
        generate_images(art, dataclasses.replace(opts, resume=True, **changed))
    assert _files(out) == before
    assert generate_images(art, dataclasses.replace(opts, resume=True)).n_written == 4


def _foreign_onnx(tiny_checkpoint: Path, path: Path) -> Path:
    """A foreign ONNX generator (no gan-deploy metadata) whose images are in [0, 1]: its range is whatever
    --value-range says."""
    g = load_artifact(tiny_checkpoint).torch_module().eval()

    class ZeroOne(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = g

        def forward(self, z):
            return (self.g(z) + 1) / 2

    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ZeroOne(), (torch.zeros(2, 8),), buf, input_names=["z"], output_names=["image"],
                          dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}}, opset_version=17, dynamo=False)
    model = onnx.load_model_from_string(buf.getvalue())
    assert not model.metadata_props
    onnx.save(model, str(path))
    return path


def test_resume_with_another_value_range_is_refused(tiny_checkpoint, tmp_path, cli):
    model = _foreign_onnx(tiny_checkpoint, tmp_path / "foreign.onnx")
    out = tmp_path / "out"
    r = cli("generate", "--onnx", model, "--value-range", "0,1", "-n", 12, "-b", 4, "--out", out, "--backend", "onnxruntime")
    assert r.exit_code == 0, r.output
    _interrupted(out, 8)
    before = _files(out)
    r = cli("generate", "--onnx", model, "--value-range", "-1,1", "--out", out, "--resume")  # same file, other range
    _one_line_refusal(r, "other settings", "value_range")
    assert _files(out) == before
    r = cli("generate", "--onnx", model, "--value-range", "0,1", "--out", out, "--resume")
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------------------------------------------
# auto: only backends that accept the artifact's kind, on the CPU and in the CUDA-to-CPU fallback


def _engine(tiny_onnx: Path, d: Path) -> Path:
    """An engine file with the sidecar build-engine writes (describing it needs no TensorRT and no GPU)."""
    import hashlib
    import json

    from gan_deploy.artifacts.engine import RuntimeInfo, make_sidecar
    from gan_deploy.core.fileio import sha256_file

    plan = b"a serialized plan"
    (d / "g.engine").write_bytes(plan)
    art = load_artifact(onnx=tiny_onnx)
    side = make_sidecar(engine_sha256=hashlib.sha256(plan).hexdigest(), precision="fp16",
                        runtime=RuntimeInfo("10.13.0.35", "NVIDIA H100", "9.0"), profile=(1, 64, 256),
                        onnx_sha256=art.sha256, source={"kind": "onnx", "path": str(tiny_onnx), "sha256": sha256_file(tiny_onnx)},
                        spec=art.spec, generator=None, workspace_mib=1024, rebuild="gan-deploy build-engine --fp16")
    (d / "g.json").write_text(json.dumps(side))
    return d / "g.engine"


def _as_gpu_machine(monkeypatch) -> None:
    """This machine as `auto` sees a GPU machine with the CPU build of onnxruntime and no TensorRT (whatever this
    machine really has, so the tests mean the same everywhere)."""
    import gan_deploy.backends.base as base

    monkeypatch.setattr(base, "resolve_device", lambda d: "cuda")
    ort, trt = runner_class("onnxruntime"), runner_class("tensorrt")
    monkeypatch.setattr(ort, "device_reason", classmethod(
        lambda cls, device: "no CUDA provider: this onnxruntime is the CPU build" if device.startswith("cuda") else None))
    monkeypatch.setattr(trt, "unavailable_reason", classmethod(lambda cls: "TensorRT is not installed"))


@pytest.fixture
def on_cuda(monkeypatch):
    _as_gpu_machine(monkeypatch)


def _accepts(name: str, kind: str) -> bool:
    return kind in runner_class(name).accepts


def test_auto_never_gives_an_engine_to_a_backend_that_cannot_run_it(tiny_onnx, tmp_path, monkeypatch):
    engine = load_artifact(engine=_engine(tiny_onnx, tmp_path))
    assert engine.kind == "engine"
    with pytest.raises(BackendUnavailable, match="no backend can run this artifact here"):
        choose_backend(engine, "cpu")
    with pytest.raises(BackendUnavailable, match="no backend can run this artifact here"):
        make_runner("auto", engine, "cpu")
    _as_gpu_machine(monkeypatch)  # a GPU machine without TensorRT: no CPU fallback either
    with pytest.raises(BackendUnavailable, match="no backend can run this artifact here"):
        choose_backend(engine, "auto")


def test_auto_on_the_cpu_with_onnxruntime_missing_does_not_give_an_onnx_file_to_pytorch(tiny_checkpoint, tiny_onnx, monkeypatch):
    ort = runner_class("onnxruntime")
    monkeypatch.setattr(ort, "unavailable_reason", classmethod(lambda cls: "onnxruntime is not installed"))
    assert choose_backend(load_artifact(tiny_checkpoint), "cpu")[0] == "eager"  # a checkpoint: PyTorch runs it
    with pytest.raises(BackendUnavailable, match="no backend can run this artifact here"):
        choose_backend(load_artifact(onnx=tiny_onnx), "cpu")


def test_auto_cuda_to_cpu_fallback_respects_what_each_backend_accepts(tiny_checkpoint, tiny_onnx, on_cuda, monkeypatch):
    onnx_art, ck = load_artifact(onnx=tiny_onnx), load_artifact(tiny_checkpoint)
    name, why = choose_backend(onnx_art, "auto")
    assert name == "onnxruntime" and "no CUDA path" in why and _accepts(name, "onnx")
    ort = runner_class("onnxruntime")
    monkeypatch.setattr(ort, "unavailable_reason", classmethod(lambda cls: "onnxruntime is not installed"))
    with pytest.raises(BackendUnavailable):  # eager is available on the CPU, but runs checkpoints only
        choose_backend(onnx_art, "auto")
    assert choose_backend(ck, "auto")[0] == "eager"


def test_auto_on_cuda_never_gives_a_checkpoint_to_tensorrt(tiny_checkpoint, on_cuda, monkeypatch):
    trt = runner_class("tensorrt")
    monkeypatch.setattr(trt, "unavailable_reason", classmethod(lambda cls: None))  # as if TensorRT were installed
    monkeypatch.setattr(trt, "device_reason", classmethod(lambda cls, device: None))
    name, why = choose_backend(load_artifact(tiny_checkpoint), "auto")
    assert name == "eager" and "tensorrt (runs engine files only)" in why


# --------------------------------------------------------------------------------------------------------------
# calibration: ranges inside what was observed; latents the gate never uses


@pytest.fixture  # per test, not per module: a shared one caches its ranges, so mutmut would credit only the first test
def calibration(tiny_onnx):
    from gan_deploy.precision.calibrate import calibrate

    return calibrate(onnx.load(str(tiny_onnx)), load_artifact(onnx=tiny_onnx).spec, samples=256, seed=7919)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_calibration_ranges_stay_within_the_observed_min_max(calibration, method):
    cal = calibration
    ranges = cal.ranges(method)
    assert set(ranges) == set(cal.lo) and ranges
    for t, (lo, hi) in ranges.items():
        assert cal.lo[t] <= lo <= hi <= cal.hi[t], (method, t, (lo, hi), (cal.lo[t], cal.hi[t]))
    # the ReLU outputs (min 0): a symmetric clip would put half the INT8 grid on values that never occur
    relu = [t for t in ranges if cal.lo[t] == 0.0 and cal.hi[t] > 0]
    assert relu and all(ranges[t][0] == 0.0 for t in relu)
    assert cal.clipped(method) > 0  # the method does narrow some ranges: the check above is not vacuous


def _percentile_range(h: np.ndarray, lo: float, hi: float, percentile: float) -> tuple[float, float]:
    """Written out bin by bin: the lower edge of the first bin where the cumulative share reaches (100 - p) / 200,
    the upper edge of the first bin where it reaches 1 - that, clipped to [lo, hi]."""
    a = max(abs(lo), abs(hi))
    edges = np.linspace(-a, a, len(h) + 1)
    cut, total, run = (100.0 - percentile) / 200.0, h.sum(), 0
    left = right = None
    for k, count in enumerate(h):
        run += count
        if left is None and run / total >= cut:
            left = edges[k]
        if right is None and run / total >= 1.0 - cut:
            right = edges[k + 1]
    return max(lo, float(left)), min(hi, float(right))


def _entropy_range(h: np.ndarray, lo: float, hi: float, levels: int, stride: int = 16) -> tuple[float, float]:
    """TensorRT's entropy calibration written out: |x| histogram; for each candidate threshold bin i (levels,
    levels + stride, ..., and all bins), P = the first i bins with the outliers added to the last, Q = P's bins
    requantized to `levels` levels (a level's count spread evenly over its non-empty bins); the i of least
    KL(P || Q) gives t = a * i / bins; range [max(lo, -t), min(hi, t)]."""
    a = max(abs(lo), abs(hi))
    half = len(h) // 2
    folded = np.array([h[half + k] + h[half - 1 - k] for k in range(half)], dtype=np.float64)
    n = len(folded)
    best_kl, best_i = np.inf, n
    for i in [*range(levels, n, stride), n]:
        p = folded[:i].copy()
        p[-1] += folded[i:].sum()
        q = np.zeros(i)
        for j in range(levels):
            s, e = j * i // levels, (j + 1) * i // levels
            nonempty = folded[s:e] > 0
            if nonempty.any():
                q[s:e][nonempty] = folded[s:e].sum() / nonempty.sum()
        pn, qn = p / p.sum(), q / q.sum()
        kl = sum(pn[k] * np.log(pn[k] / max(qn[k], 1e-12)) for k in range(i) if pn[k] > 0)
        if kl < best_kl:
            best_kl, best_i = kl, i
    t = a * best_i / n
    return max(lo, -t), min(hi, t)


def test_calibration_ranges_are_the_documented_percentile_and_entropy_ranges(calibration):
    """Each tensor's percentile and entropy range equals the one computed from its histogram by the rules above
    (an independent, slow implementation of the module's description)."""
    from gan_deploy.precision.calibrate import ENTROPY_LEVELS, PERCENTILE

    cal = calibration
    checked = 0
    for t in cal.tensors:
        h = cal.hist.get(t)
        if h is None or cal.lo[t] == cal.hi[t]:
            assert cal.ranges("percentile")[t] == cal.ranges("entropy")[t] == (cal.lo[t], cal.hi[t])
            continue
        assert cal.ranges("percentile")[t] == pytest.approx(_percentile_range(h, cal.lo[t], cal.hi[t], PERCENTILE), rel=1e-12), t
        assert cal.ranges("entropy")[t] == pytest.approx(_entropy_range(h, cal.lo[t], cal.hi[t], ENTROPY_LEVELS), rel=1e-12), t
        checked += 1
    assert checked >= 5
    assert cal.ranges("minmax") == {t: (cal.lo[t], cal.hi[t]) for t in cal.tensors}
    with pytest.raises(GanDeployError) as e:
        cal.ranges("kl")
    assert str(e.value) == "unknown calibration method: 'kl'; expected one of minmax, percentile, entropy"


def test_calibration_of_a_constant_tensor_is_that_value():
    """A tensor that is always 0.5 (and one always 0): every method gives exactly [0.5, 0.5] ([0, 0]), never an
    empty or inverted range."""
    from onnx import TensorProto, helper

    from gan_deploy.precision.calibrate import calibrate

    g = helper.make_graph(
        [helper.make_node("Mul", ["z", "zero"], ["zeros"]), helper.make_node("Add", ["zeros", "half"], ["halves"]),
         helper.make_node("Relu", ["z"], ["relu"])],
        "consts", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("halves", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    cal = calibrate(model, GeneratorSpec(8, 1, 1, 8), samples=64, seed=1)
    for method in ("minmax", "percentile", "entropy"):
        r = cal.ranges(method)
        assert r["zeros"] == (0.0, 0.0) and r["halves"] == (0.5, 0.5), (method, r)
        assert r["relu"][0] == 0.0 and 0.0 < r["relu"][1] <= cal.hi["relu"]
        assert r["z"][0] < 0.0 < r["z"][1]


def test_calibration_latents_and_gate_latents_share_no_row(tiny_checkpoint, tmp_path, cli, monkeypatch):
    """Spy on every latent draw `quantize --int8` makes; those made for calibration and those made for the gate
    must not overlap (a calibration that saw the gate's latents could overfit them and pass a bad model)."""
    import gan_deploy.core.latents as latents_mod

    original = latents_mod.latents_range
    drawn: dict[str, list[np.ndarray]] = {"calibration": [], "gate": []}

    def spy(seed, start, n, dim, *a, **kw):
        z = original(seed, start, n, dim, *a, **kw)
        caller = sys._getframe(1).f_globals.get("__name__", "")
        for role, part in (("calibration", "calib"), ("gate", "gate")):
            if part in caller.rsplit(".", 1)[-1]:
                drawn[role].append(np.asarray(z).reshape(n, -1))
        return z

    monkeypatch.setattr(latents_mod, "latents_range", spy)
    for mod in list(sys.modules.values()):  # modules that imported the name before
        if getattr(mod, "__name__", "").startswith("gan_deploy.") and getattr(mod, "latents_range", None) is original:
            monkeypatch.setattr(mod, "latents_range", spy)
    r = cli("quantize", "--int8", "-c", tiny_checkpoint, "-o", tmp_path / "q.onnx", "--calib-samples", 64,
            "--gate-samples", 64, "--no-mixed")
    assert r.exit_code == 0, r.output
    assert drawn["calibration"] and drawn["gate"], "no latents seen: did calibrate.py or gate.py move?"
    calib = {row.tobytes() for z in drawn["calibration"] for row in z}
    gate = {row.tobytes() for z in drawn["gate"] for row in z}
    assert len(calib) >= 64 and len(gate) >= 64
    assert not calib & gate
    # and the gate's latents are the documented ones
    assert {row.tobytes() for row in gate_latents(64, 8)} <= gate

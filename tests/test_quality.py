"""The quality score: deterministic, near zero for real-vs-real, far from it for noise and untrained generators,
mode collapse visible in recall, every bad input a one-line GanDeployError, and the `eval` command end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import sha256_file
from gan_deploy.core.latents import latents_range
from gan_deploy.nets.config import GeneratorConfig
from gan_deploy.nets.networks import build_generator, init_weights
from gan_deploy.quality import classifier_training as qt
from gan_deploy.quality import distances as qd
from gan_deploy.quality import evaluate as qe
from gan_deploy.quality import features as qf


@pytest.fixture(scope="module")
def digits():
    return qe._digits_arrays()  # images [1797, 1, 32, 32] in [-1, 1], labels


@pytest.fixture(scope="module")
def digit_features(digits):
    return qf.features(digits[0])


def _untrained_images(n: int) -> np.ndarray:
    torch.manual_seed(0)
    g = build_generator(GeneratorConfig(latent_dim=16, width=8))
    g.apply(init_weights)
    with torch.inference_mode():
        return g.eval()(torch.from_numpy(latents_range(0, 0, n, 16))).numpy()


# -- the score's behaviour --------------------------------------------------------------------------------


def test_identical_images_score_zero_and_the_same_twice(digits):
    x = digits[0][:400]
    s1 = qd.quality_between(x, x.copy(), bootstrap=5)
    s2 = qd.quality_between(x.copy(), x, bootstrap=5)
    assert s1.fd < 1e-6 and s1.precision == 1.0 and s1.recall == 1.0
    assert s1.to_dict() == s2.to_dict()  # bit-identical, bootstrap spread included
    other = qd.quality_between(x, digits[0][400:800], bootstrap=5)
    again = qd.quality_between(x, digits[0][400:800], bootstrap=5)
    assert other.to_dict() == again.to_dict() and other.fd > 1.0
    assert qd.quality_between(x, digits[0][400:800], bootstrap=5, seed=1).fd == other.fd  # the seed moves only the spread


def test_real_halves_score_far_below_noise_and_untrained_generator(digits, digit_features):
    a, b = qd.split_halves(np.arange(len(digit_features)), seed=0)
    assert not set(a) & set(b) and len(a) + len(b) == len(digit_features)
    halves = qd.score_features(digit_features[a], digit_features[b])
    noise = np.random.default_rng(0).uniform(-1, 1, (900, 1, 32, 32)).astype(np.float32)
    vs_noise = qd.score_features(qf.features(noise), digit_features[b])
    vs_untrained = qd.score_features(qf.features(_untrained_images(900)), digit_features[b])
    assert halves.precision > 0.85 and halves.recall > 0.85
    assert vs_noise.precision < 0.05 and vs_untrained.precision < 0.05
    assert halves.fd < 0.02 * vs_noise.fd and halves.fd < 0.02 * vs_untrained.fd
    # the spread tells noise from a real difference: untrained is many spreads above real-vs-real
    assert vs_untrained.fd - halves.fd > 20 * (halves.fd_spread + vs_untrained.fd_spread)


def test_mode_collapse_lowers_recall_not_precision(digits, digit_features):
    images, labels = digits
    one_class = digit_features[labels == 3]  # 183 different images, all of one digit
    rest = np.flatnonzero(labels != 3)
    rng = np.random.default_rng(0)
    varied = digit_features[rng.choice(len(digit_features), len(one_class), replace=False)]
    collapsed = qd.score_features(one_class, digit_features)
    healthy = qd.score_features(varied, digit_features)
    assert collapsed.precision > 0.9 and healthy.precision > 0.9
    assert collapsed.recall < 0.3 and healthy.recall > 0.7
    assert collapsed.fd > 10 * healthy.fd
    assert len(rest) == len(labels) - len(one_class)


def test_value_range_rgb_and_size_are_normalised(digits):
    x = digits[0][:200]
    f = qf.features(x)
    np.testing.assert_allclose(qf.features((x + 1) / 2, value_range=(0.0, 1.0)), f, atol=1e-4)
    np.testing.assert_allclose(qf.features(np.repeat(x, 3, axis=1)), f, atol=1e-3)  # gray RGB -> the same gray
    big = torch.nn.functional.interpolate(torch.from_numpy(x), size=(64, 64), mode="bilinear").numpy()
    s = qd.quality_between(big, x, bootstrap=0)
    assert s.fd < 5.0 and s.precision > 0.9  # 64x64 images are shrunk back to the classifier's 32x32
    assert np.isnan(s.fd_spread) and s.to_dict()["fd_spread"] is None


def test_frechet_distance_matches_the_closed_form():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    fd = qd.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert fd == pytest.approx(4.0 + 1.0, rel=1e-12)
    # general covariances: against scipy's sqrtm of the non-symmetric product
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 3))  # the second is rank-deficient
    s1, s2 = a @ a.T, b @ b.T
    m1, m2 = rng.standard_normal(6), rng.standard_normal(6)
    ref = float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm(s1 @ s2).real))
    assert qd.frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-6)


def test_paired_bootstrap_is_tighter_for_same_latent_sets(digits):
    x = digits[0][:600]
    y = np.clip(x + 0.05 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32), -1, 1)
    paired = qd.quality_between(y, x, paired=True)
    unpaired = qd.quality_between(y, x)
    assert paired.fd == unpaired.fd and paired.paired and not unpaired.paired
    assert paired.fd_spread < 0.5 * unpaired.fd_spread
    with pytest.raises(GanDeployError, match="same number"):
        qd.quality_between(y[:500], x, paired=True)


@pytest.mark.parametrize("make,match", [
    (lambda x: x[:, 0], r"bad generated images.*\[N, C, H, W\]"),
    (lambda x: np.concatenate([x, x], axis=1), "channel count"),
    (lambda x: x.transpose(0, 2, 3, 1), "channel count"),
    (lambda x: x[:10], "too few samples.*10 vs"),
    (lambda x: x * 255, "outside the value range"),
    (lambda x: np.where(np.arange(len(x))[:, None, None, None] == 3, np.nan, x), "NaN or inf.*1 of"),
    (lambda x: x.tolist(), "bad generated images"),
])
def test_bad_inputs_are_one_line_errors(digits, make, match):
    x = digits[0][:100]
    with pytest.raises(GanDeployError, match=match) as e:
        qd.quality_between(make(x), x)
    assert "\n" not in str(e.value) and "expected" in str(e.value)


def test_bad_k_bootstrap_and_reference(digits):
    x = digits[0][:100]
    with pytest.raises(GanDeployError, match="bad k"):
        qd.quality_between(x, x, k=100)
    with pytest.raises(GanDeployError, match="bootstrap"):
        qd.quality_between(x, x, bootstrap=-1)
    with pytest.raises(GanDeployError, match="value range"):
        qd.quality_between(x, x, value_range=(1.0, -1.0))
    with pytest.raises(GanDeployError, match="data not found"):
        qe.reference_images("no/such/data")
    assert qe.reference_images("digits", n=50, seed=3).shape == (50, 1, 32, 32)
    np.testing.assert_array_equal(qe.reference_images("digits", n=50, seed=3), qe.reference_images("digits", n=50, seed=3))


def test_generate_folder_follows_its_manifest(tmp_path, digits):
    from gan_deploy.core.images import encode, to_uint8

    pix = to_uint8(digits[0][:40])  # [N, H, W, 1] uint8
    rows = ["index,seed,file"]
    for i, im in enumerate(pix):
        (tmp_path / f"{i:06d}.png").write_bytes(encode(im))
        rows.append(f"{i},0,{i:06d}.png")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "grid.png").write_bytes(encode(np.zeros((70, 70, 1), np.uint8)))  # a sample grid beside them
    loaded = qe.load_images(tmp_path)
    assert loaded.shape == (40, 1, 32, 32)
    np.testing.assert_allclose(loaded, digits[0][:40], atol=1.0 / 255 + 1e-6)
    (tmp_path / "000007.png").unlink()
    with pytest.raises(GanDeployError, match="000007.png"):
        qe.load_images(tmp_path)


# -- the classifier ----------------------------------------------------------------------------------------


def test_shipped_classifier_is_accurate_and_matches_its_hash():
    cfg = json.loads(qf.CLASSIFIER_PATH.with_suffix(".json").read_text())
    assert cfg["accuracy"]["held_out"] > 0.95
    assert cfg["weights_sha256"] == sha256_file(qf.CLASSIFIER_PATH)
    clf = qf.load_classifier()
    assert clf.feature_dim == cfg["feature_dim"] == 128


def test_retrain_tiny_classifier_deterministically(tmp_path, digits):
    kw = dict(epochs=1, width=2, feature_dim=8, log=None)
    cfg = qt.train_feature_classifier(tmp_path / "a", **kw)
    cfg_b = qt.train_feature_classifier(tmp_path / "b.safetensors", **kw)
    assert cfg["weights_sha256"] == cfg_b["weights_sha256"] == sha256_file(tmp_path / "a.safetensors")
    assert 0.0 <= cfg["accuracy"]["held_out"] <= 1.0 and cfg["data"]["n_test"] == 360
    clf = qf.load_classifier(tmp_path / "a")
    assert qf.features(digits[0][:50], classifier=clf).shape == (50, 8)
    # damaged weights are refused, not silently used
    data = bytearray((tmp_path / "a.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "a.safetensors").write_bytes(bytes(data))
    with pytest.raises(GanDeployError, match="do not match their config"):
        qf.load_classifier(tmp_path / "a")
    with pytest.raises(GanDeployError, match="not found"):
        qf.load_classifier(tmp_path / "missing")
    with pytest.raises(GanDeployError, match="training settings"):
        qt.train_feature_classifier(tmp_path / "c", epochs=0, log=None)


# -- gan-deploy eval ---------------------------------------------------------------------------------------


def _fd(output: str) -> float:
    line = next(s for s in output.splitlines() if s.startswith("FD "))
    return float(line.split()[1])


def test_eval_cli_against_digits_and_json(cli, tiny_checkpoint, tmp_path):
    r = cli("eval", "-c", tiny_checkpoint, "-n", 64, "--bootstrap", 3, "--json", tmp_path / "qf.json")
    assert r.exit_code == 0, r.output
    assert "precision" in r.output and "real vs real" in r.output and "untrained generator" in r.output
    fd = _fd(r.output)
    report = json.loads((tmp_path / "qf.json").read_text())
    assert report["score"]["fd"] == pytest.approx(fd, rel=1e-3) and report["score"]["n_a"] == 64
    assert report["score"]["n_b"] == 1797 and report["score"]["bootstrap"] == 3
    assert set(report["context"]) and all(v["fd"] >= 0 for v in report["context"].values())


def test_eval_cli_against_backend_is_paired_and_near_zero(cli, tiny_checkpoint, tiny_onnx):
    r = cli("eval", "-c", tiny_checkpoint, "-n", 64, "--backend", "onnxruntime", "--against-backend", "eager", "--bootstrap", 2)
    assert r.exit_code == 0, r.output
    assert "paired" in r.output and "noise floor" in r.output and _fd(r.output) < 1e-3
    r = cli("eval", "--onnx", tiny_onnx, "-c", tiny_checkpoint, "-n", 64, "--against-backend", "eager", "--no-context")
    assert r.exit_code == 0, r.output
    assert _fd(r.output) < 1e-3 and "noise floor" not in r.output


def test_eval_cli_refuses_an_onnx_file_from_another_checkpoint(cli, tiny_onnx, tmp_path):
    from conftest import make_checkpoint

    other = make_checkpoint(tmp_path / "other.safetensors", seed=1)
    r = cli("eval", "--onnx", tiny_onnx, "-c", other, "-n", 64, "--against-backend", "eager")
    assert r.exit_code == 2, r.output
    assert r.output.count("Error:") == 1 and "exported from a different checkpoint" in r.output


def test_eval_cli_images_folder(cli, tiny_checkpoint, tmp_path):
    r = cli("generate", "-c", tiny_checkpoint, "-n", 40, "--out", tmp_path / "s", "--grid", tmp_path / "s" / "grid.png")
    assert r.exit_code == 0, r.output
    r = cli("eval", "--images", tmp_path / "s", "--reference", tmp_path / "s", "--no-context", "--bootstrap", 0)
    assert r.exit_code == 0, r.output
    assert "40 images from" in r.output and _fd(r.output) < 1e-6


@pytest.mark.parametrize("args,message", [
    (["-n", "10"], "too few images to score: -n 10"),
    (["--reference", "no/such/folder"], "data not found"),
    (["-k", "500", "-n", "64"], "bad k"),
    (["--images", "."], "--images and a generator were both given"),
    (["--precision", "fp16", "--backend", "onnxruntime", "-n", "64"], "precision fp16 applies to the PyTorch backends only"),
])
def test_eval_cli_bad_input_is_exit_2_and_one_line(cli, tiny_checkpoint, args, message):
    r = cli("eval", "-c", tiny_checkpoint, *args)
    assert r.exit_code == 2, r.output
    errors = [s for s in r.output.splitlines() if s.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], r.output
    assert "Traceback" not in r.output


def test_eval_help_has_examples(cli):
    r = cli("eval", "--help")
    assert r.exit_code == 0 and "Examples" in r.output and "--against-backend" in r.output

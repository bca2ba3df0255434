"""gan_deploy.data.sources: every source, value-range detection, and one clear error for each kind of bad input."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_deploy.core.errors import GanDeployError
from gan_deploy.data.sources import load_dataset


def _write_idx(path: Path, a: np.ndarray, gz: bool) -> Path:
    """Write an IDX file the way the MNIST distribution does: magic 0x0000 0x08 ndim, big-endian sizes, bytes."""
    raw = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _mnist_like(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    return images, rng.integers(0, 10, size=n).astype(np.uint8)


def _check_range(ds) -> None:
    assert ds.images.dtype == np.float32
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0


# -- digits ---------------------------------------------------------------------------------------------

def test_digits_default_is_32x32_in_range_with_labels():
    ds = load_dataset()
    assert ds.images.shape == (1797, 1, 32, 32) and ds.name == "digits"
    _check_range(ds)
    assert ds.images.min() == -1.0 and ds.images.max() > 0.99  # background is -1, strokes reach white
    assert ds.labels is not None and ds.labels.shape == (1797,) and set(ds.labels.tolist()) == set(range(10))
    assert np.isfinite(ds.images).all()


def test_digits_other_size_and_rgb():
    ds = load_dataset("digits", image_size=16, channels=3)
    assert ds.images.shape == (1797, 3, 16, 16)
    np.testing.assert_array_equal(ds.images[:, 0], ds.images[:, 2])  # gray repeated


def test_digits_upscaling_is_smooth():
    """Bilinear, not nearest: a 32x32 image has many more distinct values than the 17 levels of an 8x8 digit."""
    x = load_dataset().images[0, 0]
    assert len(np.unique(x)) > 40


# -- folders of images ------------------------------------------------------------------------------------

def test_folder_recursive_with_class_subfolders(tmp_path):
    root = tmp_path / "shapes"
    for cls, value in (("dark", 40), ("light", 220)):
        (root / cls / "deeper").mkdir(parents=True)
        Image.fromarray(np.full((20, 30), value, np.uint8)).save(root / cls / "a.png")  # non-square: stretched
        Image.fromarray(np.full((10, 10, 3), value, np.uint8)).save(root / cls / "deeper" / "b.jpg", quality=100)
    (root / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / ".hidden" / "ignored.png")
    (root / "dark" / "notes.txt").write_text("not an image")
    ds = load_dataset(root, image_size=16)
    assert ds.images.shape == (4, 1, 16, 16) and ds.name == "shapes"
    assert ds.classes == ["dark", "light"] and ds.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(ds.images[0], 40 / 255 * 2 - 1, atol=1e-5)
    np.testing.assert_allclose(ds.images[3], 220 / 255 * 2 - 1, atol=0.02)  # JPEG
    rgb = load_dataset(root, image_size=8, channels=3)
    assert rgb.images.shape == (4, 3, 8, 8)


def test_folder_flat_has_no_labels_and_rgb_to_gray_uses_luma(tmp_path):
    Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (8, 8, 1))).save(tmp_path / "red.png")
    ds = load_dataset(tmp_path, image_size=8)
    assert ds.labels is None
    np.testing.assert_allclose(ds.images, round(0.299 * 255) / 255 * 2 - 1, atol=1e-5)


def test_folder_holding_one_idx_file_uses_it(tmp_path):
    images, labels = _mnist_like()
    (tmp_path / "mnist").mkdir()
    _write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", images, gz=True)
    _write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", images[:3], gz=True)
    _write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", labels, gz=True)
    ds = load_dataset(tmp_path / "mnist")
    assert ds.images.shape == (12, 1, 32, 32) and ds.name == "mnist"  # the train file wins over t10k
    assert ds.labels.tolist() == labels.tolist()


# -- arrays -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "ND"])
def test_npy_layouts_uint8(tmp_path, layout):
    base = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16), dtype=np.uint8)
    base[0, 0, 0], base[0, 0, 1] = 0, 255
    a = {"NHW": base, "NHWC": base[..., None], "NCHW": base[:, None], "ND": base.reshape(5, 256)}[layout]
    np.save(tmp_path / "x.npy", a)
    ds = load_dataset(tmp_path / "x.npy", image_size=16)
    assert ds.images.shape == (5, 1, 16, 16) and ds.name == "x"
    np.testing.assert_allclose(ds.images[:, 0], base / 255.0 * 2 - 1, atol=1e-6)
    assert ds.images[0, 0, 0, 0] == -1.0 and ds.images[0, 0, 0, 1] == 1.0


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)])
def test_float_value_ranges_are_detected(tmp_path, lo, hi):
    ramp = np.linspace(lo, hi, 16 * 16, dtype=np.float32).reshape(1, 16, 16)
    np.save(tmp_path / "f.npy", np.repeat(ramp, 3, axis=0))
    ds = load_dataset(tmp_path / "f.npy", image_size=16)
    assert ds.images.min() == pytest.approx(-1.0) and ds.images.max() == pytest.approx(1.0)


def test_npz_with_labels_and_rgba_nhwc(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, size=(6, 8, 8, 4), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", x_train=x, y_train=np.arange(6))
    ds = load_dataset(tmp_path / "set.npz", image_size=8, channels=3)
    assert ds.images.shape == (6, 3, 8, 8) and ds.labels.tolist() == list(range(6))
    np.testing.assert_allclose(ds.images, x[..., :3].transpose(0, 3, 1, 2) / 255.0 * 2 - 1, atol=1e-6)  # alpha dropped


# -- MNIST IDX --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_idx_images_and_labels(tmp_path, gz):
    images, labels = _mnist_like()
    p = _write_idx(tmp_path / "train-images-idx3-ubyte", images, gz)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=not gz)  # either compression is found
    ds = load_dataset(p)
    assert ds.images.shape == (12, 1, 32, 32)
    assert ds.labels.tolist() == labels.tolist()
    assert ds.images[0].max() == -1.0 and ds.images[1].min() == 1.0  # black stays -1, white +1 after resizing
    native = load_dataset(p, image_size=28).images[:, 0]
    np.testing.assert_allclose(native, images / 255.0 * 2 - 1, atol=1e-6)  # no resize at 28: exact pixels


def test_idx_without_labels(tmp_path):
    images, _ = _mnist_like()
    ds = load_dataset(_write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False))
    assert ds.labels is None


# -- bad input: one GanDeployError naming the value, the expectation and a hint -----------------------------

def _err(spec, **kw) -> str:
    with pytest.raises(GanDeployError) as e:
        load_dataset(spec, **kw)
    msg = e.value.one_line()
    assert "\n" not in msg
    return msg


def test_missing_path(tmp_path):
    msg = _err(tmp_path / "nope")
    assert "data not found" in msg and "nope" in msg and "expected" in msg and "digits" in msg


def test_empty_folder_and_folder_without_images(tmp_path):
    assert "empty data folder" in _err(tmp_path)
    (tmp_path / "readme.txt").write_text("hi")
    msg = _err(tmp_path)
    assert "no images found" in msg and str(tmp_path) in msg and ".png" in msg


def test_corrupt_image(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    msg = _err(tmp_path)
    assert "unreadable or corrupt image" in msg and "bad.png" in msg and "Note:" in msg


@pytest.mark.parametrize("shape", [(4, 5, 6, 7), (4, 2, 2, 2, 2), (4, 7), (10,)])
def test_wrong_shaped_array(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.zeros(shape, np.uint8))
    msg = _err(tmp_path / "a.npy")
    assert "wrong shape" in msg and str(shape) in msg and "[N, H, W]" in msg


def test_empty_array(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((0, 8, 8), np.uint8))
    assert "holds no images" in _err(tmp_path / "a.npy")


def test_object_array_is_refused_not_unpickled(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    msg = _err(tmp_path / "o.npy")
    assert "pickle" in msg and "o.npy" in msg


@pytest.mark.parametrize("values,what", [([0.0, np.nan], "NaN"), ([-3.0, 2.0], "unknown range"),
                                         ([0.0, 300.0], "unknown range")])
def test_bad_float_values(tmp_path, values, what):
    a = np.zeros((2, 4, 4), np.float32)
    a[0, 0, :2] = values
    np.save(tmp_path / "f.npy", a)
    assert what in _err(tmp_path / "f.npy")


def test_int_values_out_of_range(tmp_path):
    np.save(tmp_path / "i.npy", np.full((2, 4, 4), 1000, np.int32))
    msg = _err(tmp_path / "i.npy")
    assert "out of range" in msg and "1000" in msg


def test_corrupt_npy_and_npz(tmp_path):
    (tmp_path / "c.npy").write_bytes(b"\x93NUMPY garbage")
    assert "unreadable or corrupt array" in _err(tmp_path / "c.npy")
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 garbage")
    assert "unreadable or corrupt array" in _err(tmp_path / "c.npz")


def test_npz_ambiguous_and_labels_mismatch(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    assert "which array" in _err(tmp_path / "two.npz")
    np.savez(tmp_path / "lab.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.arange(5))
    assert "labels do not match" in _err(tmp_path / "lab.npz")


def test_bad_idx_magic(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 64)
    msg = _err(p)
    assert "bad IDX magic number" in msg and "0x12340803" in msg and "0x00000803" in msg


def test_gzipped_idx_without_gz_name_gets_a_hint(tmp_path):
    images, _ = _mnist_like()
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x03"))
    assert "looks gzipped" in _err(p)


def test_truncated_and_corrupt_idx(tmp_path):
    images, labels = _mnist_like()
    p = _write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    p.write_bytes(p.read_bytes()[:-100])
    msg = _err(p)
    assert "does not match its header" in msg and "[12, 28, 28]" in msg
    g = tmp_path / "x-images-idx3-ubyte.gz"
    g.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    assert "unreadable or corrupt IDX" in _err(g)


def test_idx_labels_file_given_as_images(tmp_path):
    _, labels = _mnist_like()
    p = _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=False)
    assert "does not hold images" in _err(p)


def test_idx_labels_count_mismatch(tmp_path):
    images, labels = _mnist_like()
    p = _write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:5], gz=False)
    assert "labels do not match" in _err(p)


def test_unrecognised_file_and_single_image(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3")
    assert "unrecognised data file" in _err(tmp_path / "data.csv")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "one.png")
    assert "single image" in _err(tmp_path / "one.png")


def test_bad_channels():
    assert "channel" in _err("digits", channels=2)

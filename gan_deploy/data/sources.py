"""Training data: every source becomes one float32 array [N, C, H, W] in [-1, 1] (the generator's tanh range).

Sources (`load_dataset(spec)`):

    digits                      scikit-learn's 8x8 handwritten digits (1797 images, labels 0-9), shipped inside
                                scikit-learn so nothing is downloaded; upscaled bilinearly to image_size.
    path/to/folder/             PNG / JPEG / BMP / WebP files, searched recursively. When every image sits in a
                                first-level sub-folder, the sub-folder names are the class labels (ImageFolder layout).
                                A folder with no images but one MNIST-style `*images-idx3-ubyte[.gz]` file uses that.
    path/to/x.npy | x.npz       an array [N, H, W], [N, H, W, C], [N, C, H, W] (C = 1, 3 or 4; 4 = RGBA, alpha dropped)
                                or [N, D] with D a perfect square (flattened square images). In an .npz the images are
                                the array named images / x / x_train / data / arr_0 (or the only array), labels the one
                                named labels / y / y_train / targets, if present.
                                Value range, detected from dtype and values:
                                  uint8 / integer with values <= 255   -> 0..255
                                  uint16 with values > 255             -> 0..65535
                                  float with min < 0 and within [-1, 1] -> already [-1, 1]
                                  float within [0, 1]                   -> 0..1
                                  float within [0, 255] (max > 1)       -> 0..255
                                anything else (NaN, inf, other ranges) is refused.
    path/train-images-idx3-ubyte[.gz]   MNIST-format IDX (also Fashion-MNIST, EMNIST, KMNIST); gzipped or not.
                                The labels file beside it (`train-labels-idx1-ubyte[.gz]`) is used when present.

Images are converted to `channels` (RGB -> gray with the ITU-R 601 luma weights PIL uses; gray -> RGB by
repetition) and resized to image_size x image_size (bilinear, anti-aliased when shrinking) without keeping the
aspect ratio: non-square images are stretched, so crop them beforehand if that matters.

The whole data set is held in memory (MNIST at 32x32 is 245 MB of float32), which makes a training step an
index into one tensor instead of a DataLoader round trip.
"""
from __future__ import annotations

import gzip
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gan_deploy.core.errors import GanDeployError

BUILTIN = ("digits",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_KEYS = ("images", "x", "x_train", "data", "arr_0")
LABEL_KEYS = ("labels", "y", "y_train", "targets")
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAME = re.compile(r"idx\d[-.]ubyte$")
RESIZE_CHUNK = 4096  # images resized per call: bounds the temporary float memory for big data sets


@dataclass
class Dataset:
    images: np.ndarray  # [N, C, H, W] float32 in [-1, 1]
    labels: np.ndarray | None  # [N] int64, or None when the source has none
    name: str  # short name for run folders: digits, mnist, my_faces ...
    source: str  # what was loaded: "sklearn.datasets.load_digits" or the resolved path
    classes: list[str] | None = None  # label -> class name, for folder data sets

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def describe(self) -> str:
        n, c, h, w = self.images.shape
        lab = f", {len(np.unique(self.labels))} classes" if self.labels is not None else ""
        return f"{self.name}: {n} images {c}x{h}x{w}{lab} from {self.source}"


def dataset_name(spec: str | Path) -> str:
    """The short name a data set gets (run folders: runs/<name>_<arch>), without loading it."""
    s = str(spec)
    if s in BUILTIN:
        return s
    p = Path(s).expanduser()
    if p.is_file() and _is_idx(p):
        # MNIST-style files live in a folder named after the data set (mnist/, fashion-mnist/)
        return _clean_name(p.resolve().parent.name) or "idx"
    if p.is_dir():
        return _clean_name(p.resolve().name) or "images"
    return _clean_name(p.stem) or "data"


def load_dataset(spec: str | Path = "digits", image_size: int = 32, channels: int = 1) -> Dataset:
    """Load a data set (see the module docstring for the sources) as [N, C, image_size, image_size] in [-1, 1]."""
    if channels not in (1, 3):
        raise GanDeployError("bad channel count", channels, expected="1 (grayscale) or 3 (RGB)")
    if image_size < 4:
        raise GanDeployError("image size too small", image_size, expected="at least 4 pixels")
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    if spec_str in BUILTIN:  # a built-in name wins; a local folder of that name is reached as ./digits
        images, labels = _load_digits()
        return _finish(images, labels, "digits", "sklearn.datasets.load_digits", image_size, channels)
    if not path.exists():
        raise GanDeployError("data not found", spec_str, expected=f"a built-in data set ({', '.join(BUILTIN)}), a folder of images, an .npy/.npz array "
                             "or an MNIST IDX file such as train-images-idx3-ubyte.gz", hint="check the path")
    if path.is_dir():
        return _load_folder(path, image_size, channels)
    return _load_file(path, image_size, channels)


# -- sources -----------------------------------------------------------------------------------------

def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)  # [1797, 8, 8] in [0, 1], [1797]


def _load_file(path: Path, image_size: int, channels: int) -> Dataset:
    if path.suffix.lower() in ARRAY_SUFFIXES:
        images, labels = _load_array(path)
        return _finish(images, labels, dataset_name(path), str(path), image_size, channels)
    if _is_idx(path):
        images = _read_idx(path)
        if images.ndim != 3:
            raise GanDeployError("IDX file does not hold images", f"{path} has {images.ndim} dimensions {images.shape}", expected="3 dimensions [N, rows, cols] (an *-images-idx3-ubyte file)", hint="pass the images file, not the labels file")
        labels = _idx_labels_beside(path, len(images))
        return _finish(_scale_to_unit(images, path), labels, dataset_name(path), str(path), image_size, channels)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise GanDeployError("a single image is not a data set", str(path), expected="a folder of images", hint=f"pass its folder: --data {path.parent}")
    raise GanDeployError("unrecognised data file", str(path), expected="a folder of images, .npy, .npz, or an MNIST IDX file (*-idx3-ubyte, optionally .gz)", hint="an IDX file must keep its MNIST name ending in idx3-ubyte or idx3-ubyte.gz")


def _load_folder(folder: Path, image_size: int, channels: int) -> Dataset:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        idx = sorted(p for p in folder.iterdir() if p.is_file() and _is_idx(p) and "images" in p.name.lower())
        train = [p for p in idx if p.name.lower().startswith("train")]
        if len(idx) == 1 or len(train) == 1:
            return _load_file((train or idx)[0], image_size, channels)
        if idx:
            raise GanDeployError("folder holds several IDX image files", f"{folder}: {', '.join(p.name for p in idx)}", expected="one", hint="pass the file itself with --data")
        anything = any(folder.iterdir())
        raise GanDeployError("no images found" if anything else "empty data folder", str(folder), expected=f"image files ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders", hint="for arrays pass the .npy/.npz file itself")
    mode = "L" if channels == 1 else "RGB"
    size = image_size
    out = np.empty((len(files), channels, size, size), dtype=np.float32)  # [N, C, H, W]
    for i, f in enumerate(files):
        out[i] = _read_image(f, mode, size)
    # ImageFolder layout: class = first-level sub-folder, only when *every* image is in one
    rel = [f.relative_to(folder).parts for f in files]
    labels, classes = None, None
    if all(len(r) >= 2 for r in rel):
        classes = sorted({r[0] for r in rel})
        if len(classes) > 1:
            index = {c: k for k, c in enumerate(classes)}
            labels = np.array([index[r[0]] for r in rel], dtype=np.int64)
        else:
            classes = None
    return Dataset(out * 2.0 - 1.0, labels, dataset_name(folder), str(folder), classes)


def _read_image(path: Path, mode: str, size: int) -> np.ndarray:
    """One image file -> [C, size, size] float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P") and mode == "RGB":
                im = im.convert("RGBA").convert("RGB")
            im = im.convert(mode)
            if im.size != (size, size):
                # PIL's BILINEAR filter widens its support when shrinking, i.e. it anti-aliases
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise GanDeployError("unreadable or corrupt image", f"{path} ({e})", expected="a valid PNG/JPEG/BMP/WebP file", hint="delete or replace the file") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _load_array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        # allow_pickle=False: an object array would need unpickling, which can run code from the file
        obj = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise GanDeployError("array file needs pickle to load", str(path), expected="a plain numeric array", hint="save it with np.save(path, array.astype(np.uint8)) - object arrays are refused "
                                 "because unpickling can run code") from None
        raise GanDeployError("unreadable or corrupt array file", f"{path} ({e})", expected="a file written by np.save / np.savez") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise GanDeployError("unreadable or corrupt array file", f"{path} ({e})", expected="a file written by np.save / np.savez") from None
    labels = None
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            try:
                keys = list(obj.keys())
                key = next((k for k in IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise GanDeployError("cannot tell which array in the .npz holds the images", f"{path} holds {keys}", expected=f"one array, or one named {' / '.join(IMAGE_KEYS)}", hint="re-save with np.savez(path, images=x, labels=y)")
                images = obj[key]
                lkey = next((k for k in LABEL_KEYS if k in keys), None)
                labels = obj[lkey] if lkey else None
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise GanDeployError("unreadable or corrupt array file", f"{path} ({e})", expected="a plain numeric array written by np.savez") from None
    else:
        images = obj
    images = _to_nchw(images, path)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise GanDeployError("labels do not match the images", f"{path}: labels {labels.dtype} {labels.shape}", expected=f"{len(images)} integer labels", hint="drop or fix the labels array")
        labels = labels.astype(np.int64)
    return _scale_to_unit(images, path), labels


def _to_nchw(a: np.ndarray, path: Path) -> np.ndarray:
    """[N, H, W] | [N, H, W, C] | [N, C, H, W] | [N, D=S*S] -> [N, C, H, W] (C = 1 or 3)."""
    shape = tuple(a.shape)
    bad = GanDeployError("array has the wrong shape", f"{path}: {a.dtype} {shape}", expected="[N, H, W], [N, H, W, C], [N, C, H, W] with C in 1, 3, 4, or [N, D] with D a perfect square", hint="reshape it before saving")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.issubdtype(a.dtype, np.complexfloating):
        raise bad
    if a.ndim == 2:
        side = int(round(np.sqrt(shape[1])))
        if side * side != shape[1] or side < 2:
            raise bad
        a = a.reshape(shape[0], 1, side, side)
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        first, last = shape[1] in (1, 3, 4), shape[3] in (1, 3, 4)
        if first and last:  # e.g. [N, 3, 3, 3]: square images decide
            first = shape[2] == shape[3]
        if first:
            pass
        elif last:
            a = a.transpose(0, 3, 1, 2)
        else:
            raise bad
    else:
        raise bad
    if a.shape[0] == 0 or a.shape[2] < 2 or a.shape[3] < 2:
        raise GanDeployError("array holds no images", f"{path}: {shape}", expected="at least one image of at least 2x2")
    if a.shape[1] == 4:
        a = a[:, :3]  # RGBA: drop alpha
    return a


def _scale_to_unit(a: np.ndarray, path: Path) -> np.ndarray:
    """Pixel values in a detected range (module docstring) -> float32 in [0, 1]."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= 255:
            return a.astype(np.float32) / 255.0
        if a.dtype == np.uint16:
            return a.astype(np.float32) / 65535.0
        raise GanDeployError("integer pixel values out of range", f"{path}: {a.dtype} min {lo} max {hi}", expected="0..255 (uint8) or 0..65535 (uint16)", hint="rescale the array to uint8 0..255")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise GanDeployError("array holds NaN or infinite values", str(path), expected="finite pixel values")
    lo, hi = float(a.min()), float(a.max())  # type: ignore[assignment]
    eps = 1e-3
    if lo < 0 and lo >= -1 - eps and hi <= 1 + eps:
        return np.clip((a + 1.0) * 0.5, 0.0, 1.0)
    if lo >= 0 and hi <= 1 + eps:
        return np.clip(a, 0.0, 1.0)
    if lo >= 0 and hi <= 255 + eps:
        return np.clip(a / 255.0, 0.0, 1.0)
    raise GanDeployError("float pixel values in an unknown range", f"{path}: min {lo:.4g} max {hi:.4g}", expected="[-1, 1], [0, 1] or [0, 255]", hint="rescale the array before saving")


# -- MNIST IDX ---------------------------------------------------------------------------------------

def _is_idx(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return bool(_IDX_NAME.search(name))


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000 <type byte> <ndim byte>, ndim big-endian int32 sizes, data."""
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as f:
                head = f.read(4 + 4 * 4)
                # read no more than the header declares (+1 byte to notice a longer file): a small .gz can inflate to
                # terabytes, and a hostile header can declare them
                declared = _idx_declared_bytes(head, path)
                raw = head + f.read(max(declared - len(head), 0) + 1)
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; damaged deflate data is zlib.error
        raise GanDeployError("unreadable or corrupt IDX file", f"{path} ({e})", expected="an MNIST-format IDX file, gzipped or not", hint="download it again") from None
    if len(raw) < 4:
        raise GanDeployError("IDX file too short", f"{path} ({len(raw)} bytes)", expected="at least a 4-byte magic number", hint="download it again")
    magic = int.from_bytes(raw[:4], "big")
    type_code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or type_code not in IDX_DTYPES or not 1 <= ndim <= 4:
        hint = "it looks gzipped: name it *.gz" if raw[:2] == b"\x1f\x8b" else "is this really an MNIST IDX file?"
        raise GanDeployError("bad IDX magic number", f"0x{magic:08X} in {path}", expected="0x00000803 (images, uint8, 3 dimensions) or 0x00000801 (labels)", hint=hint)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise GanDeployError("IDX file truncated in its header", str(path), expected=f"{header} header bytes", hint="download it again")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = header + math.prod(dims) * dtype.itemsize  # Python integers: a hostile header cannot overflow them
    if dims and dims[0] == 0:
        raise GanDeployError("IDX file holds no items", f"{path}: dimensions {dims}", expected="at least one image (or label)",
                             hint="the file is empty or damaged; download it again")
    if any(d == 0 for d in dims[1:]):
        raise GanDeployError("IDX file declares an empty dimension", f"{path}: dimensions {dims}", expected="every dimension >= 1",
                             hint="the file is damaged; download it again")
    if len(raw) != expected:
        raise GanDeployError("IDX file size does not match its header", f"{path}: {len(raw)} bytes for dimensions {dims}", expected=f"{expected} bytes", hint="the file is truncated or damaged; download it again")
    a = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return a.astype(dtype.newbyteorder("="))  # native byte order, own memory


MAX_IDX_BYTES = 64 << 30  # an IDX data set held in memory; MNIST is 47 MB, EMNIST's largest about 700 MB


def _idx_declared_bytes(head: bytes, path: Path) -> int:
    """The total size an IDX header declares (header + data), refusing more than MAX_IDX_BYTES; when the header is
    unreadable, a size that lets the full checks in _read_idx report it."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES or not 1 <= head[3] <= 4:
        return len(head)
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        return len(head)
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    total = 4 + 4 * ndim + math.prod(dims) * np.dtype(IDX_DTYPES[head[2]]).itemsize
    if total > MAX_IDX_BYTES:
        raise GanDeployError("IDX header declares more data than gan-deploy reads", f"{path}: dimensions {dims} ({total / 2**30:,.0f} GiB)",
                             expected=f"at most {MAX_IDX_BYTES >> 30} GiB", hint="the file is damaged, or split it into smaller files")
    return total


def _idx_labels_beside(images_path: Path, n: int) -> np.ndarray | None:
    name = images_path.name
    for pat, rep in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if pat in name:
            base = name.replace(pat, rep)
            base = base[:-3] if base.endswith(".gz") else base
            for cand in (images_path.with_name(base), images_path.with_name(base + ".gz")):
                if cand.is_file():
                    labels = _read_idx(cand)
                    if labels.ndim != 1 or len(labels) != n:
                        raise GanDeployError("IDX labels do not match the images", f"{cand}: shape {labels.shape}", expected=f"[{n}] labels for {images_path.name}", hint="move or fix the labels file")
                    return labels.astype(np.int64)
    return None


# -- common tail ---------------------------------------------------------------------------------------

def _finish(images01: np.ndarray, labels: np.ndarray | None, name: str, source: str, image_size: int,
            channels: int) -> Dataset:
    """[N, C, h, w] or [N, h, w] in [0, 1] -> Dataset with [N, channels, image_size, image_size] in [-1, 1]."""
    x = images01[:, None] if images01.ndim == 3 else images01
    x = _convert_channels(np.asarray(x, dtype=np.float32), channels)
    x = _resize(x, image_size)
    x = np.clip(x * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)
    return Dataset(np.ascontiguousarray(x), labels, name, source)


def _convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=1)
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)  # ITU-R 601, as PIL's "L"
    return (x * luma).sum(axis=1, keepdims=True)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """[N, C, h, w] -> [N, C, size, size], bilinear; anti-aliased when shrinking so thin strokes survive."""
    if x.shape[2] == size and x.shape[3] == size:
        return x
    import torch
    import torch.nn.functional as F

    shrink = x.shape[2] > size or x.shape[3] > size
    out = np.empty((x.shape[0], x.shape[1], size, size), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(x), RESIZE_CHUNK):
            t = torch.from_numpy(np.ascontiguousarray(x[s: s + RESIZE_CHUNK]))
            out[s: s + RESIZE_CHUNK] = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                                     antialias=shrink).numpy()
    return out


def _clean_name(s: str) -> str:
    """A string usable as part of a run folder name."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._-")
    return s[:40]

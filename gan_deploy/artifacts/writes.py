"""What a command may write: the one check every output path goes through, before any work.

A command declares each path it will write as an `Output(option, path, kind)`; `check_outputs(outputs, inputs)`
refuses, with one line naming the option and the file:

* an output that is one of the command's inputs, or an input's sidecar (the same file however reached: a
  symlink, a hard link, `..`), or that would write through a dangling symlink;
* an existing file of another kind: each kind says which existing files it may replace (an earlier output of
  the same kind, e.g. an FP32 ONNX export for `export -o`, an INT8 model for `quantize --int8 -o`, a PNG for
  `--grid`), so a slip of the keyboard never replaces trained weights, a sidecar or an unrelated file;
* a folder where a file is expected (and a file where a folder is), an unwritable place, two options on one file.

The CLI declares outputs with `cli.options.output_option(kind=...)` and runs this check for every command before
the command body (a test walks every option of every command); library functions call it too, so Python
callers get the same protection.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from gan_deploy.artifacts.artifact import META_PRECISION
from gan_deploy.artifacts.checkpoint import FORMAT as CHECKPOINT_FORMAT
from gan_deploy.artifacts.engine import SIDECAR_FORMAT as ENGINE_FORMAT
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.outputs import check_output_file, check_writable_folder, is_within, same_file

SERVE_CONFIG_MARK = "# Ray Serve config written by `gan-deploy serve --write-config`"
_PNG = b"\x89PNG\r\n\x1a\n"
_SIDECAR_OF = (".safetensors", ".onnx", ".engine")  # model files whose <stem>.json is part of them
_READ_LIMIT = 1 << 20  # bytes of an existing file read to tell its kind (ONNX models are parsed whole, below)


@dataclass(frozen=True)
class Kind:
    """A kind of output: what it is called in messages, whether it is a folder, and which existing file it may
    replace (None: any existing file of this kind is a refusal; folders are checked by their command)."""

    name: str
    what: str
    folder: bool = False
    replaces: Callable[[Path], bool] | None = None
    suffix: str | None = None
    replaced_whole: bool = False  # a folder swapped in whole (triton-repo): no input may lie inside it


def _head(p: Path, n: int = _READ_LIMIT) -> bytes:
    with open(p, "rb") as f:
        return f.read(n)


def _json_doc(p: Path) -> object:
    try:
        return json.loads(_head(p).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _is_png(p: Path) -> bool:
    return _head(p, 8) == _PNG


def _is_report(p: Path) -> bool:
    """A JSON report of an earlier run: a JSON object or list that is no gan-deploy document (those carry a
    "format"), and not the sidecar of a model beside it."""
    doc = _json_doc(p)
    if not isinstance(doc, (dict, list)):
        return False
    if isinstance(doc, dict) and str(doc.get("format", "")).startswith("gan-deploy"):
        return False
    return not any(p.with_suffix(s).exists() for s in _SIDECAR_OF + (".pt", ".pth", ".ckpt"))


def _onnx_precision(p: Path) -> str | None:
    """'fp32' | 'fp16' | 'int8' for an ONNX model gan-deploy wrote (no precision key: an FP32 export); None for a
    file that is not one (not ONNX, or an ONNX model without our metadata: someone else's)."""
    try:
        import onnx

        model = onnx.load_model(str(p), load_external_data=False)
    except Exception:  # onnx raises DecodeError, ValueError, OSError... for a file that is not a model
        return None
    meta = {m.key: m.value for m in model.metadata_props}
    if not any(k.startswith("gan_deploy.") for k in meta):
        return None
    return meta.get(META_PRECISION, "fp32")


def _is_engine(p: Path) -> bool:
    doc = _json_doc(p.with_suffix(".json")) if p.with_suffix(".json").is_file() else None
    return isinstance(doc, dict) and doc.get("format") == ENGINE_FORMAT


def _is_engine_sidecar(p: Path) -> bool:
    doc = _json_doc(p)
    return isinstance(doc, dict) and doc.get("format") == ENGINE_FORMAT


def _is_serve_config(p: Path) -> bool:
    head = _head(p, 4096)
    if head.startswith(SERVE_CONFIG_MARK.encode()):
        return True
    doc = _json_doc(p)  # written as JSON when PyYAML is missing
    return isinstance(doc, dict) and "applications" in doc and "format" not in doc


def _is_checkpoint(p: Path) -> bool:
    doc = _json_doc(p.with_suffix(".json")) if p.with_suffix(".json").is_file() else None
    return isinstance(doc, dict) and doc.get("format") == CHECKPOINT_FORMAT


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("onnx", "an FP32 ONNX model from `gan-deploy export`", replaces=lambda p: _onnx_precision(p) == "fp32", suffix=".onnx"),
    Kind("onnx-int8", "an INT8 ONNX model from `gan-deploy quantize --int8`", replaces=lambda p: _onnx_precision(p) == "int8"),
    Kind("onnx-fp16", "an FP16 ONNX model from `gan-deploy quantize --fp16`", replaces=lambda p: _onnx_precision(p) == "fp16"),
    Kind("engine", "a TensorRT engine from `gan-deploy build-engine`", replaces=_is_engine),
    Kind("engine-sidecar", "an engine's sidecar JSON", replaces=_is_engine_sidecar),
    Kind("checkpoint", "a generator checkpoint from `export --factory`", replaces=_is_checkpoint, suffix=".safetensors"),
    Kind("png", "a PNG image (a grid or plot of an earlier run)", replaces=_is_png),
    Kind("json", "a JSON report of an earlier run", replaces=_is_report),
    Kind("serve-config", "a Ray Serve config from `serve --write-config`", replaces=_is_serve_config),
    Kind("timing-cache", "a TensorRT timing cache (.cache)", replaces=lambda p: p.suffix == ".cache"),
    Kind("generate-folder", "a folder of generated images", folder=True),
    Kind("train-folder", "a training run folder", folder=True),
    Kind("triton-repo", "a Triton model repository", folder=True, replaced_whole=True),
)}


@dataclass(frozen=True)
class Output:
    """A path a command will write: the option that names it (for messages), the path, and its kind (KINDS)."""

    option: str
    path: Path
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:  # a programming error, caught by the tests that walk every option
            raise ValueError(f"unknown output kind {self.kind!r}: one of {', '.join(KINDS)}")


def with_sidecars(paths: Iterable[str | os.PathLike | None]) -> list[Path]:
    """Inputs and the sidecars that are part of them (<stem>.json beside a checkpoint, an ONNX model or an engine)."""
    out: list[Path] = []
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        out.append(p)
        if p.suffix.lower() in _SIDECAR_OF:
            out.append(p.with_suffix(".json"))
    return out


def check_outputs(outputs: Sequence[Output], inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse, before any work, an output that is an input (or part of one), an existing file of another kind,
    a folder for a file (or the reverse), an unwritable place, or one file named by two options."""
    ins = with_sidecars(inputs)
    for i, out in enumerate(outputs):
        _check_one(out, ins)
        for other in outputs[i + 1:]:
            if same_file(out.path, other.path):
                raise GanDeployError(f"{out.option} and {other.option} name the same file", str(out.path),
                                     expected="a path each", hint=f"choose another {other.option}")


def _check_one(out: Output, inputs: list[Path]) -> None:
    kind, p, opt = KINDS[out.kind], Path(out.path), out.option
    if p.is_symlink() and not p.exists():
        raise GanDeployError(f"{opt} is a broken symlink", f"{p} -> {os.readlink(p)}",
                             expected=f"a path for {kind.what}", hint=f"remove the symlink, or choose another {opt}")
    for i in inputs:
        if same_file(p, i) or (kind.replaced_whole and i.exists() and p.exists() and is_within(i, p)):
            shown = str(p) if str(p) == str(i) else f"{p} {'is' if same_file(p, i) else 'holds'} {i}"
            raise GanDeployError(f"{opt} would overwrite an input of this command", shown,
                                 expected="an output path that is none of the inputs (nor a sidecar of one)",
                                 hint=f"choose another {opt}: the input would be destroyed")
    if kind.folder:
        if p.exists() and not p.is_dir():
            raise GanDeployError(f"{opt} is a file", str(p), expected="a folder (new or empty)", hint=f"choose another {opt}")
        check_writable_folder(p, option=opt)
        return
    check_output_file(p, option=opt, suffix=kind.suffix)
    if p.is_file() and kind.replaces is not None:
        try:
            ok = kind.replaces(p)
        except OSError as e:
            raise GanDeployError(f"cannot read the existing {opt} file", f"{p} ({e.strerror})",
                                 hint=f"choose another {opt}") from None
        if not ok:
            raise GanDeployError(f"{opt} names an existing file that is not {kind.what}", str(p),
                                 expected=f"a new path, or {kind.what} to replace",
                                 hint=f"choose another {opt} path, or remove the file yourself if it is really meant to go")

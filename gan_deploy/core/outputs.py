"""Where a command may write, checked before it starts: never one of its own inputs, never an unwritable place.

Every command that writes a file calls these first, so a run of minutes never ends in "permission denied", and
`export -o my.safetensors` cannot replace the weights it is exporting.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from gan_deploy.core.errors import GanDeployError


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same file: equal resolved paths (symlinks followed), or hard links to one inode."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.resolve() == pb.resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop
        return False
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """`path` is `folder` or lies anywhere below it (resolved: `..` and symlinks cannot escape the check)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def refuse_inputs_as_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike | None],
                             *, option: str = "--out") -> None:
    """Raise when any output would replace any input (a checkpoint, its sidecar, an ONNX file, the factory code...)."""
    ins = [Path(i) for i in inputs if i is not None]
    for out in outputs:
        if out is None:
            continue
        for i in ins:
            if same_file(out, i):
                raise GanDeployError(f"{option} would overwrite an input of this command", f"{out} is {i}",
                                     expected="an output path that is none of the inputs",
                                     hint=f"choose another {option}: the input would be destroyed")


def refuse_inputs_inside(folder: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *,
                         option: str = "--out") -> None:
    """Raise when an input lies inside a folder the command is about to replace."""
    for i in inputs:
        if i is not None and Path(i).exists() and is_within(i, folder):
            raise GanDeployError(f"{option} would replace a folder holding an input of this command", f"{i} is inside {folder}",
                                 expected="inputs outside the folder that is replaced",
                                 hint="copy the input elsewhere first, or choose another --out / --name")


def check_output_file(path: str | os.PathLike, *, option: str = "--out", suffix: str | None = None) -> Path:
    """A file the command will write: not a folder, the right suffix, and a place that can be written (the nearest
    existing ancestor is a writable folder, so missing parents can be created). Checked before any work."""
    p = Path(path)
    if suffix is not None and p.suffix.lower() != suffix:
        raise GanDeployError(f"{option} has the wrong file extension", str(p), expected=f"a file name ending in {suffix}",
                             hint=f"e.g. {option} {p.with_suffix(suffix).name}")
    if p.is_dir():
        raise GanDeployError(f"{option} is a folder", str(p), expected=f"a file name{f' ending in {suffix}' if suffix else ''}",
                             hint=f"e.g. {option} {p / ('model' + (suffix or ''))}")
    if p.exists() and not os.access(p, os.W_OK):
        raise GanDeployError(f"{option} exists and is not writable", str(p), hint=f"choose another {option}, or fix its permissions")
    check_writable_folder(p.parent if str(p.parent) else Path("."), option=option, of=p)
    return p


def check_writable_folder(folder: str | os.PathLike, *, option: str = "--out", of: str | os.PathLike | None = None) -> Path:
    """`folder` exists as a writable folder, or can be created (its nearest existing ancestor is one)."""
    f = Path(folder)
    what = f"{of}" if of is not None else f"{f}"
    anc = f
    while not anc.exists():
        if anc.is_symlink():  # a dangling symlink: creating through it would write somewhere unexpected
            raise GanDeployError(f"cannot write {option}", f"{what} ({anc} is a broken symlink)", hint=f"choose another {option}")
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise GanDeployError(f"cannot write {option}", f"{what} ({anc} is a file, not a folder)", hint=f"choose another {option}")
    if not os.access(anc, os.W_OK | os.X_OK) or not _can_create_in(anc):
        raise GanDeployError(f"cannot write {option}", f"{what} ({anc} is not writable)",
                             hint=f"choose a writable {option}, or fix the folder's permissions")
    return f


def _can_create_in(folder: Path) -> bool:
    """Create and remove an empty file: the only test that also holds for root, read-only mounts and /proc."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".gan-deploy-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass
    return True


_PNG = b"\x89PNG\r\n\x1a\n"
_MODEL_SUFFIXES = (".safetensors", ".onnx", ".engine", ".pt", ".pth", ".ckpt")


def check_replaceable(path: str | os.PathLike, kind: str, *, option: str) -> None:
    """An existing file at a report path (--grid, --json, --plot) is replaced only when it is the kind of file that
    option writes, a grid or report of an earlier run: never a model, a model's sidecar, or whatever else a slip of
    the keyboard named. kind: "png" or "json"."""
    p = Path(path)
    if not p.is_file():
        return
    hint = f"choose another {option} path, or remove the file yourself if it is really meant to go"
    what = {"png": "a PNG image", "json": "a JSON report"}[kind]
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 20)
    except OSError as e:
        raise GanDeployError(f"cannot read the existing {option} file", f"{p} ({e.strerror})", hint=hint) from None
    ok = head.startswith(_PNG) if kind == "png" else _is_report(head)
    if kind == "json" and ok and any(p.with_suffix(sfx).exists() for sfx in _MODEL_SUFFIXES):
        ok = False  # beside a model of the same name: its sidecar
    if not ok:
        raise GanDeployError(f"{option} names an existing file that is not {what}", str(p),
                             expected=f"a new path, or {what} from an earlier run to replace", hint=hint)


def _is_report(head: bytes) -> bool:
    import json

    try:
        doc = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    # gan-deploy's own sidecars and records carry a "format" naming them; reports do not
    return isinstance(doc, (dict, list)) and not (isinstance(doc, dict) and str(doc.get("format", "")).startswith("gan-deploy"))

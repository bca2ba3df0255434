"""The one reader of the project's own versioned JSON documents (checkpoint, engine and classifier sidecars,
training state), and field checks that name the file and the field.

Every file the tool reads back was once written by it, but may since have been hand-edited, truncated or
swapped: each field is checked for type and range before use, with a one-line error instead of a traceback.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable

from gan_deploy.core.errors import GanDeployError

MAX_DOCUMENT_BYTES = 16 << 20  # a sidecar is a few KB; anything this large is not one


def read_document(path: str | Path, fmt: str, max_version: int, *, what: str, hint: str,
                  version_key: str = "format_version") -> dict[str, Any]:
    """Parse `path` as a JSON object with "format": fmt and an integer version <= max_version."""
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO put in a file's place must not block the open; then only a regular file is read, and at
        # most the bound (a link to /dev/zero has size 0 and never ends)
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise GanDeployError(f"{what} is not a regular file", str(p), expected="a JSON file", hint=hint)
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_DOCUMENT_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise GanDeployError(f"{what} is too large", f"{p} (over {MAX_DOCUMENT_BYTES} bytes)",
                                 expected=f"a JSON file under {MAX_DOCUMENT_BYTES >> 20} MiB", hint=hint)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise GanDeployError(f"{what} not found", str(p), hint=hint) from None
    except (OSError, UnicodeDecodeError) as e:
        raise GanDeployError(f"{what} is unreadable", f"{p} ({type(e).__name__})", hint=hint) from None
    return parse_document(text, p, fmt, max_version, what=what, hint=hint, version_key=version_key)


def parse_document(text: str, where: str | Path, fmt: str, max_version: int, *, what: str, hint: str,
                   version_key: str = "format_version") -> dict[str, Any]:
    try:
        d = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        msg = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise GanDeployError(f"{what} is not valid JSON", f"{where} ({msg})", hint=hint) from None
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise GanDeployError(f"not a gan-deploy {what}", str(where), expected=f'a JSON object with "format": "{fmt}"', hint=hint)
    v = d.get(version_key, 0)
    if not is_int(v) or v < 0:
        raise GanDeployError(f"{what} field has the wrong type", f"{where}: {version_key}={v!r}",
                             expected="a non-negative integer", hint=hint)
    if v > max_version:
        raise GanDeployError(f"{what} written by a newer gan-deploy", f"{where}: {version_key} {v}",
                             expected=f"<= {max_version}", hint="upgrade gan-deploy")
    return d


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: Python's json accepts them by default


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite JSON number that fits a float (JSON integers have no bound: 1e400 written as digits would raise
    OverflowError wherever it became a float, math.isfinite included)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def field(d: dict[str, Any], key: str, where: str | Path, what: str, *, kind: str,
          check: Callable[[Any], bool] | None = None, expected: str | None = None, hint: str | None = None,
          required: bool = True, default: Any = None) -> Any:
    """d[key] checked to be of `kind` (int | number | str | bool | list | dict) and to pass `check`."""
    if key not in d:
        if required:
            raise GanDeployError(f"{what} lacks a field", f"{where}: {key!r}", expected=expected or kind, hint=hint)
        return default
    v = d[key]
    ok = {"int": is_int, "number": is_number, "str": lambda x: isinstance(x, str), "bool": lambda x: isinstance(x, bool),
          "list": lambda x: isinstance(x, list), "dict": lambda x: isinstance(x, dict)}[kind](v)
    if not ok or (check is not None and not check(v)):
        shown = repr(v) if len(repr(v)) <= 80 else repr(v)[:77] + "..."
        raise GanDeployError(f"{what} field is invalid", f"{where}: {key}={shown}", expected=expected or kind, hint=hint)
    return v

"""One error type for everything a user can get wrong.

Every message names what was wrong, the offending value, what was expected, and a hint, so the CLI can
print it on one line and exit non-zero instead of showing a traceback.
"""
from __future__ import annotations

import warnings
from typing import Any


class GanDeployError(Exception):
    """A user-facing error: `what` (the problem), `value` (the bad value), keyword-only `expected` and `hint`
    (the fix), kept as fields so callers (the CLI, the HTTP service, tests) can use the parts."""

    def __init__(self, what: str, value: Any = None, *, expected: str | None = None, hint: str | None = None):
        self.what = what
        self.value = value
        self.expected = expected
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [self.what]
        if self.value is not None:
            parts[0] += f": {self.value}"
        if self.expected:
            parts.append(f"expected {self.expected}")
        msg = "; ".join(parts)
        if self.hint:
            msg = msg.rstrip(". ") + f". Note: {self.hint}"
        return msg.replace("\n", " ")


def check_at_most(what: str, option: str, value: Any, top: int, why: str, hint: str | None = None) -> None:
    """A resource option above its bound: one line naming the option, the bound and where the bound comes from
    (e.g. "too many writers: --writers 100000; expected at most 32 (16 writer threads per core on this 2-core machine)")."""
    if value > top:
        raise GanDeployError(what, f"{option} {value:,}", expected=f"at most {top:,} ({why})", hint=hint)


class BackendUnavailable(GanDeployError):
    """The backend cannot run here (library or device missing). Carries the install hint."""


class StaleArtifact(GanDeployError):
    """An artifact's recorded parent (sha256, GPU, library version) does not match what it is used with."""


class GanDeployWarning(UserWarning):
    """Something the user should know that does not stop the command (NaN images, a value range that does not fit
    the model's output). The CLI prints each as one `warning: ...` line on stderr; Python callers get a warning."""


def warn(message: str) -> None:
    """Tell the user something is off without stopping: one line (the CLI shows it as `warning: <message>`)."""
    warnings.warn(message.replace("\n", " "), GanDeployWarning, stacklevel=3)

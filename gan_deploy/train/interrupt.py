"""Ctrl-C during training: finish the step, save it, stop."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class DeferredInterrupt:
    """Ctrl-C during a step is held until the step ends (so the state saved is a whole step's); a second
    Ctrl-C interrupts at once. Only in the main thread of a single process (signals go to every rank)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nStopping after this step to save it (Ctrl-C again to stop at once) ...", file=sys.stderr, flush=True)

    def __enter__(self) -> DeferredInterrupt:  # noqa: PYI034 (typing.Self is Python 3.11+; we support 3.10)
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)

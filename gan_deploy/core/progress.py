"""What `progress` means in every options object (GenerateOptions, BenchOptions, EvalOptions, TrainOptions).

`progress: bool | None`, shown on stderr:
  * True: show progress: a bar where the operation has one (generate, train), else its progress lines
    (bench: "measuring ...", eval: "generating ...");
  * False: show nothing;
  * None (the default): the same, except that a bar is drawn only when stderr is a terminal (a log or CI gets
    the operation's plain lines instead, where it has any: train prints one per sample grid).
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

Progress = Optional[bool]


def show_bar(progress: Progress) -> bool:
    """Whether to draw a progress bar."""
    return progress is True or (progress is None and sys.stderr.isatty())


def progress_lines(progress: Progress) -> Callable[[str], None]:
    """A function printing one progress line on stderr, or doing nothing when progress is False."""
    if progress is False:
        return lambda _msg: None

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)  # sys.stderr looked up now: a test runner may have replaced it
    return say

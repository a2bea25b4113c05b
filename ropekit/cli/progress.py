"""Progress on stderr for commands that take more than a moment.

One status line, rewritten in place as the work moves (``verify: building the model
skeleton``, ``verify: rotary module 3/4``), and cleared when the command ends, so
stdout and the one-line error contract are untouched. It is shown only when stderr
is a terminal: piped output and logs get no control characters.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

Report = Callable[[str], None]


@contextmanager
def status(label: str, stream: TextIO | None = None) -> Iterator[Report]:
    """Yield ``report(message)``; each call replaces the status line ``label: message``."""
    out = sys.stderr if stream is None else stream
    if not (hasattr(out, "isatty") and out.isatty()):
        yield _quiet
        return
    shown = False

    def report(message: str) -> None:
        nonlocal shown
        out.write(f"\r\x1b[2K{label}: {message}")
        out.flush()
        shown = True

    try:
        yield report
    finally:
        if shown:
            out.write("\r\x1b[2K")
            out.flush()


def _quiet(message: str) -> None:
    """Progress with nowhere to go."""

"""A one-line progress bar on stderr, for the commands that take a while.

Drawn only when stderr is a terminal: into a file or a pipe, where ``\\r``
does not rewind, it would be a heap of half lines (a command that wants a
record there asks for the finished line alone).  No dependency: the bar is
the few lines below.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from zbigarray.cli._units import fmt_bytes

WIDTH = 30
"""Characters of the bar itself."""


class Progress:
    """A bar redrawn in place: ``label [####....] ...``.

    Parameters
    ----------
    label
        What is being done (``"exporting"``).
    total
        The amount when done; None when unknown (then no bar, a count).
    unit
        ``"bytes"``: percent and throughput; otherwise the noun counted
        (``"objects"``): ``done of total objects``.
    final_line
        Also write the finished line when stderr is not a terminal.
    stream
        Where to draw (default: ``sys.stderr``).
    """

    def __init__(self, label: str, total: int | None, unit: str = "bytes", *,
                 final_line: bool = False, stream: TextIO | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.final_line = final_line
        self.t0 = time.perf_counter()
        self._drawn = False

    def update(self, done: int) -> None:
        """Show `done` (of `total`)."""
        finished = self.total is not None and done >= self.total
        if not self.tty and not (finished and self.final_line):
            return
        bar = ""
        if self.total:
            filled = WIDTH * min(done, self.total) // self.total
            bar = f"[{'#' * filled}{'.' * (WIDTH - filled)}] "
        if self.unit == "bytes":
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            pct = f"{100 * done // self.total:3d}%  " if self.total else ""
            text = f"{pct}{fmt_bytes(rate)}/s"
        else:
            text = f"{done}{f' of {self.total}' if self.total else ''} {self.unit}"
        self.stream.write(f"\r  {self.label} {bar}{text} ")
        self._drawn = True
        if finished and not self.tty:
            self.close()
        self.stream.flush()

    def close(self) -> None:
        """End the line, if one was drawn."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

"""Progress of the preprocessing tasks: tasks done of total, chunks so far, rate and time left.

On a terminal it is one status line redrawn in place; anywhere else (a SLURM log, a pipe) it is one plain line per
tenth of the tasks, because carriage returns make a log file unreadable. A small class rather than tqdm, which is
not a dependency of this project, and Dask's own progress bar, which follows a client's futures but not the
executor interface the stage runs on.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

BAR_WIDTH = 20


class Progress:
    """Counts finished tasks and their chunks; `skipped` tasks (complete shards of an earlier run) count as done
    but not towards the rate, so the time left is not flattered by work that was not done now."""

    def __init__(self, total: int, skipped: int = 0, stream: TextIO | None = None, label: str = "preprocess"):
        self.total, self.skipped, self.label = total, skipped, label
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.done, self.chunks = skipped, 0
        self.started = time.monotonic()
        if self.live and total:
            self._redraw()  # at once: the first task can take a while (workers starting, imports)

    def update(self, chunks: int) -> None:
        """One more task finished, having written `chunks` chunks."""
        self.done += 1
        self.chunks += chunks
        if self.live:
            self._redraw()
            if self.done == self.total:
                self.stream.write("\n")
                self.stream.flush()
        elif self.done == self.total or self.done * 10 // self.total != (self.done - 1) * 10 // self.total:
            print(self.line(bar=False), file=self.stream, flush=True)

    def _redraw(self) -> None:
        """Overwrite the status line, cut to the terminal's width: a line that wraps cannot be redrawn in place."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        line = self.line(bar=True)
        self.stream.write(f"\r{line[:columns - 1] if columns > 1 else line}\x1b[K")
        self.stream.flush()

    def line(self, bar: bool) -> str:
        elapsed = time.monotonic() - self.started
        ran = self.done - self.skipped
        rate = ran / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        filled = BAR_WIDTH * self.done // max(self.total, 1)
        parts = [f"{self.label}: " + (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " if bar else "")
                 + f"{self.done}/{self.total} tasks", f"{self.chunks} chunks",
                 f"ETA {_clock(left) if left is not None else '?'}",
                 f"{rate:.2f} tasks/s, {self.chunks / elapsed if elapsed > 0 else 0:.0f} chunks/s",
                 f"elapsed {_clock(elapsed)}"]  # most wanted first: a narrow terminal cuts the end
        if self.skipped:
            parts.insert(1, f"{self.skipped} already complete")
        return ", ".join(parts)

    def close(self) -> None:
        """End the status line of an interrupted run, so that what is printed next starts on its own line."""
        if self.live and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

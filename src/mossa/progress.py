"""Progress on stderr: rich bars with ETA on a terminal, plain log lines otherwise."""

from __future__ import annotations

import contextlib
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn


class Reporter:
    """Stage messages and progress bars; results go to stdout, never through here."""

    def __init__(self, *, enabled: bool | None = None, quiet: bool = False):
        self.console = Console(stderr=True)
        self.live = sys.stderr.isatty() if enabled is None else enabled
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{time.perf_counter() - self.t0:7.1f}s[/dim] {message}", highlight=False)

    @contextlib.contextmanager
    def bar(self, description: str, total: int):
        """Yield `advance(n=1, **fields)`; shows a bar with ETA when live."""
        if not self.live:
            start = time.perf_counter()
            yield lambda n=1, **_: None
            self.log(f"{description}: {total} done in {time.perf_counter() - start:.1f} s")
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(description, total=total, info="")
            yield lambda n=1, info="": progress.update(task, advance=n, info=info)

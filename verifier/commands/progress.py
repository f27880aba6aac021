"""A progress bar on stderr for long command runs, and a wall-clock timer."""
from __future__ import annotations

import contextlib
import sys
import time

import click


@contextlib.contextmanager
def progress(items: list, label: str, min_items: int = 5):
    """A progress bar on stderr for long runs (at least ``min_items`` batches); silent otherwise."""
    if len(items) < min_items:
        yield items
        return
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start

"""Progress of one long stage (download, render, decode): a rich bar on a terminal, log lines elsewhere.

On CI or in a log file a redrawn bar is noise, so there the same progress becomes one log line
every ``log_every_s`` seconds (and one at the end).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_MB = 1_000_000


class StageProgress:
    """Args:
    label: what is progressing (``nsynth-test``, ``GMNotes rendering``); shown and logged.
    total: amount to do, if known (``start`` may set it later).
    unit: ``items`` (``12/40``) or ``bytes`` (MB, with transfer speed on the bar).
    noun: what the items are, for log lines (``decoded 12/40 audio files``).
    enabled: False = silent.
    log_every_s: seconds between log lines when stderr is not a terminal.
    logger: where those lines go.
    final_line: log a closing line when not on a terminal (off when the caller prints its own).
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "items",
        noun: str = "",
        enabled: bool = True,
        log_every_s: float = 10.0,
        logger: logging.Logger | None = None,
        final_line: bool = True,
    ) -> None:
        if unit not in ("items", "bytes"):
            raise ValueError(f"unit={unit!r}; valid: items, bytes")
        self.label, self.unit, self.noun, self.enabled, self.log_every_s = label, unit, noun, enabled, log_every_s
        self.final_line = final_line
        self.log = logger or logging.getLogger(__name__)
        self.total = total
        self.completed = 0
        self._bar: Any = None  # rich's Progress, on a terminal only
        self._task: Any = None
        self._logged_at = self._t0 = time.monotonic()

    def start(self, total: int | None = None) -> StageProgress:
        self.total = total
        self._t0 = time.monotonic()
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            counts = (DownloadColumn(), TransferSpeedColumn()) if self.unit == "bytes" else (MofNCompleteColumn(),)
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                *counts,
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task(self.label, total=total, completed=self.completed)
            self._bar.start()
        return self

    def update(self, completed: int | None = None, *, advance: int = 0, label: str | None = None) -> None:
        """Set (``completed``) or add to (``advance``) the amount done; optionally relabel."""
        self.completed = (self.completed if completed is None else completed) + advance
        if label is not None:
            self.label = label
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, description=self.label)
        elif self.enabled and time.monotonic() - self._logged_at >= self.log_every_s:
            self._logged_at = time.monotonic()
            self.log.info("%s", self.line())

    def line(self) -> str:
        """``decoded 12/40 audio files (3 s, ETA 7 s)``: done so far, elapsed, and the time left at
        the mean rate so far (when the total is known)."""
        if self.unit == "bytes":
            of = f" of {self.total / _MB:.1f}" if self.total else ""
            text = f"{self.label}: {self.completed / _MB:.1f}{of} MB"
        else:
            of = f"/{self.total}" if self.total is not None else ""
            text = f"{self.label} {self.completed}{of} {self.noun}".rstrip()
        elapsed = time.monotonic() - self._t0
        if self.total and 0 < self.completed < self.total:
            return f"{text} ({elapsed:.0f} s, ETA {elapsed * (self.total - self.completed) / self.completed:.0f} s)"
        return f"{text} ({elapsed:.0f} s)"

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.enabled and self.final_line:
            self.log.info("%s", self.line())

    def track(self, items: Iterable[T], total: int) -> Iterator[T]:
        """Yield ``items``, advancing by one each."""
        self.start(total)
        try:
            for item in items:
                yield item
                self.update(advance=1)
        finally:
            self.stop()

    def __enter__(self) -> StageProgress:
        return self.start(self.total)

    def __exit__(self, *exc: object) -> None:
        self.stop()

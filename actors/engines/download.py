"""Download progress as task events: the first task that needs a model watches it arrive.

`report` is also a cancel point, so a cancelled task stops its download.
"""

from __future__ import annotations

import time

from . import Report

REPORT_INTERVAL_S = 0.5


def _mb(size: float) -> str:
    return f"{size / 1_000_000:.0f} MB" if size >= 10_000_000 else f"{size / 1_000_000:.1f} MB"


class Progress:
    """Turns counts of bytes (or files) into throttled progress events between `low`
    and `high` percent."""

    def __init__(self, report: Report, what: str, low: float, high: float, unit: str = "bytes") -> None:
        self.report = report
        self.what = what
        self.low = low
        self.high = high
        self.unit = unit
        self.total: float | None = None
        self.done = 0.0
        self._last = 0.0

    def advance(self, amount: float) -> None:
        self.done += amount
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if now - self._last < REPORT_INTERVAL_S and not finished:
            return
        self._last = now
        if self.total:
            share = min(1.0, self.done / self.total)
            percent = self.low + (self.high - self.low) * share
            amount_text = self._amount(self.done) + " of " + self._amount(self.total)
        else:
            percent = self.low
            amount_text = self._amount(self.done)
        self.report(percent, f"Fetching {self.what}: {amount_text}")

    def _amount(self, value: float) -> str:
        return _mb(value) if self.unit == "bytes" else f"{value:.0f} {self.unit}"

"""Download progress as task events: the first task that needs a model watches it arrive.

`Progress` turns byte counts into throttled progress events; `fetch` downloads one URL
into the data dir with it. `report` is also a cancel point, so a cancelled task stops
its download (and leaves no partial file behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import ModelUnavailableError
from . import Report

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.5
FETCH_TIMEOUT_S = 5.0  # per socket operation: an offline worker fails fast
READ_BYTES = 1 << 20


def is_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://"))


def size_text(size: float) -> str:
    if size >= 1_000_000_000:
        return f"{size / 1_000_000_000:.1f} GB"
    return f"{size / 1_000_000:.0f} MB" if size >= 10_000_000 else f"{size / 1_000_000:.1f} MB"


class Progress:
    """Turns counts of bytes (or files) into throttled progress events between `low`
    and `high` percent.

    `total` may grow while counting (a hub snapshot learns each file's size as its
    download starts); the percent never moves back.
    """

    def __init__(self, report: Report, what: str, low: float, high: float, unit: str = "bytes") -> None:
        self.report = report
        self.what = what
        self.low = low
        self.high = high
        self.unit = unit
        self.total: float | None = None
        self.done = 0.0
        self._last = 0.0
        self._percent = low
        self._message = ""

    def advance(self, amount: float) -> None:
        self.done += amount
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if now - self._last < REPORT_INTERVAL_S and not finished:
            return
        if self.total:
            share = min(1.0, self.done / self.total)
            self._percent = max(self._percent, self.low + (self.high - self.low) * share)
            amount_text = self._amount(self.done) + " of " + self._amount(self.total)
        else:
            amount_text = self._amount(self.done)
        message = f"Fetching {self.what}: {amount_text}"
        if message == self._message:
            return
        self._last = now
        self._message = message
        self.report(self._percent, message)

    def _amount(self, value: float) -> str:
        return size_text(value) if self.unit == "bytes" else f"{value:.0f} {self.unit}"


def fetch(
    url: str, target: Path, progress: Progress, *, source: str, hint: str, md5: str | None = None
) -> Path:
    """`target`, downloaded from `url` first unless it is already there.

    The bytes go to a `.part` file that replaces `target` only once complete (and, with
    `md5`, verified), so a crash, a cancel or a bad file never leaves a truncated model
    where the next task would load it. Errors become `ModelUnavailableError`s that name
    `source` (what was being fetched) and end with `hint` (what the operator can do).
    """
    if target.is_file():
        return target
    progress.report(progress.low, f"Fetching {progress.what}")
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with (
                urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response,
                open(partial, "wb") as out,
            ):
                length = response.headers.get("Content-Length")
                progress.total = int(length) if length and length.isdigit() else None
                received = 0
                # read1: whatever has arrived, so that a slow link still shows progress
                while chunk := response.read1(READ_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    progress.advance(len(chunk))
            if progress.total is not None and received != progress.total:
                # read1 ends quietly when the server closes early
                raise ConnectionError(f"got {received} of {progress.total} bytes")
        except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts are OSErrors
            # The task's error reaches API clients: a local file error says what went
            # wrong, not where on the worker; the worker's log has the whole of it.
            log.warning("fetching %s into %s failed: %r", url, target, exc)
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # it holds the response's socket
            detail: object = exc
            if isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError):
                detail = exc.strerror if exc.filename and exc.strerror else exc
            raise ModelUnavailableError(
                f"{source} could not be fetched ({type(exc).__name__}: {detail}); {hint}"
            ) from exc
        if md5 is not None and digest.hexdigest() != md5:
            raise ModelUnavailableError(
                f"{source} failed its checksum (md5 {digest.hexdigest()}, expected {md5}), so it "
                f"was not kept; {hint}"
            )
        os.replace(partial, target)
        log.info("fetched %s into %s", url, target)
    finally:
        with contextlib.suppress(OSError):  # e.g. its folder could not be made: nothing to remove
            partial.unlink(missing_ok=True)
    return target

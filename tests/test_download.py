"""Download progress events (pure logic)."""

from __future__ import annotations

from typing import Any

from actors.engines.download import Progress


def test_progress_reports_bytes_between_its_bounds_and_always_the_end() -> None:
    seen: list[tuple[float, str]] = []

    def report(percent: float, message: str, **_: Any) -> None:
        seen.append((percent, message))

    progress = Progress(report, "the model", 10, 20)
    progress.total = 200_000_000
    for _ in range(4):
        progress.advance(50_000_000)
    assert seen[0] == (12.5, "Fetching the model: 50 MB of 200 MB")  # the first report at once
    assert seen[-1] == (20.0, "Fetching the model: 200 MB of 200 MB")  # the end is never throttled
    assert len(seen) == 2  # the middle ones were throttled


def test_progress_without_a_length_counts_bytes() -> None:
    seen: list[str] = []
    progress = Progress(lambda p, m, **_: seen.append(m), "x", 5, 6)
    progress.advance(1_500_000)
    assert seen == ["Fetching x: 1.5 MB"]

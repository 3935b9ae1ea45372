"""ETA of waiting tasks (pure logic)."""

from __future__ import annotations

from app.eta import capacity, estimate


def test_work_ahead_is_spread_over_the_queue_threads() -> None:
    runtimes = {"a": 10.0, "b": 4.0}
    etas = estimate(["a", "b", "a"], running=[("a", 6.0)], runtimes=runtimes, threads=2)
    # 4 s left of the running task; then each waiting task's own time.
    assert etas == [4 / 2 + 10, (4 + 10) / 2 + 4, (4 + 10 + 4) / 2 + 10]


def test_unknown_run_times_or_no_worker_give_no_eta() -> None:
    assert estimate(["a", "c", "a"], [], {"a": 1.0}, threads=1) == [1.0, None, None]
    assert estimate(["a"], [], {"a": 1.0}, threads=0) == [None]


def test_capacity_sums_the_threads_of_live_workers() -> None:
    assert capacity([b"host:1:ab|2", "host:2:cd|1", b"odd"]) == 4

"""How long a waiting task will take: learned run times, queue order, worker capacity."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def capacity(members: Iterable[bytes | str]) -> int:
    """Total threads of the live workers of a queue, from `capacity_key` members "id|threads"."""
    total = 0
    for member in members:
        text = member.decode() if isinstance(member, bytes) else member
        _, _, threads = text.rpartition("|")
        total += int(threads) if threads.isdigit() else 1
    return total


def estimate(
    waiting: Sequence[str],
    running: Sequence[tuple[str, float]],
    runtimes: dict[str, float],
    threads: int,
) -> list[float | None]:
    """Seconds until each waiting task (by type, in queue order) should be done.

    `running` holds (task type, seconds it has run). A task's ETA is the work ahead of
    it spread over the queue's threads, plus its own run time. None where a type ahead
    has no run time learned yet, or no worker consumes the queue.
    """
    if threads <= 0:
        return [None] * len(waiting)
    ahead = 0.0
    known = True
    for task_type, elapsed in running:
        if task_type not in runtimes:
            known = False
        else:
            ahead += max(0.0, runtimes[task_type] - elapsed)
    etas: list[float | None] = []
    for task_type in waiting:
        own = runtimes.get(task_type)
        if not known or own is None:
            known = False
            etas.append(None)
            continue
        etas.append(ahead / threads + own)
        ahead += own
    return etas

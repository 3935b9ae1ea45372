"""Long loops in slices: the event loop runs between two slices, so that one event to
thousands of connections does not hold up every other request for the whole of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")

SLICE = 500  # items handled between two turns of the event loop


async def in_slices(items: Sequence[T], size: int = SLICE) -> AsyncIterator[Sequence[T]]:
    """`items` `size` at a time, yielding to the event loop before each slice but the first."""
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        yield items[start : start + size]

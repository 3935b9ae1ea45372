"""A `Frame`: one event as it travels through an api process, decoded once and
serialized at most once per variant (SSE text, WebSocket frame, both as prepared
bytes), however many watchers it reaches."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from livepix.wire import TERMINAL_EVENTS, Event, EventType, dumps

from .framing import http_chunk, ws_text_frame


@dataclass(slots=True, eq=False)
class Frame:
    """One event, or a frame that is not a task event (a /ws reply, an SSE keepalive:
    `event` None, `seq` 0)."""

    task_id: str
    seq: int
    type: str
    text: str
    event: Event | None
    _sse: bytes | None = None
    _ws_frame: bytes | None = None
    _sse_chunk: bytes | None = None
    _lean: Frame | None = None
    _by_ref: Frame | None = None
    # Derived once here: the fan-out reads them for every watcher.
    terminal: bool = field(init=False)
    droppable: bool = field(init=False)  # a progress event: coalesced for a slow client
    ts: float | None = field(init=False)  # when the worker published it (delivery latency)

    def __post_init__(self) -> None:
        self.terminal = self.type in TERMINAL_EVENTS
        self.droppable = self.type == EventType.PROGRESS
        ts = self.event.get("ts") if self.event is not None else None
        self.ts = ts if isinstance(ts, float) else None

    @classmethod
    def parse(cls, text: str) -> Frame:
        """A task event from its JSON text (as logged and published by the store)."""
        event = cast(Event, json.loads(text))
        return cls(event["task_id"], int(event["seq"]), event["type"], text, event)

    @classmethod
    def of(cls, event: Event) -> Frame:
        return cls(event["task_id"], event["seq"], event["type"], dumps(event), event)

    @classmethod
    def reply(cls, **fields: Any) -> Frame:
        """A /ws reply (`{"op": ...}`): not a task event."""
        return cls(task_id="", seq=0, type="op", text=dumps(fields), event=None)

    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = f"id: {self.seq}\nevent: {self.type}\ndata: {self.text}\n\n".encode()
        return self._sse

    def ws_frame(self) -> bytes:
        """The WebSocket text frame of `text`, header included."""
        if self._ws_frame is None:
            self._ws_frame = ws_text_frame(self.text.encode())
        return self._ws_frame

    def sse_chunk(self) -> bytes:
        """`sse()` as a chunk of a chunked HTTP response."""
        if self._sse_chunk is None:
            self._sse_chunk = http_chunk(self.sse())
        return self._sse_chunk

    def _variant(self, event: Event) -> Frame:
        return Frame(self.task_id, self.seq, self.type, dumps(event), event)

    def lean(self) -> Frame:
        """This frame without its preview: what a client under pressure gets."""
        if self.event is None or "preview" not in self.event:
            return self
        if self._lean is None:
            event = cast(Event, {k: v for k, v in self.event.items() if k != "preview"})
            self._lean = self._variant(event)
        return self._lean

    def by_reference(self, result_url: str) -> Frame:
        """This frame with the result image replaced by its URL (clients asking `inline=0`)."""
        result = self.event.get("result") if self.event is not None else None
        if result is None or "image_data" not in result:
            return self
        if self._by_ref is None:
            assert self.event is not None
            slim: dict[str, Any] = {k: v for k, v in result.items() if k not in ("image_data", "images")}
            slim["image_url"] = result_url
            if "images" in result:
                slim["image_urls"] = [f"{result_url}?index={i}" for i in range(len(result["images"]))]
            self._by_ref = self._variant(cast(Event, {**self.event, "result": slim}))
        return self._by_ref

    def replacing(self, seqs: list[int]) -> Frame:
        """This (coalesced) progress frame naming the seqs it replaces for one client,
        so that the client can tell coalescing from a lost event (SPEC section 4)."""
        assert self.event is not None
        return self._variant(cast(Event, {**self.event, "replaces": seqs}))

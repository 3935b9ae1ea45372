"""The CLI's client commands, `livepix submit | watch | status | result | cancel`, on the
SDK (livepix/sdk/): its streams resume by seq after a network error or an api
restart; the exit code tells a script how the task ended.

Progress for people: on a terminal, rich draws a spinner with the queue position while
the task waits and a bar with percent and ETA while it runs; anywhere else (a pipe, a
log, CI) one plain line per change, whose shape scripts may rely on:

    queued: position 2, about 14 s
    [########............]  40% Inpainting 14.2% of the image (telea)
    succeeded: Done
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.progress import Task as RichTask
from rich.text import Text

from .errors import (
    ApiError,
    ConnectionLostError,
    NotFoundError,
    TaskCancelledError,
    TaskFailedError,
)
from .schema import Event
from .sdk import Client, output_paths
from .wire import EventType

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_NOT_FOUND = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Raised when a command line cannot be carried out as written (exit code 2)."""


def parse_value(text: str) -> Any:
    """`--param k=v` values: JSON when it parses (numbers, true, null, lists), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_image(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def dumped(model: BaseModel) -> dict[str, Any]:
    """A parsed answer or event as the api sent it (no defaults added)."""
    return model.model_dump(mode="json", exclude_unset=True)


class _EtaColumn(ProgressColumn):
    """The ETA the api sent (`eta_s`), counted down between events."""

    def render(self, task: RichTask) -> Text:
        eta_s, at = task.fields.get("eta_s"), task.fields.get("eta_at")
        if eta_s is None or at is None:
            return Text("")
        left = max(0, round(eta_s - (time.monotonic() - at)))
        return Text(f"ETA {left // 60}:{left % 60:02d}", style="progress.remaining")


class ProgressView:
    """A task's progress: rich's live display on a terminal, plain lines elsewhere."""

    def __init__(self, out: TextIO, console: Console | None = None) -> None:
        self.out = out
        self.console = console or Console(file=out, highlight=False)
        self.tty = self.console.is_terminal
        self._last = ""
        self._progress: Progress | None = None
        self._bar = TaskID(0)

    def show(self, event: Event) -> None:
        if self.tty:
            self._draw(event)
        else:
            self._line(event)

    def close(self) -> None:
        """End the live display (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _line(self, event: Event) -> None:
        kind = event.type
        if kind == EventType.QUEUED:
            eta_s = getattr(event, "eta_s", None)
            eta = f", about {eta_s:.0f} s" if eta_s is not None else ""
            line = f"queued: position {getattr(event, 'position', None) or '?'}{eta}"
        elif kind in (EventType.STARTED, EventType.PROGRESS):
            percent = event.progress
            bar = "#" * (percent // 5) + "." * (20 - percent // 5)
            line = f"[{bar}] {percent:3d}% {event.message}"
        else:
            line = f"{kind}: {event.message}"
        if line != self._last:
            self._last = line
            self.out.write(line + "\n")
            self.out.flush()

    def _draw(self, event: Event) -> None:
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                TaskProgressColumn(), _EtaColumn(), console=self.console,
            )
            self._progress.start()
            self._bar = self._progress.add_task("", total=None)
        eta_s, now = getattr(event, "eta_s", None), time.monotonic()
        if event.type == EventType.QUEUED:  # no total: a pulsing bar beside the spinner
            position = getattr(event, "position", None) or "?"
            self._progress.update(self._bar, description=f"queued: position {position}",
                                  eta_s=eta_s, eta_at=now)
        elif event.type in (EventType.STARTED, EventType.PROGRESS):
            self._progress.update(self._bar, total=100, completed=event.progress,
                                  description=event.message or "running", eta_s=eta_s, eta_at=now)
        elif event.terminal:
            if event.type == EventType.SUCCEEDED:
                self._progress.update(self._bar, total=100, completed=100, eta_s=None)
            self.close()
            self.console.print(f"{event.type}: {event.message}", markup=False)
            return
        self._progress.refresh()  # now, not at the next tick of the display's thread


def watch(
    client: Client,
    task_id: str,
    *,
    transport: str = "sse",
    as_json: bool = False,
    output: str | None = None,
    cancel_on_exit: bool = False,
    since: int = 0,
) -> int:
    """Follow a task to its end and save its image; the exit code tells how it ended."""
    view = None if as_json else ProgressView(sys.stdout)

    def seen(event: Event) -> None:
        if view is not None:
            view.show(event)
        else:
            sys.stdout.write(json.dumps(dumped(event)) + "\n")
            sys.stdout.flush()

    try:
        try:
            result = client.wait(task_id, since=since, transport=transport,  # type: ignore[arg-type]
                                 on_event=seen)
        finally:
            if view is not None:
                view.close()
    except TaskFailedError as exc:
        if not as_json:
            print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
        return EXIT_FAILED
    except TaskCancelledError:
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        if cancel_on_exit:
            answer = client.cancel(task_id)
            print(f"\ncancelled {task_id}: {answer.status}", file=sys.stderr)
        else:
            print(f"\nthe task goes on; resume with: livepix watch {task_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    for path in result.save(output or f"{task_id}.png"):
        print(f"saved {path}", file=sys.stderr if as_json else sys.stdout)
    return EXIT_OK


def submit(client: Client, args: argparse.Namespace) -> int:
    task: dict[str, Any] = {"task_type": args.task_type}
    if args.prompt is not None:
        task["prompt"] = args.prompt
    for name, path in (("image", args.image), ("target_image", args.target), ("mask", args.mask)):
        if path:
            task[name] = read_image(path)
    parameters = {}
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--param takes K=V, not {pair!r}")
        parameters[key] = parse_value(value)
    if parameters:
        task["parameters"] = parameters
    task_id = client.submit(task).task_id
    print(task_id, file=sys.stderr if args.json else sys.stdout, flush=True)
    if not args.watch:
        return EXIT_OK
    return watch(client, task_id, transport=args.transport, as_json=args.json, output=args.output)


def result(client: Client, task_id: str, output: str | None) -> int:
    outcome = client.result(task_id)
    if outcome.status != "SUCCESS" or outcome.result is None:
        code, message = (outcome.error.code, outcome.error.message) if outcome.error else ("?", "")
        print(f"{outcome.status}: {message} ({code})", file=sys.stderr)
        return EXIT_CANCELLED if outcome.status == "REVOKED" else EXIT_FAILED
    outputs = [base64.b64decode(b64) for b64 in outcome.result.images or []]
    data = outcome.result.image_data
    if not outputs:
        outputs = [base64.b64decode(data) if data else client.result_png(task_id)]
    paths = output_paths(output or f"{task_id}.png", len(outputs))
    for one, png in zip(paths, outputs, strict=True):
        one.write_bytes(png)
        print(one)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Carry out one client command; its exit code."""
    try:
        with Client(args.url, api_key=args.api_key) as client:
            if args.command == "submit":
                return submit(client, args)
            if args.command == "watch":
                return watch(client, args.task_id, transport=args.transport, as_json=args.json,
                             output=args.output, cancel_on_exit=args.cancel_on_exit,
                             since=args.since)
            if args.command == "status":
                print(json.dumps(dumped(client.status(args.task_id)), indent=2))
                return EXIT_OK
            if args.command == "cancel":
                print(json.dumps(dumped(client.cancel(args.task_id))))
                return EXIT_OK
            return result(client, args.task_id, args.output)
    except UsageError as exc:
        code, problem = EXIT_USAGE, str(exc)
    except NotFoundError as exc:
        code, problem = EXIT_NOT_FOUND, str(exc)
    except ConnectionLostError as exc:
        code, problem = EXIT_UNREACHABLE, str(exc)
    except ApiError as exc:
        code, problem = EXIT_FAILED, str(exc)
    print(f"livepix {args.command}: {problem}", file=sys.stderr)
    return code

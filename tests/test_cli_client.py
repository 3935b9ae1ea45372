"""The `livepix` client commands against a real service: watch, NDJSON, exit codes, resume."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from PIL import Image
from rich.console import Console

from livepix.commands import ProgressView
from livepix.schema import Event, parse_event
from tests.clients import assert_contiguous, gradient, png_b64, submit, two_tone
from tests.conftest import Stack


def livepix(*args: str, base: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIVEPIX_URL": base}
    return subprocess.run(  # the tests check the exit code themselves
        [sys.executable, "-m", "livepix", *args],
        check=False, env=env, capture_output=True, text=True, timeout=timeout,
    )


def start(*args: str, base: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LIVEPIX_URL": base}
    return subprocess.Popen(
        [sys.executable, "-m", "livepix", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_submit_watch_saves_the_result(stack: Stack, tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    two_tone().save(picture)
    out = tmp_path / "out.png"
    run = livepix("submit", "background_removal", "--image", str(picture), "--watch", "-o", str(out), base=stack.url)
    assert run.returncode == 0, run.stderr
    assert f"saved {out}" in run.stdout
    lines = run.stdout.splitlines()
    uuid.UUID(lines[0])  # the task id comes first, for scripts
    assert lines[1].startswith("queued: position") and any(line.startswith("[") for line in lines)
    assert any(line.startswith("succeeded:") for line in lines)
    with Image.open(out) as image:
        assert image.mode == "RGBA" and image.size == (96, 64)


def test_json_prints_every_event_with_contiguous_seq_over_both_transports(stack: Stack, tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    two_tone().save(picture)
    for transport in ("sse", "ws"):
        run = livepix(
            "submit", "object_removal", "--image", str(picture), "--param", "boxes=[[10,10,40,30]]",
            "--param", "method=ns", "--watch", "--json", "--transport", transport,
            "-o", str(tmp_path / f"{transport}.png"), base=stack.url,
        )
        assert run.returncode == 0, run.stderr
        events = [json.loads(line) for line in run.stdout.splitlines()]
        assert_contiguous(events)
        assert events[0]["type"] == "queued" and events[-1]["type"] == "succeeded"
        assert events[-1]["result"]["metadata"]["method"] == "ns"


def test_exit_codes_tell_failed_cancelled_and_not_found(new_stack: Stack, stack: Stack) -> None:
    failed = livepix("submit", "image_generation", "--prompt", "a fox", "--watch", base=stack.url)
    assert failed.returncode == 1 and "model_unavailable" in failed.stderr
    missing = livepix("watch", str(uuid.uuid4()), base=stack.url)
    assert missing.returncode == 4 and "not_found" in missing.stderr
    invalid = livepix("submit", "image_generation", "--param", "width=13", base=stack.url)
    assert invalid.returncode == 1 and "prompt" in invalid.stderr and "width" in invalid.stderr

    base = new_stack.add_api()  # no worker: the task waits until cancelled
    task_id = submit(base, {"task_type": "object_removal", "image": _b64(two_tone()), "parameters": {"boxes": [[1, 1, 5, 5]]}})
    assert livepix("cancel", task_id, base=base).returncode == 0
    cancelled = livepix("watch", task_id, base=base)
    assert cancelled.returncode == 3
    status = livepix("status", task_id, base=base)
    assert json.loads(status.stdout)["status"] == "REVOKED"


def _b64(image: Image.Image) -> str:
    return png_b64(image)


def test_watch_resumes_after_the_api_restarts(new_stack: Stack) -> None:
    base = new_stack.add_api()
    new_stack.add_worker("cpu", threads=1)
    body = {
        "task_type": "object_removal",
        "image": _b64(gradient(2048)),
        "parameters": {"boxes": [[100, 100, 1900, 1900]], "method": "ns"},
    }
    blocker = submit(base, body)  # keeps the worker busy while the api restarts
    task_id = submit(base, body)
    watcher = start("watch", task_id, "--json", "-o", os.devnull, base=base)
    time.sleep(1.0)
    new_stack.restart_api(base)
    stdout, stderr = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert_contiguous(events)
    assert events[-1]["type"] == "succeeded"
    assert blocker


def test_ctrl_c_leaves_the_task_running_and_says_how_to_resume(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker: the task waits
    task_id = submit(base, {"task_type": "background_removal", "image": _b64(two_tone())})
    watcher = start("watch", task_id, base=base)
    time.sleep(1.5)
    watcher.send_signal(signal.SIGINT)
    _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 130
    assert f"livepix watch {task_id}" in stderr
    status = json.loads(livepix("status", task_id, base=base).stdout)
    assert status["status"] == "PENDING"


def _events(task_id: str = "t") -> list[Event]:
    base = {"task_id": task_id, "ts": 1.0}
    return [parse_event(e) for e in (
        {**base, "seq": 1, "type": "queued", "status": "PENDING", "message": "Queued", "position": 2, "eta_s": 14.2},
        {**base, "seq": 2, "type": "started", "status": "PROCESSING", "message": "Started", "queue": "cpu"},
        {**base, "seq": 3, "type": "progress", "status": "PROCESSING", "progress": 40, "message": "Inpainting",
         "eta_s": 12.0, "step": 4, "total": 10},
        {**base, "seq": 4, "type": "succeeded", "status": "SUCCESS", "progress": 100, "message": "Done",
         "result": {"status": "SUCCESS", "image_data": "", "metadata": {}}},
    )]


def test_progress_off_a_terminal_is_one_stable_plain_line_per_change() -> None:
    out = io.StringIO()
    view = ProgressView(out)
    for event in _events():
        view.show(event)
    view.close()
    assert out.getvalue().splitlines() == [
        "queued: position 2, about 14 s",
        "[....................]   0% Started",
        "[########............]  40% Inpainting",
        "succeeded: Done",
    ]


def test_progress_on_a_terminal_is_a_live_bar_with_percent_and_eta() -> None:
    out = io.StringIO()
    view = ProgressView(out, Console(file=out, force_terminal=True, width=100, color_system=None))
    events = _events()
    view.show(events[0])
    queued = out.getvalue()
    for event in events[1:]:
        view.show(event)
    text = out.getvalue()
    assert "queued: position 2" in queued and "ETA 0:14" in queued
    assert "Inpainting" in text and "40%" in text and "ETA 0:12" in text
    assert "━" in text  # rich's bar
    assert text.rstrip().endswith("succeeded: Done")

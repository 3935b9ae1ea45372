"""`livepix serve`: everything from one command, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from livepix.processes import free_port
from tests.clients import API, png_b64, sse_events, submit, two_tone


def start_serve(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(LIVEPIX_DATA_DIR=str(data))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "livepix", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            ready = httpx.get(base + API + "/readyz", timeout=1)
            queues = httpx.get(base + API + "/queues", timeout=1).json()
            if ready.status_code == 200 and queues["workers"] >= 2:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def stop_serve(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4  # redis, api, two workers
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    return [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_serve_runs_everything_and_ctrl_c_leaves_no_process(tmp_path: Path, data_dir: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_dir / "models", data / "models")
    port = free_port()
    log = tmp_path / "serve.log"

    proc = start_serve(data, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        task_id = submit(base, {"task_type": "background_removal", "image": png_b64(two_tone())})
        assert sse_events(base, task_id)[-1]["type"] == "succeeded"
        page = httpx.get(base + "/")
        assert page.status_code == 200
    finally:
        leftovers = stop_serve(proc)
    assert leftovers == [], leftovers
    assert (data / "redis").is_dir()

    # The embedded Redis keeps its AOF: the result survives a restart.
    proc = start_serve(data, port, log)
    try:
        result = httpx.get(f"{base}{API}/tasks/{task_id}/result/").json()
        assert result["status"] == "SUCCESS" and result["result"]["image_data"]
    finally:
        assert stop_serve(proc) == []

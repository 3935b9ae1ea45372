"""Fixtures: a real redis-server, real `livepix` api and worker processes, tiny models.

Each stack of processes uses its own Redis database number, so that stacks with
different workers never take each other's queued tasks.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from actors.engines.lama import model_path as lama_model_path
from livepix.config import Settings
from livepix.processes import free_port, redis_server_binary
from livepix.wire import workers_key
from tests.models import build_tiny_u2net
from tests.models_lama import build_tiny_lama


class RedisProcess:
    """A redis-server on a free port with AOF on, that a test can stop and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--save", "",
                "--databases", "64",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # SHUTDOWN: the AOF is flushed
            self.proc.wait(20)
        self.proc = None


class Process:
    """A `livepix` child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "livepix", *args],
            env={**os.environ, **env},
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} ---\n" + "\n".join(text[-lines:])


_db_numbers = itertools.count(1)


class Stack:
    """Api and worker processes of one test scenario, sharing one Redis database."""

    def __init__(self, redis_url: str, data_dir: Path, log_dir: Path, **env: str) -> None:
        self.redis_url = redis_url
        self.env = {
            "REDIS_URL": redis_url,
            "LIVEPIX_DATA_DIR": str(data_dir),
            "LIVEPIX_LOG_LEVEL": "info",
            "HF_HUB_OFFLINE": "1",  # tests never download a model
            **env,
        }
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self.api_urls: list[str] = []

    def add_api(self, port: int | None = None) -> str:
        port = port or free_port()
        name = f"api-{len(self.processes)}"
        proc = Process(name, ["api", "--port", str(port)], self.env, self.log_dir)
        self.processes.append(proc)
        url = f"http://127.0.0.1:{port}"
        key = self.env.get("LIVEPIX_API_KEYS", "").split(",")[0]
        wait_ready(url, proc, {"Authorization": f"Bearer {key}"} if key else {})
        if url not in self.api_urls:
            self.api_urls.append(url)
        return url

    def restart_api(self, url: str, down_s: float = 1.0) -> None:
        """Stop the api serving `url` (SIGTERM), wait, and start a new one on its port."""
        port = int(url.rsplit(":", 1)[1])
        for proc in self.processes:
            if proc.name.startswith("api") and f"--port {port}" in " ".join(proc.proc.args):
                proc.stop()
        time.sleep(down_s)
        self.add_api(port)

    def add_worker(self, queues: str, threads: int = 1) -> Process:
        name = f"worker-{queues.replace(',', '-')}-{len(self.processes)}"
        args = ["worker", "--queues", queues, "--threads", str(threads)]
        proc = Process(name, args, self.env, self.log_dir)
        self.processes.append(proc)
        wait_worker(self.redis_url, len([p for p in self.processes if p.name.startswith("worker")]))
        return proc

    @property
    def url(self) -> str:
        return self.api_urls[0]

    def stop(self) -> None:
        for proc in self.processes:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)


def wait_ready(url: str, proc: Process, headers: dict[str, str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early\n{proc.tail()}")
        try:
            if httpx.get(url + "/api/v1/readyz", headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready\n{proc.tail()}")


def wait_worker(redis_url: str, count: int, timeout_s: float = 60) -> None:
    """Wait until `count` workers have registered their heartbeat."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while client.zcard(workers_key()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError("worker did not register")
            time.sleep(0.1)
    finally:
        client.close()


@pytest.fixture(scope="session", autouse=True)
def no_rembg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Models rembg downloaded on this machine (~/.u2net) stay out of the tests: the
    workers and CLIs they start would link them in instead of fetching."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("U2NET_HOME", str(tmp_path_factory.mktemp("u2net-home")))
        yield


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A livepix data dir holding a tiny u2net and a tiny LaMa where the default rembg and
    LaMa models live: object removal's default (`auto`, LaMa) never tries the network."""
    root = tmp_path_factory.mktemp("data")
    build_tiny_u2net(root / "models" / "rembg" / "models" / "u2net" / "u2net.onnx")
    build_tiny_lama(lama_model_path(Settings(data_dir=str(root))))
    # rembg imports pymatting, whose numba functions compile on the first import after
    # an install (about 40 s here) and are cached from then on. Pay that once, here,
    # rather than inside the time bound of whichever test's task loads rembg first.
    subprocess.run([sys.executable, "-c", "import rembg"], check=True, timeout=600)
    return root


@pytest.fixture(scope="session")
def stack(
    redis_server: RedisProcess, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The shared service: two api processes, a gpu worker and a two-thread cpu worker."""
    s = Stack(redis_server.url(0), data_dir, tmp_path_factory.mktemp("logs"))
    try:
        s.add_api()
        s.add_api()
        s.add_worker("gpu")
        s.add_worker("cpu", threads=2)
        yield s
    finally:
        s.stop()


def fresh_stack(redis_server: RedisProcess, data_dir: Path, log_dir: Path) -> Stack:
    """An empty stack on a Redis database of its own."""
    return Stack(redis_server.url(next(_db_numbers)), data_dir, log_dir)


@pytest.fixture
def new_stack(
    redis_server: RedisProcess, data_dir: Path, tmp_path: Path
) -> Iterator[Stack]:
    """An empty stack on a fresh Redis database: the test adds the processes it needs."""
    s = fresh_stack(redis_server, data_dir, tmp_path)
    yield s
    s.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, show the tail of every process log the test used."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for name in ("stack", "new_stack", "gpu"):
            s = item.funcargs.get(name) if hasattr(item, "funcargs") else None  # type: ignore[attr-defined]
            if isinstance(s, Stack):
                report.sections.append((f"{name} logs", s.logs()))

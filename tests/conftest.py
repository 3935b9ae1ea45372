"""Fixtures: a real redis-server, real `livepix` api and worker processes, tiny models.

Each stack of processes uses its own Redis database number, so that stacks with
different workers never take each other's queued tasks.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.engines.lama import model_path as lama_model_path
from livepix.config import Settings
from livepix.processes import Child, RedisServer, free_port, livepix_child, wait_http, wait_workers
from tests.models import build_tiny_u2net
from tests.models_lama import build_tiny_lama

DATABASES = 512  # one per stack of processes; the last for tests that use Redis alone


def redis_process(data_dir: Path) -> RedisServer:
    """A test Redis with a database per stack of processes."""
    return RedisServer(data_dir, databases=DATABASES, log_path=data_dir / "redis.log")


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
        self.processes: list[Child] = []
        self.api_urls: list[str] = []

    def add_api(self, port: int | None = None) -> str:
        port = port or free_port()
        name = f"api-{len(self.processes)}"
        proc = livepix_child(name, ["api", "--port", str(port)], self.env, log_path=self.log_dir / f"{name}.log").start()
        self.processes.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/api/v1/readyz", proc)
        if url not in self.api_urls:
            self.api_urls.append(url)
        return url

    def restart_api(self, url: str, down_s: float = 1.0) -> None:
        """Stop the api serving `url` (SIGTERM), wait, and start a new one on its port."""
        port = int(url.rsplit(":", 1)[1])
        for proc in self.processes:
            if proc.name.startswith("api") and f"--port {port}" in " ".join(proc.argv):
                proc.stop()
        time.sleep(down_s)
        self.add_api(port)

    def add_worker(self, queues: str, threads: int = 1) -> Child:
        name = f"worker-{queues.replace(',', '-')}-{len(self.processes)}"
        args = ["worker", "--queues", queues, "--threads", str(threads)]
        proc = livepix_child(name, args, self.env, log_path=self.log_dir / f"{name}.log").start()
        self.processes.append(proc)
        # all the workers started so far, though a test may have killed some: only the new
        # one is watched for an early exit
        workers = [p for p in self.processes if p.name.startswith("worker")]
        wait_workers(self.redis_url, len(workers), [proc])
        return proc

    @property
    def url(self) -> str:
        return self.api_urls[0]

    def stop(self) -> None:
        for proc in self.processes:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)


@pytest.fixture(scope="session", autouse=True)
def no_rembg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Models rembg downloaded on this machine (~/.u2net) stay out of the tests: the
    workers and CLIs they start would link them in instead of fetching."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("U2NET_HOME", str(tmp_path_factory.mktemp("u2net-home")))
        yield


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = redis_process(tmp_path_factory.mktemp("redis")).start()
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
    redis_server: RedisServer, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
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


def fresh_stack(redis_server: RedisServer, data_dir: Path, log_dir: Path) -> Stack:
    """An empty stack on a Redis database of its own."""
    return Stack(redis_server.url(next(_db_numbers)), data_dir, log_dir)


@pytest.fixture
def new_stack(
    redis_server: RedisServer, data_dir: Path, tmp_path: Path
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
        for name in ("stack", "new_stack", "gpu", "on_cluster"):
            s = item.funcargs.get(name) if hasattr(item, "funcargs") else None  # type: ignore[attr-defined]
            if isinstance(s, Stack):
                report.sections.append((f"{name} logs", s.logs()))

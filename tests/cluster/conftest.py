"""A real Redis Cluster (3 masters, each with a replica; Redis >= 7 for sharded pub/sub)
with 2 api and 2 worker processes on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from livepix.processes import RedisCluster, redis_server_at_least
from tests.conftest import Stack


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    binary = redis_server_at_least((7, 0))
    if binary is None:
        pytest.skip("no redis-server 7 or newer (apt-get install redis-server): sharded pub/sub needs it")
    nodes = RedisCluster(tmp_path_factory.mktemp("cluster"), binary).start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def on_cluster(cluster: RedisCluster, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two api processes and two cpu workers on the cluster."""
    stack = Stack(cluster.url, data_dir, tmp_path_factory.mktemp("cluster-logs"))
    try:
        stack.add_api()
        stack.add_api()
        stack.add_worker("cpu")
        stack.add_worker("cpu")
        yield stack
    finally:
        stack.stop()

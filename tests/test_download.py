"""Download progress events and `fetch` (local files, no network)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors.engines import Report, background
from actors.engines.download import REPORT_INTERVAL_S, Progress, fetch, size_text
from actors.errors import ModelUnavailableError, TaskCancelledError
from livepix.config import Settings
from tests.models import build_tiny_u2net


def recorder(seen: list[tuple[float, str]]) -> Report:
    def report(percent: float, message: str, **_: Any) -> None:
        seen.append((percent, message))

    return report


def test_progress_reports_bytes_between_its_bounds_and_always_the_end() -> None:
    seen: list[tuple[float, str]] = []

    def report(percent: float, message: str, **_: Any) -> None:
        seen.append((percent, message))

    progress = Progress(report, "the model", 10, 20)
    progress.total = 200_000_000
    for _ in range(4):
        progress.advance(50_000_000)
    assert seen[0] == (12.5, "Fetching the model: 50 MB of 200 MB")  # the first report at once
    assert seen[-1] == (20.0, "Fetching the model: 200 MB of 200 MB")  # the end is never throttled
    assert len(seen) == 2  # the middle ones were throttled


def test_progress_without_a_length_counts_bytes() -> None:
    seen: list[str] = []
    progress = Progress(lambda p, m, **_: seen.append(m), "x", 5, 6)
    progress.advance(1_500_000)
    assert seen == ["Fetching x: 1.5 MB"]


def test_progress_never_moves_back_when_the_total_grows() -> None:
    seen: list[tuple[float, str]] = []
    progress = Progress(recorder(seen), "x", 0, 100)
    progress.total = 1_000_000
    progress.advance(1_000_000)  # all that is known is done...
    progress.total = 4_000_000_000  # ...until a big file starts
    time.sleep(REPORT_INTERVAL_S)
    progress.advance(1_000_000)
    assert seen == [(100, "Fetching x: 1.0 MB of 1.0 MB"), (100, "Fetching x: 2.0 MB of 4.0 GB")]


def test_fetch_keeps_a_file_only_when_its_checksum_matches(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"weights" * 1000)
    target = tmp_path / "data" / "model.onnx"
    seen: list[tuple[float, str]] = []
    progress = Progress(recorder(seen), "the model", 2, 8)
    with pytest.raises(ModelUnavailableError, match="checksum") as failure:
        fetch(source.as_uri(), target, progress, source="the model", hint="set X", md5="0" * 32)
    assert failure.value.message.endswith("set X")
    assert not target.exists() and not list(target.parent.iterdir())

    good = hashlib.md5(source.read_bytes()).hexdigest()
    fetch(source.as_uri(), target, Progress(recorder(seen), "the model", 2, 8),
          source="the model", hint="set X", md5=good)
    assert target.read_bytes() == source.read_bytes()
    assert seen[-1] == (8, "Fetching the model: 0.0 MB of 0.0 MB")


def test_fetch_of_an_unreachable_url_names_the_source_and_the_hint(tmp_path: Path) -> None:
    progress = Progress(recorder([]), "the model", 2, 8)
    with pytest.raises(ModelUnavailableError) as failure:
        fetch("http://127.0.0.1:9/m.onnx", tmp_path / "m.onnx", progress, source="SETTING=url", hint="do Y")
    assert failure.value.message.startswith("SETTING=url could not be fetched (")
    assert failure.value.message.endswith("; do Y")
    assert not list(tmp_path.iterdir())


def test_a_cancel_during_fetch_leaves_no_partial_file(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"\0" * 3_000_000)

    def report(percent: float, message: str, **_: Any) -> None:
        if " of " in message:
            raise TaskCancelledError("cancelled")

    target = tmp_path / "data" / "big.bin"
    with pytest.raises(TaskCancelledError):
        fetch(source.as_uri(), target, Progress(report, "big", 2, 8), source="big", hint="")
    assert not list(target.parent.iterdir())


def test_sizes_read_in_mb_then_gb() -> None:
    assert [size_text(n) for n in (1_500_000, 812_000_000, 4_300_000_000)] == ["1.5 MB", "812 MB", "4.3 GB"]


def test_a_local_file_error_names_the_error_but_not_the_worker_s_paths(tmp_path: Path) -> None:
    blocker = tmp_path / "models"
    blocker.write_bytes(b"a file where the model folder should be")
    progress = Progress(recorder([]), "the model", 2, 8)
    with pytest.raises(ModelUnavailableError) as failure:
        fetch("http://127.0.0.1:9/m.onnx", blocker / "m.onnx", progress, source="SETTING=url", hint="do Y")
    message = failure.value.message
    assert message.startswith("SETTING=url could not be fetched (") and message.endswith("; do Y")
    assert str(tmp_path) not in message


def test_a_download_cut_short_is_not_kept_and_an_http_error_is_named(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(count: int) -> None:
        for _ in range(count):
            conn, _ = listener.accept()
            with conn:
                request = conn.recv(65536)
                if b" /gone " in request:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                else:  # promises 1,000 bytes, sends 10, hangs up
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + b"x" * 10)

    server = threading.Thread(target=serve, args=(2,), daemon=True)
    server.start()
    try:
        target = tmp_path / "m.onnx"
        with pytest.raises(ModelUnavailableError, match=r"\(ConnectionError: got 10 of 1000 bytes\); do Y"):
            fetch(f"http://127.0.0.1:{port}/m.onnx", target, Progress(recorder([]), "m", 2, 8), source="S", hint="do Y")
        assert not list(tmp_path.iterdir())
        with pytest.raises(ModelUnavailableError, match=r"\(HTTPError: HTTP Error 404: Not Found\); do Y"):
            fetch(f"http://127.0.0.1:{port}/gone", target, Progress(recorder([]), "m", 2, 8), source="S", hint="do Y")
    finally:
        server.join(5)
        listener.close()


@pytest.mark.parametrize("matches", [True, False])
def test_a_rembg_model_that_rembg_already_downloaded_is_linked_in_if_its_md5_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, matches: bool
) -> None:
    legacy = tmp_path / "u2net-home"
    legacy.mkdir()
    model = build_tiny_u2net(legacy / "u2net.onnx")
    digest = hashlib.md5(model.read_bytes()).hexdigest()
    monkeypatch.setenv("U2NET_HOME", str(legacy))
    monkeypatch.setitem(background.MODEL_MD5, "u2net", digest if matches else "0" * 32)
    # the mirror is unreachable: only the legacy file can make this work
    settings = Settings(data_dir=str(tmp_path / "data"), rembg_model="u2net", rembg_mirror="http://127.0.0.1:9/")
    seen: list[tuple[float, str]] = []
    if matches:
        path = background.fetch(settings, recorder(seen))
        assert path == background.model_file(settings) and path.read_bytes() == model.read_bytes()
        assert seen[-1][1] == "Found the rembg model u2net in rembg's own folder"
        assert background.fetch(settings, recorder(seen)) == path  # in the data dir now
    else:
        with pytest.raises(ModelUnavailableError, match="could not be fetched"):
            background.fetch(settings, recorder(seen))
        assert not background.model_file(settings).exists()
    assert model.is_file() and not list(background.model_file(settings).parent.glob("*.part"))

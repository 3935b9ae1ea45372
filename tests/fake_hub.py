"""Loopback stand-ins for model hosts: a Hugging Face hub serving one repo, and a plain
file server. Both send bodies slowly, so that a download spans a few seconds and its
progress can be watched; neither touches the real network.

The hub implements only what huggingface_hub 2.4 and diffusers 0.42 call while
fetching a pipeline: repo info, the file tree, and HEAD + GET on `resolve` URLs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHUNK_BYTES = 8192


class SlowServer(ABC):
    """A threaded HTTP server on a free loopback port whose bodies trickle out.

    `bytes_per_s` is shared by every response: bodies are sent one at a time (headers
    go out at once), so that the files of a parallel download complete one after another.
    """

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self.requests: list[tuple[str, str]] = []
        self._body_lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fetches(self) -> list[str]:
        """The paths of the GET requests served so far."""
        return [path for method, path in self.requests if method == "GET"]

    @abstractmethod
    def answer(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for a request; subclasses serve their content."""

    def send_body(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._body_lock:
            pause = CHUNK_BYTES / self.bytes_per_s
            for start in range(0, len(body), CHUNK_BYTES):
                handler.wfile.write(body[start : start + CHUNK_BYTES])
                handler.wfile.flush()
                time.sleep(pause)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._serve("HEAD")

            def do_GET(self) -> None:
                self._serve("GET")

            def _serve(self, method: str) -> None:
                parts = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(parts.path)
                server.requests.append((method, path))
                status, headers, body = server.answer(method, path, urllib.parse.parse_qs(parts.query))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "GET" and body and headers.get("Content-Type") != "application/json":
                    try:
                        server.send_body(self, body)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client gave up (a cancelled task): nothing to send to
                elif method == "GET":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class FileServer(SlowServer):
    """Serves `files` (URL path -> bytes), slowly."""

    def __init__(self, files: dict[str, bytes], bytes_per_s: float = 200_000) -> None:
        super().__init__(bytes_per_s)
        self.files = files

    def answer(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        body = self.files.get(path)
        if body is None:
            return 404, {}, b"not found"
        return 200, {"Content-Type": "application/octet-stream"}, body


class FakeHub(SlowServer):
    """One model repo, `repo_id`, whose files are those under `folder`, at one commit."""

    def __init__(self, repo_id: str, folder: Path, bytes_per_s: float = 350_000) -> None:
        super().__init__(bytes_per_s)
        self.repo_id = repo_id
        self.files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }
        self.commit = hashlib.sha1(repr(sorted(self.files)).encode()).hexdigest()

    def total_bytes(self, names: list[str] | None = None) -> int:
        return sum(len(body) for name, body in self.files.items() if names is None or name in names)

    def answer(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        api = f"/api/models/{self.repo_id}"
        resolve = f"/{self.repo_id}/resolve/"
        if path == api or path.startswith(api + "/revision/"):
            return self._json(self._info())
        if path.startswith(api + "/tree/"):
            return self._json(self._tree())
        if path.startswith(resolve):
            name = path[len(resolve) :].split("/", 1)[1]  # after the revision
            body = self.files.get(name)
            if body is None:
                return 404, {"X-Error-Code": "EntryNotFound"}, b"Entry not found"
            headers = {
                "X-Repo-Commit": self.commit,
                "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            return 200, headers, body
        return 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"

    def _info(self) -> dict[str, Any]:
        return {
            "id": self.repo_id,
            "modelId": self.repo_id,
            "sha": self.commit,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": ["diffusers"],
            "siblings": [{"rfilename": name} for name in self.files],
        }

    def _tree(self) -> list[dict[str, Any]]:
        return [
            {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
            for name, body in self.files.items()
        ]

    @staticmethod
    def _json(value: object) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, json.dumps(value).encode()


@contextmanager
def serving(server: SlowServer) -> Iterator[SlowServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()

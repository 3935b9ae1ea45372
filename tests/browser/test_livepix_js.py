"""static/livepix.js, the public browser client, in real headless Chromium against real
api and worker processes: what the UI tests do not reach (resume after the api
restarts, the EventSource fallback, stream tokens, errors, a page of another origin).

The module is loaded with a dynamic `import()` into a page of the api's origin that runs
nothing else (the module's own source, shown as text).
"""

from __future__ import annotations

import http.server
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from livepix.processes import free_port
from tests.browser.conftest import Page
from tests.browser.test_ui import write_png
from tests.clients import (
    noise,
    png_b64,
    slow_removal,
    sse_events,
    submit,
    two_tone,
    wait_status,
)
from tests.conftest import Stack

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e .[test])")

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

README = Path(__file__).resolve().parents[2] / "README.md"
API_KEY = "js-key-0123456789"

# Runs in the page: imports the module, then the test's body, as an async function.
# `log(...)` appends to window.__log, which the test reads while the body still runs.
PRELUDE = """
const done = arguments[arguments.length - 1];
const args = [...arguments].slice(0, -1);
window.__log = window.__log || [];
const log = (entry) => window.__log.push(entry);
(async () => {
  const { LivepixClient, LivepixError } = await import('/static/livepix.js');
  %s
})().then(done, (e) => done({ thrown: String(e && e.stack || e), code: e && e.code }));
"""


def js(page: Page, body: str, *args: Any, timeout_s: float = 60) -> Any:
    """Runs `body` (async JS, with `LivepixClient`, `args` and `log` in scope); its result."""
    page.driver.set_script_timeout(timeout_s)
    result = page.driver.execute_async_script(PRELUDE % body, *args)
    assert not (isinstance(result, dict) and "thrown" in result), result
    return result


def open_blank(page: Page, base: str) -> None:
    page.driver.get(base + "/static/livepix.js")


def page_log(page: Page) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = page.driver.execute_script("return window.__log || []")
    return log


def wait_log(page: Page, condition: Any, what: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def check(_: Any) -> bool:
        found[:] = page_log(page)
        return bool(condition(found))

    WebDriverWait(page.driver, timeout_s, poll_frequency=0.05).until(
        check, message=f"timed out after {timeout_s} s waiting for {what}"
    )
    return found


# Records every callback of a watch into the page's log.
RECORD = """
const record = (name) => (event) => log({ cb: name, seq: event.seq, type: event.type });
const callbacks = {
  onQueued: record('onQueued'), onStarted: record('onStarted'), onProgress: record('onProgress'),
  onSucceeded: record('onSucceeded'), onFailed: record('onFailed'), onCancelled: record('onCancelled'),
  onEvent: (event) => log({ seq: event.seq, type: event.type, replaces: event.replaces || [] }),
  onGap: (missing) => log({ gap: missing }),
  onError: (error) => log({ error: error.code }),
};
"""


def test_run_calls_each_typed_callback_then_on_event_for_every_event_in_order(
    page: Page, stack: Stack
) -> None:
    open_blank(page, stack.url)
    image = png_b64(two_tone(96, 64))
    out = js(
        page,
        RECORD
        + """
        const states = [];
        const client = new LivepixClient({ onConnection: (s) => states.push(s.state) });
        let submitted = null;
        const final = await client.run({ task_type: 'background_removal', image: args[0] },
          { ...callbacks, onSubmitted: (answer) => { submitted = answer; } });
        // the same client: a task refused, with the server's code and details
        let refused = null;
        try { await client.submit({ task_type: 'background_removal' }); } catch (e) {
          refused = { isError: e instanceof LivepixError, code: e.code, details: e.details,
                      body: e.toJSON() };
        }
        const status = await client.status(final.task_id);
        client.close();
        return { final, submitted, refused, status, states, connection: client.connection.state };
        """,
        image,
    )
    final = out["final"]
    assert final["type"] == "succeeded" and final["status"] == "SUCCESS"
    assert final["task_id"] == out["submitted"]["task_id"]
    assert final["result"]["image_data"]  # inline base64 PNG
    log = page_log(page)
    events = [e for e in log if "cb" not in e]
    assert [e["seq"] for e in events] == list(range(1, final["seq"] + 1))
    assert events[0]["type"] == "queued" and events[-1]["type"] == "succeeded"
    assert not any("gap" in e or "error" in e for e in log)
    # every event went to its typed callback first, then to onEvent
    typed = {"queued": "onQueued", "started": "onStarted", "progress": "onProgress",
             "succeeded": "onSucceeded"}
    calls = [e for e in log if "cb" in e or "seq" in e]
    for first, second in zip(calls[0::2], calls[1::2], strict=True):
        assert first["cb"] == typed[first["type"]] and "cb" not in second
        assert first["seq"] == second["seq"]
    # the server's own log holds the same events
    assert [(e["seq"], e["type"]) for e in sse_events(stack.url, final["task_id"])] == [
        (e["seq"], e["type"]) for e in events
    ]
    assert out["states"][:2] == ["connecting", "live"] and out["connection"] == "closed"
    assert out["status"]["status"] == "SUCCESS" and out["status"]["seq"] == final["seq"]
    refused = out["refused"]
    assert refused["isError"] and refused["code"] == "invalid_input"
    assert refused["details"]["image"] == ["An image is required for background_removal"]
    assert refused["body"] == {"error": "Invalid input", "code": "invalid_input",
                               "details": refused["details"]}


def test_a_watch_resumes_after_the_api_restarts_without_a_lost_or_repeated_event(
    new_stack: Stack, page: Page
) -> None:
    base = new_stack.add_api()
    new_stack.add_worker("cpu", threads=1)
    blocker = submit(base, slow_removal(1024))  # the task waits behind it
    wait_status(base, blocker, {"PROCESSING"})
    open_blank(page, base)
    # The image is too big for a WebSocket frame (64 KiB): the module submits the task over
    # HTTP, then watches it on the socket.
    image = png_b64(noise(160))
    assert len(image) > 64 * 1024
    task_id = js(
        page,
        RECORD
        + """
        const client = new LivepixClient({
          onConnection: (s) => log({ conn: s.state, code: s.code }) });
        window.__client = client;
        const { task_id } = await client.submit(args[0]);
        const watch = client.watch(task_id, callbacks);
        watch.done.then((e) => log({ final: e.type }), (e) => log({ rejected: e.code }));
        return task_id;
        """,
        {"task_type": "background_removal", "image": image},
    )
    wait_log(page, lambda log: any(e.get("type") == "queued" for e in log), "the queued event")
    new_stack.restart_api(base)  # SIGTERM: the api closes its WebSockets with 1012
    log = wait_log(page, lambda log: any("final" in e or "rejected" in e for e in log),
                   "the final event", 90)

    assert {"final": "succeeded"} in log, log
    events = [e for e in log if "seq" in e and "cb" not in e]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # no loss, no repeat
    assert not any("gap" in e or "error" in e for e in log)
    assert [(e["seq"], e["type"]) for e in sse_events(base, task_id)] == [
        (e["seq"], e["type"]) for e in events
    ]
    conns = [(i, e) for i, e in enumerate(log) if "conn" in e]
    dropped = next(i for i, e in conns if e["conn"] == "reconnecting")
    assert log[dropped]["code"] == 1012
    back = next(i for i, e in conns if i > dropped and e["conn"] in ("live", "fallback"))
    assert any("seq" in e for e in log[back:]), "no event came after the reconnect"
    wait_log(page, lambda log: [e for e in log if "conn" in e][-1]["conn"] == "live",
             "the WebSocket to be live again")
    page.driver.execute_script("window.__client.close()")


class NoWebSocketProxy:
    """A plain TCP relay in front of the api that answers WebSocket handshakes with 502
    while `blocking`, as a proxy without WebSocket support does. Browsers open a
    connection of its own for each WebSocket, so only a connection's first request is
    looked at; the rest of it is relayed byte for byte (SSE included)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.blocking = True
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy.relay(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def relay(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
        if self.blocking and b"upgrade: websocket" in head.lower():
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        with socket.create_connection(self.upstream) as upstream:
            upstream.sendall(head)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the other side is gone: so is this relay


@pytest.fixture
def proxy(stack: Stack) -> Iterator[NoWebSocketProxy]:
    relay = NoWebSocketProxy(stack.url)
    yield relay
    relay.close()


def test_without_websockets_watches_fall_back_to_event_source_and_come_back(
    page: Page, proxy: NoWebSocketProxy
) -> None:
    open_blank(page, proxy.url)  # the module talks to the server it came from: the proxy
    image = png_b64(two_tone(96, 64))
    out = js(
        page,
        RECORD
        + """
        const client = new LivepixClient({
          onConnection: (s) => log({ conn: s.state, code: s.code }) });
        window.__client = client;
        const final = await client.run({ task_type: 'background_removal', image: args[0] }, callbacks);
        return { final, connection: client.connection.state };
        """,
        image,
    )
    assert out["final"]["type"] == "succeeded"
    assert out["connection"] == "fallback"
    log = page_log(page)
    assert [e["conn"] for e in log if "conn" in e][:5] == [
        "connecting", "reconnecting", "connecting", "reconnecting", "fallback"
    ]
    events = [e for e in log if "seq" in e and "cb" not in e]
    assert [e["seq"] for e in events] == list(range(1, out["final"]["seq"] + 1))
    assert not any("gap" in e or "error" in e for e in log)

    proxy.blocking = False  # the WebSocket gets through again: the client goes back to it
    wait_log(page, lambda log: log[-1].get("conn") == "live", "the WebSocket to be live", 30)
    page.driver.execute_script("window.__client.close()")


def test_stream_tokens_api_keys_and_refusals(new_stack: Stack, page: Page) -> None:
    new_stack.env["LIVEPIX_API_KEYS"] = API_KEY
    base = new_stack.add_api()
    new_stack.add_worker("cpu")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    answer = httpx.post(f"{base}/api/v1/tasks/submit/", headers=auth, timeout=30,
                        json={"task_type": "background_removal", "image": png_b64(two_tone())})
    assert answer.status_code == 202
    task_id, token = answer.json()["task_id"], answer.json()["stream_token"]
    other = httpx.post(f"{base}/api/v1/tasks/submit/", headers=auth, timeout=30,
                       json={"task_type": "background_removal", "image": png_b64(two_tone())})
    open_blank(page, base)
    out = js(
        page,
        """
        const [taskId, token, otherId, key, image] = args;
        const outcome = (promise) => promise.then((e) => ({ type: e.type, seq: e.seq }),
                                                  (e) => ({ error: e.code }));
        const seqs = (into) => ({ onEvent: (e) => into.push(e.seq) });
        // a page with only the task's stream token: an EventSource, or the task's WebSocket
        const sse = [], ws = [];
        const viaSse = new LivepixClient();
        const viaWs = new LivepixClient({ transport: 'ws' });
        const results = {
          sse: await outcome(viaSse.watch(taskId, { token, ...seqs(sse) }).done),
          ws: await outcome(viaWs.watch(taskId, { token, ...seqs(ws) }).done),
          // the token is for one task only; a bad one is refused
          otherTask: await outcome(viaSse.watch(otherId, { token }).done),
          badToken: await outcome(viaSse.watch(taskId, { token: 'x.y' }).done),
          // resuming at the end re-reads no event, and still ends the watch
          atTheEnd: await outcome(viaSse.watch(taskId, { token, since: sse[sse.length - 1],
            onEvent: () => log({ repeated: true }) }).done),
          cancelReadOnly: await viaSse.cancel(taskId).then(() => 'ok', (e) => e.code),
        };
        // a wrong API key: the socket is refused, the client says why and stops
        const states = [];
        const wrong = new LivepixClient({ apiKey: 'wrong', onConnection: (s) => states.push(s.state) });
        results.wrongKey = await outcome(wrong.watch(taskId).done);
        results.wrongKeyState = wrong.connection.state;
        // the right key: the multiplexed socket, and a stream token in the submit's answer
        const right = new LivepixClient({ apiKey: key });
        let submitted = null;
        results.withKey = await outcome(right.run({ task_type: 'background_removal', image },
          { onSubmitted: (a) => { submitted = a; } }));
        results.tokenAnswered = typeof submitted.stream_token === 'string';
        results.rightState = right.connection.state;
        results.sse = sse; results.ws = ws;
        for (const c of [viaSse, viaWs, wrong, right]) c.close();
        return results;
        """,
        task_id, token, other.json()["task_id"], API_KEY, png_b64(two_tone()),
    )
    last = out["sse"][-1]
    assert out["sse"] == out["ws"] == list(range(1, last + 1))
    assert out["sse"] and out["ws"]
    assert out["otherTask"] == {"error": "not_found"}
    assert out["badToken"] == {"error": "unauthorized"}
    assert out["atTheEnd"] == {"type": "succeeded", "seq": last}
    assert {"repeated": True} not in page_log(page)
    assert out["cancelReadOnly"] == "unauthorized"
    assert out["wrongKey"] == {"error": "unauthorized"} and out["wrongKeyState"] == "unauthorized"
    assert out["withKey"]["type"] == "succeeded" and out["tokenAnswered"]
    assert out["rightState"] == "live"


def readme_page() -> str:
    """The integration page of the README's "JavaScript module" section."""
    section = README.read_text().split("## JavaScript module", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```html\n(.*?)```", section, re.DOTALL)
    assert match, "the README's JavaScript module section has no html example"
    return match.group(1)


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on another port: pages of another origin than the api."""
    root = tmp_path / "site"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_the_readme_page_runs_a_task_from_another_origin(
    new_stack: Stack, other_origin: tuple[str, Path], page: Page
) -> None:
    origin, root = other_origin
    new_stack.env["LIVEPIX_ALLOWED_ORIGINS"] = origin
    base = new_stack.add_api()
    new_stack.add_worker("cpu")
    html = readme_page()
    assert 'from "http://127.0.0.1:8000/static/livepix.js"' in html
    (root / "index.html").write_text(html.replace("http://127.0.0.1:8000", base))
    page.driver.get(origin + "/index.html")
    page.driver.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(
        str(write_png(page.tmp_path / "subject.png", two_tone(96, 64)))
    )
    out = page.driver.find_element(By.ID, "out")
    WebDriverWait(page.driver, 60, poll_frequency=0.1).until(
        lambda d: d.execute_script("return arguments[0].naturalWidth", out) > 0,
        message="the result image of the README page",
    )
    size = page.driver.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", out
    )
    assert size == [96, 64]
    assert page.driver.find_element(By.ID, "bar").get_attribute("value") != "0"
    # CORS only for the allowed origin: the api's answers name it, and no other
    preflight = httpx.options(f"{base}/api/v1/tasks/submit/", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,idempotency-key",
    })
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    stranger = httpx.get(f"{base}/static/livepix.js", headers={"Origin": "http://elsewhere.test"})
    assert "access-control-allow-origin" not in stranger.headers

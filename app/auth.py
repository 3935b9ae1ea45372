"""Who is asking (SPEC section 6): API keys, task-scoped stream tokens, Origin checks.

Without `LIVEPIX_API_KEYS` everyone is the anonymous owner "" and a task id (UUID4)
is the capability to read a task. With keys, every endpoint but the UI, static files,
healthz and readyz needs `Authorization: Bearer <key>`; a task belongs to the key that
submitted it, and any other key gets 404 for it. Browsers, which cannot set headers on
EventSource and WebSocket, pass `?token=`: either a stream token (read-only, one task,
expiring, HMAC-signed; returned by submit) or, less safely, the API key itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from livepix.config import Settings
from livepix.wire import ErrorCode

# Probes: load balancers rarely send a key, and these tell nothing secret.
PUBLIC_PATHS = ("/healthz", "/api/v1/healthz", "/readyz", "/api/v1/readyz", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity of a request: its owner, and the one task a stream token allows."""

    owner: str
    token_task: str | None = None  # set when authenticated by a stream token: read-only

    @property
    def read_only(self) -> bool:
        return self.token_task is not None

    def may_read(self, task_id: str) -> bool:
        return self.token_task is None or self.token_task == task_id


ANONYMOUS = Caller(owner="")


def owner_of_key(key: str) -> str:
    """A stable, non-secret name for a key: what task hashes store as their owner."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Checks credentials; issues and verifies stream tokens."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = bool(settings.api_keys)
        self._owners = {key: owner_of_key(key) for key in settings.api_keys}
        # Every api process derives the same secret from the same keys: tokens work
        # across a load-balanced fleet with no extra setting.
        self._secret = hashlib.sha256(("livepix-stream-token\0" + "\0".join(sorted(settings.api_keys))).encode()).digest()
        self.token_ttl_s = settings.result_ttl_s
        self.allowed_origins = settings.allowed_origins

    def stream_token(self, task_id: str, owner: str) -> str:
        payload = _b64(json.dumps({"t": task_id, "o": owner, "e": int(time.time()) + self.token_ttl_s}).encode())
        return f"{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()[:18])

    def _verify_token(self, token: str) -> Caller | None:
        payload, _, signature = token.partition(".")
        # compare_digest refuses a str that is not ASCII: a token is, or it is wrong.
        if not signature.isascii() or not payload.isascii():
            return None
        if not signature or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            claims = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(claims, dict) or claims.get("e", 0) < time.time():
            return None
        return Caller(owner=str(claims.get("o", "")), token_task=str(claims.get("t", "")))

    def identify(self, headers: Headers, token: str | None) -> Caller | None:
        """The caller, or None if credentials are required and missing or wrong."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credential.strip() in self._owners:
            return Caller(owner=self._owners[credential.strip()])
        if token:
            if token in self._owners:
                return Caller(owner=self._owners[token])
            return self._verify_token(token)
        return None

    def origin_allowed(self, headers: Headers) -> bool:
        """Browsers send Origin: allow the api's own host and the configured origins."""
        origin = headers.get("origin")
        if origin is None or "*" in self.allowed_origins:
            return True  # not a browser, or explicitly open
        if origin in self.allowed_origins:
            return True
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # "http://[": not a URL, so not an Origin we allow
            return False
        return netloc == headers.get("host", "")


class AuthMiddleware:
    """Sets `state.caller` on every request, refusing the unauthenticated with 401/1008."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        state = scope.setdefault("state", {})
        if scope["type"] == "websocket" and not self.auth.origin_allowed(headers):
            await _refuse(
                scope, receive, send, 403, ErrorCode.FORBIDDEN_ORIGIN.value, "This Origin may not open a WebSocket here"
            )
            return
        if path == "/" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            state["caller"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        token = _query_token(scope)
        caller = self.auth.identify(headers, token)
        if caller is None:
            await _refuse(scope, receive, send, 401, ErrorCode.UNAUTHORIZED.value, "A valid API key is required")
            return
        state["caller"] = caller
        await self.app(scope, receive, send)


def _query_token(scope: Scope) -> str | None:
    query: bytes = scope.get("query_string", b"")
    if not query:
        return None
    values = parse_qs(query.decode("latin-1")).get("token")
    return values[0] if values else None


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
    body = {"error": message, "code": code}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = JSONResponse(body, status_code=status, headers=headers)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    # A WebSocket: refuse the handshake with the same JSON when the server can, else 1008.
    if "websocket.http.response" in scope.get("extensions", {}):
        await WebSocket(scope, receive, send).send_denial_response(response)
    else:
        await send({"type": "websocket.close", "code": 1008})

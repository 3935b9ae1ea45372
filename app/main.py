"""The Starlette application: routes, lifespan (Redis, broker, hub), error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from livepix.config import Settings, load_settings
from livepix.storage import ClusterNodes, OneNode, async_client

from . import routes
from .auth import Authenticator, AuthMiddleware
from .errors import EXCEPTION_HANDLERS, NotFoundError
from .live import Live, Topology
from .metrics import metrics
from .mux import mux_ws
from .openapi import openapi
from .streams import deny, events_sse, task_ws
from .tasks import TaskService
from .upkeep import Upkeep

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
REDIS_POOL_SIZE = 64
API = "/api/v1"


def _both(path: str, endpoint: object, methods: list[str], name: str) -> list[BaseRoute]:
    """The seed's paths end in a slash; accept them with and without it, no redirect."""
    bare = path.rstrip("/")
    return [
        Route(path, endpoint, methods=methods, name=name),  # type: ignore[arg-type]
        Route(bare, endpoint, methods=methods, name=f"{name}_bare"),  # type: ignore[arg-type]
    ]


async def index(request: Request) -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return JSONResponse({"error": "the browser UI is not installed", "code": "not_found"}, 404)
    return FileResponse(page, headers={"Cache-Control": "no-cache"})


def build_routes() -> list[BaseRoute]:
    task = API + "/tasks/{task_id}"
    return [
        Route("/", index, name="index"),
        *_both(API + "/tasks/submit/", routes.submit, ["POST"], "submit"),
        *_both(task + "/status/", routes.status, ["GET"], "status"),
        *_both(task + "/result/", routes.result, ["GET"], "result"),
        *_both(task + "/cancel/", routes.cancel, ["POST"], "cancel"),
        Route(task + "/result.png", routes.result_png, methods=["GET"], name="result_png"),
        Route(task + "/events", events_sse, methods=["GET"], name="events"),
        WebSocketRoute(task + "/ws", task_ws, name="task_ws"),
        WebSocketRoute(API + "/ws", mux_ws, name="ws"),
        Route(API + "/queues", routes.queues, methods=["GET"], name="queues"),
        Route(API + "/healthz", routes.healthz, methods=["GET"], name="healthz"),
        Route(API + "/readyz", routes.readyz, methods=["GET"], name="readyz"),
        Route(API + "/metrics", metrics, methods=["GET"], name="metrics"),
        Route(API + "/openapi.json", openapi, methods=["GET"], name="openapi"),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/readyz", routes.readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        # Before the static Mount, which would answer a WebSocket with a bare 403.
        WebSocketRoute("/{path:path}", unknown_ws),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]


async def unknown_ws(websocket: WebSocket) -> None:
    """A WebSocket to no known path gets the same JSON 404 as HTTP, not a bare 403."""
    await deny(websocket, NotFoundError("Not found"))


def create_app(settings: Settings | None = None) -> Starlette:
    """The api. Under uvicorn, app/server.py sets `state.transports` before it starts,
    so that events can take the prepared-write path (app/live/outlets.py)."""
    settings = settings or load_settings()
    if not settings.redis_url:
        raise ValueError("the api needs REDIS_URL (`livepix serve` sets it for you)")
    redis_url = settings.redis_url
    authenticator = Authenticator(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A blocking pool: a burst of requests waits for a connection (up to 2 s)
        # instead of failing with "Too many connections".
        options: dict[str, Any] = {"max_connections": REDIS_POOL_SIZE, "timeout": 2, "socket_keepalive": True,
                                   "socket_connect_timeout": 2, "socket_timeout": 5}
        client = async_client(redis_url, settings.cluster, decode_responses=True, **options)
        binary = async_client(redis_url, settings.cluster, **options)
        tasks = TaskService(client, binary, settings)
        if settings.cluster:
            # Both learn every node now: the hub places channels by the slot map, and a
            # client first used after its URL's node died could reach no node at all.
            await client.initialize()
            await binary.initialize()
            topology: Topology = ClusterNodes(client, redis_url)
        else:
            topology = OneNode(redis_url)
        live = Live.create(topology, tasks.read_log, tasks.complete_result, settings.sse_keepalive_s,
                           getattr(app.state, "transports", None))
        upkeep = Upkeep(tasks)
        app.state.settings = settings
        app.state.auth = authenticator
        app.state.tasks = tasks
        app.state.live = live
        app.state.upkeep = upkeep
        async with live.running():
            upkeep_task = asyncio.create_task(upkeep.run(), name="livepix-upkeep")
            try:
                yield
            finally:
                upkeep_task.cancel()
                await asyncio.gather(upkeep_task, return_exceptions=True)
        await client.aclose()
        await binary.aclose()

    middleware = [Middleware(AuthMiddleware, authenticator=authenticator)]
    if settings.allowed_origins:
        # The Origins that may open WebSockets may also call the HTTP API and import
        # static/livepix.js (module scripts are fetched with CORS). No cookies: keys travel
        # in `Authorization` or `?token=`. Outside the auth: preflights carry no key.
        cors = Middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
        middleware.insert(0, cors)
    return Starlette(
        routes=build_routes(),
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


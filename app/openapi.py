"""`GET /api/v1/openapi.json`: the API described as OpenAPI 3 (placeholder, being written)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

DOCUMENT: dict[str, object] = {"openapi": "3.1.0", "info": {"title": "livepix", "version": "0.1.0"}, "paths": {}}


async def openapi(request: Request) -> Response:
    return JSONResponse(DOCUMENT)

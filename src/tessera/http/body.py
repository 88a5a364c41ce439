"""Bounded request bodies: refuse with 413 before reading past the limit."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from tessera.oauth.errors import InvalidRequest, OAuthError

__all__ = ["BodyTooLarge", "read_body", "read_json"]


class BodyTooLarge(OAuthError):
    error = "invalid_request"
    status_code = 413


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise InvalidRequest("the body must be application/json")
    raw = await read_body(request, limit)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the body is not valid JSON") from None

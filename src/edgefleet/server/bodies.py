"""Bounded request bodies for routes that stream more than the global body limit."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from edgefleet.errors import InvalidRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


async def bounded_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (PayloadTooLarge) as soon as it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def bounded_model(request: Request, model: type[M], limit: int) -> M:
    """Parse a bounded JSON body into ``model``; InvalidRequest names what is wrong."""
    data = await bounded_body(request, limit)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
        raise InvalidRequest(f"request failed validation: {problems}") from exc

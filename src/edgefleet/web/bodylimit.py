"""A bound on request bodies for every edgefleet HTTP service (pure ASGI middleware)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("edgefleet.http")

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app behind a middleware that read the whole body: the body in one
    message, then the client's own messages (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# JSON can carry a UTF-16 surrogate as an escape (\\ud800), which decodes to a Python string
# that cannot be encoded again: stored, it would break every response that carries it.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _holds_lone_surrogate(body: bytes) -> bool:
    """Whether ``body`` is JSON with a string no response could carry. Decoded only when it
    holds a surrogate escape at all; a pair that encodes a character (an emoji) is fine."""
    if _SURROGATE_ESCAPE.search(body) is None:
        return False
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    except ValueError:
        return False  # not JSON: the handler refuses it with its own reason
    return False


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with 413 before any handler sees them, and a JSON
    body holding a lone UTF-16 surrogate with 422 (nothing is stored that no response could
    carry).

    A declared Content-Length over the bound is refused without reading; a chunked body is
    read up to the bound and then refused, so the handler only ever sees whole bodies.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: Callable[[str], bool] = lambda path: False) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt  # routes that stream large bodies and bound them themselves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            if not declared.isdigit():
                log.warning("refused %s %s: malformed Content-Length", scope["method"], scope["path"])
                await _send_error(send, 400, "invalid_request", "malformed Content-Length")
                return
            if int(declared) > self.max_bytes:
                log.warning("refused %s %s: body of %s bytes over %d", scope["method"], scope["path"],
                            declared.decode(), self.max_bytes)
                await _send_error(send, 413, "payload_too_large", f"body exceeds {self.max_bytes} bytes")
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                log.warning("refused %s %s: chunked body over %d", scope["method"], scope["path"], self.max_bytes)
                await _send_error(send, 413, "payload_too_large", f"body exceeds {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _holds_lone_surrogate(body):
            log.warning("refused %s %s: a string holds a lone UTF-16 surrogate", scope["method"], scope["path"])
            await _send_error(send, 422, "invalid_request", "a string in the body holds a lone UTF-16 surrogate")
            return
        await self.app(scope, _replaying(body, receive), send)

"""A remote session's channel as both ends see it (the agent's and the operator's CLI): a
WebSocket whose binary frames are the stream and whose text frames are control messages
(``protocol/sessions.py``). The websockets library never leaks past this module: a
failure to connect or a dropped link is a TransportError, a refusal a ServerRefused."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edgefleet.errors import BadAnswer, ServerRefused, TransportError
from edgefleet.protocol.base import Strict
from edgefleet.protocol.sessions import CONTROL, MAX_FRAME_BYTES, Control, Eof, Exit

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

KEEPALIVE_SECONDS = 20.0  # a ping this often; a link silent for as long again is dropped


class Channel:
    def __init__(self, connection: ClientConnection) -> None:
        self._ws = connection

    async def send(self, data: bytes) -> None:
        """Stream bytes (split into frames the other end accepts)."""
        from websockets.exceptions import ConnectionClosed

        try:
            for start in range(0, len(data), MAX_FRAME_BYTES):
                await self._ws.send(data[start:start + MAX_FRAME_BYTES])
        except ConnectionClosed as exc:
            raise TransportError(f"session channel closed: {exc}") from exc

    async def control(self, message: Strict) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(message.model_dump_json())
        except ConnectionClosed as exc:
            raise TransportError(f"session channel closed: {exc}") from exc

    async def receive(self) -> bytes | Control | None:
        """The next frame: stream bytes, a control message, or None once the channel closed
        (``closed_reason`` says how)."""
        from websockets.exceptions import ConnectionClosed

        try:
            frame = await self._ws.recv()
        except ConnectionClosed:
            return None
        if isinstance(frame, bytes):
            return frame
        try:
            return CONTROL.validate_json(frame)
        except ValidationError as exc:
            raise BadAnswer(f"malformed control message on the session channel: {exc.error_count()} error(s)") \
                from exc

    @property
    def closed_reason(self) -> str:
        """How the channel closed: the peer's close code and reason, if it gave them."""
        if self._ws.close_code is None or self._ws.close_code == 1006:
            return "the link dropped"
        return f"{self._ws.close_code} {self._ws.close_reason or ''}".strip()

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # the link may be gone: nothing left to close cleanly
            await self.close()


async def connect_channel(url: str, context: ssl.SSLContext, *, headers: Mapping[str, str] | None = None,
                          timeout: float = 30.0) -> Channel:
    """Open a session channel (``wss://``). Raises ServerRefused when the server answers
    the handshake with an HTTP error, TransportError when it cannot be reached."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    try:
        connection = await connect(url, ssl=context, additional_headers=dict(headers or {}), proxy=None,
                                   open_timeout=timeout, max_size=MAX_FRAME_BYTES + 1024,
                                   ping_interval=KEEPALIVE_SECONDS, ping_timeout=KEEPALIVE_SECONDS)
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace")[:300] if exc.response.body else ""
        raise ServerRefused(status, "session_refused", body or f"HTTP {status}") from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise TransportError(f"cannot open the session channel {url}: {exc}") from exc
    return Channel(connection)


def websocket_url(base_url: str, path: str) -> str:
    """``https://host:port`` + ``/path`` as ``wss://host:port/path``."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + path


async def splice(channel: Channel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A forwarded TCP connection over ``channel``, both ways, half-closes included (each
    side sends ``Eof`` when its end stops sending). Returns once both directions ended, the
    peer exited (it could not reach its end) or the link dropped; closes ``writer``."""

    async def outward() -> None:
        while data := await reader.read(16 * 1024):
            await channel.send(data)
        await channel.control(Eof())

    async def inward() -> bool:  # True: the peer has sent all it will
        while (frame := await channel.receive()) is not None:
            if isinstance(frame, bytes):
                writer.write(frame)
                await writer.drain()
            elif isinstance(frame, Eof):
                if writer.can_write_eof():
                    writer.write_eof()
                return True
            elif isinstance(frame, Exit):
                return False
        return False

    sending, receiving = asyncio.ensure_future(outward()), asyncio.ensure_future(inward())
    try:
        with contextlib.suppress(OSError, TransportError):
            if await receiving:
                await sending  # the peer is done: until this end is too
    finally:
        writer.close()
        for task in (sending, receiving):
            task.cancel()
        await asyncio.gather(sending, receiving, return_exceptions=True)

"""The relay of one remote session: the operator's WebSocket and the device's, paired by
the server, with the session's recording and byte counts. Either side ending ends both;
a link that drops (a keep-alive unanswered, a TCP reset) ends the session and says so to
the side still there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketState

from edgefleet.protocol.sessions import CONTROL, MAX_FRAME_BYTES, Control, Ended, Eof, Exit, Refused, Resize
from edgefleet.server.recording import Recording, RecordingFailed

log = logging.getLogger("edgefleet.server.sessions")


@dataclass
class Outcome:
    bytes_in: int = 0  # operator -> device
    bytes_out: int = 0  # device -> operator
    exit_code: int | None = None
    ended_by: str = ""  # why the session ended, in a few words
    refused: Refused | None = None  # the device refused it (its site's policy)


class Throttle:
    """At most ``rate`` bytes a second through one direction (a token bucket one second
    deep): a session never takes a store's whole uplink."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._allowance = rate
        self._at = time.monotonic()

    async def take(self, size: int) -> None:
        now = time.monotonic()
        self._allowance = min(self.rate, self._allowance + (now - self._at) * self.rate) - size
        self._at = now
        if self._allowance < 0:
            await asyncio.sleep(-self._allowance / self.rate)


async def close_both(operator: WebSocket, device: WebSocket, code: int, reason: str) -> None:
    await _close(device, code, reason)
    await _close(operator, code, reason)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):  # the peer may be gone already: nothing to tell it
            await ws.close(code, reason[:120])


async def _frames(ws: WebSocket, side: str, outcome: Outcome) -> AsyncIterator[bytes | Control]:
    """What ``side`` sends, frame by frame, until it leaves or breaks the protocol (then
    ``outcome.ended_by`` says how)."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if len(data) > MAX_FRAME_BYTES:
                outcome.ended_by = f"the {side} sent a frame over the limit"
                return
            yield data
        elif text is not None:
            try:
                control = CONTROL.validate_json(text)
            except ValidationError:
                outcome.ended_by = f"the {side} sent a malformed control message"
                return
            yield control


async def _operator_to_device(operator: WebSocket, device: WebSocket, outcome: Outcome, read_only: bool,
                              recording: Recording | None, throttle: Throttle) -> None:
    async for frame in _frames(operator, "operator", outcome):
        if read_only:
            continue  # a forensic session: nothing reaches the device
        if isinstance(frame, bytes):
            await throttle.take(len(frame))
            outcome.bytes_in += len(frame)
            await device.send_bytes(frame)
        elif isinstance(frame, Resize | Eof):
            if isinstance(frame, Resize) and recording is not None:
                recording.resize(frame.cols, frame.rows)
            await device.send_text(frame.model_dump_json())
    outcome.ended_by = outcome.ended_by or "the operator left"


async def _device_to_operator(device: WebSocket, operator: WebSocket, outcome: Outcome,
                              recording: Recording | None, throttle: Throttle) -> None:
    async for frame in _frames(device, "device", outcome):
        if isinstance(frame, bytes):
            await throttle.take(len(frame))
            outcome.bytes_out += len(frame)
            if recording is not None:
                recording.output(frame)
            await operator.send_bytes(frame)
        elif isinstance(frame, Exit | Eof):
            await operator.send_text(frame.model_dump_json())
            if isinstance(frame, Exit):
                outcome.exit_code, outcome.ended_by = frame.code, f"exited with {frame.code}"
                return
    if not outcome.ended_by:
        outcome.ended_by = "the device's link dropped"
        with contextlib.suppress(Exception):  # the operator may be gone too
            await operator.send_text(Ended(reason=outcome.ended_by).model_dump_json())


async def relay(operator: WebSocket, device: WebSocket, *, read_only: bool, recording: Recording | None,
                bytes_per_second: float) -> Outcome:
    """Carry the session until one side ends it; both sockets are closed on return."""
    outcome = Outcome()
    pumps = [
        asyncio.ensure_future(_operator_to_device(operator, device, outcome, read_only, recording,
                                                  Throttle(bytes_per_second))),
        asyncio.ensure_future(_device_to_operator(device, operator, outcome, recording,
                                                  Throttle(bytes_per_second))),
    ]
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in done:
            error = pump.exception()
            if isinstance(error, RecordingFailed):  # recording cannot be turned off: the session ends
                outcome.ended_by = error.message
                log.error("session ended: %s", error.message)
                with contextlib.suppress(Exception):
                    await operator.send_text(Ended(reason=error.message).model_dump_json())
            elif error is not None:  # a send to a side that has just gone
                outcome.ended_by = outcome.ended_by or "a link dropped"
                log.info("session relay ended: %s", error)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        if recording is not None:
            with contextlib.suppress(RecordingFailed):  # logged where it first failed
                recording.close()
        await close_both(operator, device, 1000, outcome.ended_by)
    return outcome

"""The operator's end of remote sessions (the CLI's ``devices shell``, ``logs`` and
``port-forward``): open a session through the admin API, attach to its channel, and
carry a terminal, a log stream or local TCP connections over it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgefleet.client import AdminClient
from edgefleet.errors import BadAnswer, EdgefleetError, InvalidRequest, TransportError
from edgefleet.protocol.sessions import (
    MAX_COPY_BYTES,
    Ended,
    Eof,
    Exit,
    Ready,
    Refused,
    Resize,
    SessionOpened,
    SessionRequest,
)
from edgefleet.web.channel import Channel, connect_channel, splice, websocket_url
from edgefleet.web.tls import tls_context

log = logging.getLogger("edgefleet.remote")
LINK_DROPPED = 255  # a shell's exit status when the session ended without one (as ssh does)


class SessionRefused(EdgefleetError):
    """The device (its site's policy) or the relay refused or ended the session."""

    code = "session_refused"


@dataclass(frozen=True)
class Operator:
    server: str
    token: str
    ca_file: Path

    def open(self, device_id: str, request: SessionRequest) -> SessionOpened:
        """Raises ServerRefused with the gate's reason (403), NotFound (404)."""
        with AdminClient(self.server, self.token, self.ca_file) as client:
            return client.open_session(device_id, request)

    async def attach(self, opened: SessionOpened) -> Channel:
        """The session's channel, once the device has begun it. Raises SessionRefused when
        the device refuses it (its site's policy) or never answers."""
        channel = await connect_channel(websocket_url(self.server, opened.attach), tls_context(self.ca_file),
                                        headers={"authorization": f"Bearer {self.token}"})
        first = await channel.receive()
        if isinstance(first, Ready):
            return channel
        await channel.__aexit__()
        if isinstance(first, Refused):
            raise SessionRefused(f"the device refused the session: {first.reason}", code=first.code)
        reason = first.reason if isinstance(first, Ended) else channel.closed_reason
        raise SessionRefused(f"the session did not begin: {reason}")

    async def session(self, device_id: str, request: SessionRequest) -> Channel:
        opened = await asyncio.to_thread(self.open, device_id, request)
        return await self.attach(opened)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """The local terminal in raw mode while the remote one runs (keys such as Ctrl-C go to
    the device); whether ``fd`` is a terminal at all."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return size.columns, size.lines


async def carry_terminal(channel: Channel, stdin_fd: int, stdout: BinaryIO) -> int:
    """Keystrokes from ``stdin_fd`` to the device, its output to ``stdout``, resizes as the
    local terminal changes size; the remote exit code (LINK_DROPPED when none came)."""
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes | Resize] = asyncio.Queue()  # b"": local input ended

    def readable() -> None:
        try:
            data = os.read(stdin_fd, 4096)
        except BlockingIOError:
            return
        keys.put_nowait(data)
        if not data:
            loop.remove_reader(stdin_fd)

    async def send_keys() -> None:
        while item := await keys.get():
            if isinstance(item, Resize):
                await channel.control(item)
            else:
                await channel.send(item)
        # Local input ended (a pipe): the remote side reads on until its own exit.

    def resized() -> None:
        cols, rows = terminal_size(stdin_fd)
        keys.put_nowait(Resize(cols=cols, rows=rows))

    reader_thread = None
    try:
        loop.add_reader(stdin_fd, readable)
    except PermissionError:  # a regular file or /dev/null cannot be polled: read it on a thread
        reader_thread = asyncio.ensure_future(asyncio.to_thread(_read_all, stdin_fd, loop, keys))
    with contextlib.suppress(ValueError, RuntimeError):  # not the main thread: no resize signal
        loop.add_signal_handler(signal.SIGWINCH, resized)
    sender = asyncio.ensure_future(send_keys())
    try:
        while (frame := await channel.receive()) is not None:
            if isinstance(frame, bytes):
                stdout.write(frame)
                stdout.flush()
            elif isinstance(frame, Exit):
                return frame.code
            elif isinstance(frame, Ended):
                log.warning("session ended: %s", frame.reason)
        log.warning("session ended: %s", channel.closed_reason)
        return LINK_DROPPED
    finally:
        if reader_thread is None:
            loop.remove_reader(stdin_fd)
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(signal.SIGWINCH)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, TransportError):
            await sender
        with contextlib.suppress(Exception):
            await channel.close()


def _read_all(fd: int, loop: asyncio.AbstractEventLoop, keys: asyncio.Queue[bytes | Resize]) -> None:
    while True:
        data = os.read(fd, 4096)
        loop.call_soon_threadsafe(keys.put_nowait, data)
        if not data:
            return


async def stream(channel: Channel, stdout: BinaryIO) -> int:
    """A logs session's output to ``stdout`` until it ends (or the user interrupts)."""
    try:
        while (frame := await channel.receive()) is not None:
            if isinstance(frame, bytes):
                stdout.write(frame.replace(b"\r\n", b"\n"))
                stdout.flush()
            elif isinstance(frame, Exit):
                return frame.code
        return 0 if channel.close_code == 1000 else LINK_DROPPED
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def forward_port(operator: Operator, device_id: str, local: tuple[str, int], remote_port: int,
                       ready: Callable[[int], None] | None = None, stop: asyncio.Event | None = None) -> None:
    """Listen on ``local``; each connection becomes its own session to ``remote_port`` on
    the device's loopback. ``ready`` hears the port listened on; runs until ``stop``."""
    request = SessionRequest(verb="forward", port=remote_port)

    connections: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await carry(reader, writer)
        finally:
            connections.discard(task)

    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            channel = await operator.session(device_id, request)
        except EdgefleetError as exc:
            print(f"port-forward: {exc}", file=sys.stderr)
            writer.close()
            return
        try:
            await splice(channel, reader, writer)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    server = await asyncio.start_server(connected, local[0], local[1])
    port = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(port)
    try:
        async with server:
            await (stop or asyncio.Event()).wait()
    finally:  # connections still open end with the forward
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


def cast_events(data: bytes) -> tuple[dict[str, object], list[tuple[float, str, str]]]:
    """An asciicast v2 recording's header and its events. Raises BadAnswer when it is not one."""
    lines = data.decode("utf-8", "replace").splitlines()
    try:
        header = json.loads(lines[0])
        events = [(float(t), str(code), str(text)) for t, code, text in map(json.loads, filter(None, lines[1:]))]
    except (IndexError, ValueError, TypeError) as exc:
        raise BadAnswer(f"not an asciicast v2 recording: {exc}") from exc
    if not isinstance(header, dict) or header.get("version") != 2:
        raise BadAnswer("not an asciicast v2 recording: its header names no version 2")
    return header, events


def replay(data: bytes, out: BinaryIO, *, speed: float = 1.0, max_idle: float = 2.0,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Print a recording's output as it came (``speed`` times faster, pauses capped at
    ``max_idle`` seconds; speed 0: all at once)."""
    _, events = cast_events(data)
    at = 0.0
    for t, code, text in events:
        if speed > 0:
            sleep(min(max(t - at, 0.0), max_idle) / speed)
        at = t
        if code == "o":
            out.write(text.encode())
            out.flush()


async def copy_from_device(operator: Operator, device_id: str, remote: str, local: Path) -> int:
    """The device's file ``remote`` into ``local`` (written beside it, then renamed); its size."""
    request = SessionRequest(verb="copy", direction="get", path=remote)
    partial = local.with_name(f".{local.name}.partial")
    received = 0
    async with await operator.session(device_id, request) as channel:
        try:
            handle = await asyncio.to_thread(partial.open, "wb")
        except OSError as exc:
            raise InvalidRequest(f"cannot write {local}: {exc.strerror}", code="local_file") from exc
        with handle:
            while (frame := await channel.receive()) is not None:
                if isinstance(frame, bytes):
                    received += len(frame)
                    if received > MAX_COPY_BYTES:
                        break
                    handle.write(frame)
                elif isinstance(frame, Exit):
                    if frame.code != 0:
                        break
                    handle.close()
                    partial.replace(local)
                    return received
    partial.unlink(missing_ok=True)
    raise SessionRefused(f"the copy of {device_id}:{remote} did not complete ({channel.closed_reason})")


async def copy_to_device(operator: Operator, device_id: str, local: Path, remote: str) -> int:
    """``local`` onto the device as ``remote``, replacing it only once all of it arrived."""
    try:
        data = await asyncio.to_thread(local.read_bytes)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {local}: {exc.strerror}", code="local_file") from exc
    if len(data) > MAX_COPY_BYTES:
        raise SessionRefused(f"{local} has {len(data)} bytes; at most {MAX_COPY_BYTES} go in one copy")
    request = SessionRequest(verb="copy", direction="put", path=remote, size=len(data))
    async with await operator.session(device_id, request) as channel:
        await channel.send(data)
        await channel.control(Eof())
        while (frame := await channel.receive()) is not None:
            if isinstance(frame, Exit) and frame.code == 0:
                return len(data)
            if isinstance(frame, Exit):
                break
    raise SessionRefused(f"the copy to {device_id}:{remote} did not complete; the device's file is unchanged")

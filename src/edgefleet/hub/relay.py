"""The hub's relay to the control plane, for devices that reach the world only through
their site's hub: a TCP port whose connections the hub carries, byte for byte, to the
control plane's address. The device's TLS runs end to end: the server still sees the
device's own client certificate (check-ins, reports, a remote session's WebSocket), and
the hub can neither read nor alter what passes. Connections are bounded in number and
ended when idle past ``idle_seconds`` (a session's keep-alives keep it busy)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse

from edgefleet.errors import ConfigError

log = logging.getLogger("edgefleet.hub.relay")
CHUNK = 64 * 1024


def upstream_address(server_url: str) -> tuple[str, int]:
    """The control plane's host and port from its URL. Raises ConfigError."""
    url = urllib.parse.urlsplit(server_url)
    if url.hostname is None:
        raise ConfigError(f"the hub's server_url names no host: {server_url!r}")
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


class ControlPlaneRelay:
    def __init__(self, upstream: tuple[str, int], *, max_connections: int = 1000, idle_seconds: float = 300.0) -> None:
        self.upstream = upstream
        self.max_connections, self.idle_seconds = max_connections, idle_seconds
        self.connections = 0
        self.relayed = 0  # connections carried since start
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen; the port listened on (0 picks one). Raises ConfigError when it cannot."""
        try:
            self._server = await asyncio.start_server(self._connected, host, port)
        except OSError as exc:
            raise ConfigError(f"the hub's relay cannot listen on {host}:{port}: {exc.strerror}") from exc
        bound: int = self._server.sockets[0].getsockname()[1]
        log.info("relaying %s:%d to the control plane at %s:%d", host, bound, *self.upstream)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.connections >= self.max_connections:
                log.warning("relay full (%d connections): one refused", self.connections)
                return
            self.connections += 1
            try:
                await self._carry(reader, writer)
            finally:
                self.connections -= 1
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 30)
        except (OSError, TimeoutError) as exc:
            log.warning("relay: the control plane at %s:%d is unreachable: %s", *self.upstream, exc)
            return
        self.relayed += 1
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer)),
                 asyncio.ensure_future(self._pump(up_reader, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up_writer.close()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            while data := await asyncio.wait_for(reader.read(CHUNK), self.idle_seconds):
                writer.write(data)
                await writer.drain()

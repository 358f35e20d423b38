"""A site's link to the control plane, emulated: a TCP relay between the site's devices
and the server that adds latency and jitter, caps bandwidth (shared by the whole site),
turns lost segments into the retransmission delays TCP shows, and goes down for outages.

TLS runs end to end through it (devices still authenticate the server, and the server the
devices). Every connection leaves from one address per site, as from a store's NAT, so the
server sees many devices behind one address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

from edgefleet.sim.scenario import NetworkProfile

log = logging.getLogger("edgefleet.sim.link")
CHUNK = 16 * 1024
RETRANSMIT_SECONDS = 0.2  # Linux's minimum retransmission timeout


@dataclass
class _Pipe:
    """One direction of the site's link: its bandwidth is shared by every connection."""

    bytes_per_s: float | None
    free_at: float = 0.0  # when the link has sent everything queued so far

    def transmit_delay(self, size: int, now: float) -> float:
        if self.bytes_per_s is None:
            return 0.0
        self.free_at = max(self.free_at, now) + size / self.bytes_per_s
        return self.free_at - now


@dataclass
class LinkStats:
    connections: int = 0
    refused: int = 0  # connections attempted while the link was down
    cut: int = 0  # connections cut when it went down
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class SiteLink:
    """Listens on ``127.0.0.1:<port>``; relays to ``upstream`` from ``source`` (the site's NAT address)."""

    name: str
    profile: NetworkProfile
    upstream: tuple[str, int]
    source: str
    rng: random.Random
    port: int = 0
    up: bool = True
    stats: LinkStats = field(default_factory=LinkStats)
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _pipes: dict[str, _Pipe] = field(default_factory=dict)

    async def start(self) -> SiteLink:
        rate = self.profile.bandwidth_kbps * 1000 / 8 if self.profile.bandwidth_kbps else None
        self._pipes = {"up": _Pipe(rate), "down": _Pipe(rate)}
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut_all()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def set_up(self, up: bool) -> None:
        """Bring the link down (every open connection is cut, new ones are refused) or back up."""
        if self.up and not up:
            self.stats.cut += len(self._open)
            self._cut_all()
        self.up = up
        log.info("link %s %s", self.name, "up" if up else "DOWN")

    def _cut_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # the link is closing: not an error of this connection
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.stats.refused += 1
            writer.transport.abort()
            return
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream, local_addr=(self.source, 0))
        except OSError as exc:
            log.debug("link %s: upstream refused: %s", self.name, exc)
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._relay(reader, up_writer, "up"), self._relay(up_reader, writer, "down"))
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()

    def _delay(self, size: int, direction: str) -> float:
        profile, now = self.profile, time.monotonic()
        delay = profile.latency_ms / 1000
        if profile.jitter_ms:
            delay += self.rng.uniform(0, profile.jitter_ms / 1000)
        if profile.loss:  # each lost segment costs a retransmission timeout plus a round trip
            segments = max(1, size // 1448)
            lost = sum(1 for _ in range(min(segments, 64)) if self.rng.random() < profile.loss)
            delay += lost * (RETRANSMIT_SECONDS + 2 * profile.latency_ms / 1000)
        return delay + self._pipes[direction].transmit_delay(size, now)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Copy one direction, each chunk arriving after its delay, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)  # bounds what waits in flight

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                last_due = max(last_due, time.monotonic() + (self._delay(len(data), direction) if data else 0.0))
                await queue.put((last_due, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender

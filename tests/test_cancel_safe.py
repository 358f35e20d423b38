"""A request cancelled during its TLS handshake, or its connect cancelled just as it
succeeds (the agent stopping for a reboot), leaves no socket open behind it."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import typing
import warnings
from collections.abc import Callable, Coroutine, Iterator

import httpcore
import httpx
import pytest

from edgefleet.util.cancelsafe import CancelSafeBackend, CancelSafeTransport


class SilentPeer:
    """Accepts connections and never answers on them."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.connected, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                self.listener.settimeout(0.2)
                self.accepted.append(self.listener.accept()[0])
                self.connected.set()
            except TimeoutError:
                continue

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.listener.close()
        for peer in self.accepted:
            peer.close()


@pytest.fixture
def peer() -> Iterator[SilentPeer]:
    silent = SilentPeer()
    yield silent
    silent.close()


def run_and_expect_every_socket_closed(peer: SilentPeer, scenario: Callable[[], Coroutine[None, None, None]]) -> None:
    """Run ``scenario`` with a ResourceWarning (a socket left to the garbage collector) as an
    error, then check the client closed its end of every connection the peer accepted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        asyncio.run(scenario())
        gc.collect()
    assert peer.accepted
    for accepted in peer.accepted:  # the peer reads end of file
        accepted.settimeout(2)
        while accepted.recv(4096):
            pass


def test_a_request_cancelled_during_the_tls_handshake_closes_its_socket(peer: SilentPeer) -> None:
    async def scenario() -> None:
        transport = CancelSafeTransport(verify=ssl.create_default_context())
        async with httpx.AsyncClient(transport=transport) as client:
            request = asyncio.create_task(client.get(f"https://127.0.0.1:{peer.port}/"))
            assert await asyncio.to_thread(peer.connected.wait, 5)
            await asyncio.sleep(0.1)  # inside the handshake now
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)

    run_and_expect_every_socket_closed(peer, scenario)


class _ConnectsThenWaits(httpcore.AsyncNetworkBackend):
    """A real connect followed by one more await before it returns, where anyio's own
    ``connect_tcp`` may be cancelled too (leaving its happy-eyeballs task group)."""

    def __init__(self, connected: asyncio.Event) -> None:
        self._real, self._connected = httpcore.AnyIOBackend(), connected

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.AsyncNetworkStream:
        stream = await self._real.connect_tcp(host, port, timeout, local_address, socket_options)
        self._connected.set()
        await asyncio.sleep(0.2)  # cancelling the caller here must not cancel this
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_a_connect_cancelled_as_it_succeeds_closes_its_socket(peer: SilentPeer) -> None:
    async def scenario() -> None:
        connected = asyncio.Event()
        backend = CancelSafeBackend(_ConnectsThenWaits(connected))
        attempt = asyncio.create_task(backend.connect_tcp("127.0.0.1", peer.port, timeout=5))
        await connected.wait()
        attempt.cancel()
        assert (await asyncio.gather(attempt, return_exceptions=True))[0].__class__ is asyncio.CancelledError
        await asyncio.sleep(0.5)  # the connect ends by itself, and closes what nobody uses

    run_and_expect_every_socket_closed(peer, scenario)


def test_a_transport_closed_while_a_cancelled_connect_runs_on_waits_for_it_and_closes_its_socket(
        peer: SilentPeer) -> None:
    async def scenario() -> None:
        connected = asyncio.Event()
        transport = CancelSafeTransport()
        transport.backend = CancelSafeBackend(_ConnectsThenWaits(connected))
        transport._pool._network_backend = transport.backend
        async with httpx.AsyncClient(transport=transport) as client:
            request = asyncio.create_task(client.get(f"http://127.0.0.1:{peer.port}/"))
            await connected.wait()
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
        # The loop ends right here: had the close not waited for the connect, the loop's
        # end would cancel it, and its socket would be left to the garbage collector.

    run_and_expect_every_socket_closed(peer, scenario)

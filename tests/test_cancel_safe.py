"""A request cancelled during its TLS handshake (the agent stopping for a reboot) leaves
no socket open behind it."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import typing
import warnings

import httpcore
import httpx

from edgefleet.util.cancelsafe import CancelSafeBackend, cancel_safe_transport


def _accepting() -> tuple[socket.socket, list[socket.socket], threading.Event, threading.Event, threading.Thread]:
    """A peer that accepts connections and never answers on them."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    done, connected = threading.Event(), threading.Event()

    def accept() -> None:  # a peer that accepts and never answers the handshake
        while not done.is_set():
            try:
                listener.settimeout(0.2)
                accepted.append(listener.accept()[0])
                connected.set()
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener, accepted, done, connected, thread


def _assert_closed_by_the_client(accepted: list[socket.socket]) -> None:
    assert accepted
    for peer in accepted:  # the client closed its end: the peer reads end of file
        peer.settimeout(2)
        while peer.recv(4096):
            pass


def test_a_request_cancelled_during_the_tls_handshake_closes_its_socket() -> None:
    listener, accepted, done, connected, thread = _accepting()
    port = listener.getsockname()[1]

    async def scenario() -> None:
        transport = cancel_safe_transport(verify=ssl.create_default_context())
        async with httpx.AsyncClient(transport=transport) as client:
            request = asyncio.create_task(client.get(f"https://127.0.0.1:{port}/"))
            assert await asyncio.to_thread(connected.wait, 5)
            await asyncio.sleep(0.1)  # inside the handshake now
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            asyncio.run(scenario())
            gc.collect()
        _assert_closed_by_the_client(accepted)
    finally:
        done.set()
        thread.join()
        listener.close()
        for peer in accepted:
            peer.close()


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


def test_a_connect_cancelled_as_it_succeeds_closes_its_socket() -> None:
    listener, accepted, done, _, thread = _accepting()
    port = listener.getsockname()[1]

    async def scenario() -> None:
        connected = asyncio.Event()
        backend = CancelSafeBackend(_ConnectsThenWaits(connected))
        attempt = asyncio.create_task(backend.connect_tcp("127.0.0.1", port, timeout=5))
        await connected.wait()
        attempt.cancel()
        assert (await asyncio.gather(attempt, return_exceptions=True))[0].__class__ is asyncio.CancelledError
        await asyncio.sleep(0.5)  # the connect ends by itself, and closes what nobody uses

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            asyncio.run(scenario())
            gc.collect()
        _assert_closed_by_the_client(accepted)
    finally:
        done.set()
        thread.join()
        listener.close()
        for peer in accepted:
            peer.close()

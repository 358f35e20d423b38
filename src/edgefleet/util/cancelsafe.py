"""An httpx transport that does not leak a socket when a request is cancelled.

httpcore 1.0 closes a connection whose TLS handshake fails with an exception, but not one
whose handshake is cancelled (``start_tls`` catches ``Exception``, and cancellation is a
``BaseException``): the socket stays open until the garbage collector finds it. anyio's
``connect_tcp`` has the same hole one step earlier: a caller cancelled just as a connection
attempt succeeds (inside its happy-eyeballs task group) leaves that socket open. The agent
cancels requests whenever it stops (a reboot, a power cut in the emulator), so it wraps
httpcore's network backend and closes the stream itself.
"""

from __future__ import annotations

import asyncio
import ssl
import typing

import anyio
import httpcore
import httpx


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            return await self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._inner.aclose()
            raise

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class CancelSafeBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner
        # Connects whose caller was cancelled, and closes of what they connected: they run
        # on until ``settle``, which the transport's ``aclose`` awaits. A loop that ended
        # with one still running would cancel it, and leave its socket to the collector.
        self._abandoned: set[asyncio.Future[typing.Any]] = set()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.AsyncNetworkStream:
        # The attempt runs as its own task, which a cancelled caller does not cancel: it ends
        # by itself (it has a timeout) and closes what it connected, which nobody will use.
        attempt = asyncio.ensure_future(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))
        try:
            return _Stream(await asyncio.shield(attempt))
        except BaseException:
            self._abandoned.add(attempt)
            attempt.add_done_callback(self._close_unused)
            raise

    def _close_unused(self, attempt: asyncio.Future[httpcore.AsyncNetworkStream]) -> None:
        self._abandoned.discard(attempt)
        if attempt.cancelled() or attempt.exception() is not None:  # nothing connected
            return
        closing = asyncio.ensure_future(attempt.result().aclose())
        self._abandoned.add(closing)
        closing.add_done_callback(self._abandoned.discard)

    async def settle(self) -> None:
        """Until every abandoned connect has ended and what it connected is closed. Being
        cancelled here cancels none of them."""
        while self._abandoned:
            await asyncio.wait(set(self._abandoned))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[typing.Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CancelSafeTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections close when cancelled; once ``aclose``
    returns, no socket it opened is left open, not even one a cancelled connect made."""

    def __init__(self, **options: typing.Any) -> None:
        super().__init__(**options)
        pool = self._pool  # httpx offers no other way to choose httpcore's network backend
        self.backend = CancelSafeBackend(pool._network_backend)
        pool._network_backend = self.backend

    async def aclose(self) -> None:
        await super().aclose()
        await self.backend.settle()

    async def __aexit__(self, *exc_info: typing.Any) -> None:  # ``async with`` closes without ``aclose``
        await super().__aexit__(*exc_info)
        await self.backend.settle()


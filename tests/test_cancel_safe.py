"""A request cancelled during its TLS handshake (the agent stopping for a reboot) leaves
no socket open behind it."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import warnings

import httpx

from edgefleet.util.cancelsafe import cancel_safe_transport


def test_a_request_cancelled_during_the_tls_handshake_closes_its_socket() -> None:
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
        for peer in accepted:  # the client closed its end: after its hello, the peer reads end of file
            peer.settimeout(2)
            while peer.recv(4096):
                pass
    finally:
        done.set()
        thread.join()
        listener.close()
        for peer in accepted:
            peer.close()

"""Serving an edgefleet HTTP service (control plane, hub): a listening socket, and uvicorn
on a background thread for tests and the demo."""

from __future__ import annotations

import socket
import threading
import time
from typing import Self

import uvicorn

from edgefleet.errors import ConfigError


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket (port 0 picks a free one). With ``reuse_port``, other processes
    may listen on the same port too, and the kernel spreads new connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class UvicornThread:
    """A uvicorn server on a background thread (tests, the demo), listening on ``sock``."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._server = server
        self._name = name
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)

    def start(self, timeout: float = 30.0) -> Self:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"{self._name} failed to start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A TCP port free on the loopback interface now (the demo's and the simulator's local
services; a later bind may still race another process for it)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

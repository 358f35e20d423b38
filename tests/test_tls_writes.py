"""What a response cycle writes in one step of the event loop (a response's head and body)
leaves as one write to the TLS transport: one record and one send instead of two. Order,
pipelined requests, ``Connection: close`` and large bodies are as before, over a real
server's mTLS connections."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from edgefleet.credentials import Role
from edgefleet.web.mtls import OneWritePerStep
from tests.conftest import Fleet, start_fleet


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_writes_of_one_step_leave_as_one_and_in_order() -> None:
    async def scenario() -> Recording:
        transport = Recording()
        writer = OneWritePerStep(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writer.write(b"body")
        assert transport.writes == []  # held until the end of the step
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        writer.write(b"next")
        await asyncio.sleep(0)
        writer.write(b"last")
        writer.close()  # what is held goes out before the close
        return transport

    transport = asyncio.run(scenario())
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next", b"last"]
    assert transport.closed


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("tlswrites"), None, max_body_bytes=1024 * 1024)
    yield fleet
    fleet.close()


def exchange(plane: Fleet, directory: Path, raw: bytes) -> bytes:
    """``raw`` sent at once on a fresh mTLS connection; everything read until the server
    closes it."""
    url = urlsplit(plane.url)
    context = plane.tls(directory / "cert.pem", directory / "key.pem")
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock, \
            context.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(raw)
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
    return received


def responses(data: bytes) -> list[tuple[int, bytes]]:
    found: list[tuple[int, bytes]] = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers: dict[str, Any] = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        found.append((int(lines[0].split()[1]), data[:length]))
        data = data[length:]
    return found


def test_pipelined_requests_are_answered_whole_and_in_order_before_a_close(plane: Fleet) -> None:
    device = plane.enroll()
    url = f"/api/v1/devices/{device.id}"
    raw = (f"GET {url}/desired HTTP/1.1\r\nhost: localhost\r\n\r\n"
           f"GET {url}/director/no_such_file HTTP/1.1\r\nhost: localhost\r\n\r\n"
           f"GET {url}/desired HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").encode()
    answers = responses(exchange(plane, device.directory, raw))
    assert [status for status, _ in answers] == [200, 422, 200]
    assert answers[0][1] == answers[2][1]
    assert b'"version"' in answers[0][1]
    assert b"invalid_request" in answers[1][1]


def test_a_large_body_arrives_whole(plane: Fleet) -> None:
    device = plane.enroll()
    ignition = {f"part-{i}": "x" * 8000 for i in range(64)}  # half a megabyte
    document = {"config": {"group": "big", "os": {"ignition": ignition}}}
    assert plane.client(role=Role.OPERATOR).put(f"/api/v1/admin/devices/{device.id}/desired",
                                                json={"document": document}).status_code == 200
    raw = f"GET /api/v1/devices/{device.id}/desired HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    [(status, body)] = responses(exchange(plane, device.directory, raw.encode()))
    assert status == 200
    assert json.loads(body)["document"] == document

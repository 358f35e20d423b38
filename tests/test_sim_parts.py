"""The simulator's parts: site links that delay, share bandwidth and go down; slots that
share one image copy until a device writes into its own."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.sim.link import SiteLink
from edgefleet.sim.runner import nat_address
from edgefleet.sim.scenario import NetworkProfile


async def _echo_server() -> tuple[asyncio.Server, int, list[str]]:
    peers: list[str] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], peers


async def _round_trip(port: int, payload: bytes) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(payload)
    await writer.drain()
    await reader.readexactly(len(payload))
    elapsed = time.monotonic() - start
    writer.close()
    return elapsed


def test_a_link_adds_its_latency_caps_bandwidth_and_leaves_from_the_sites_nat_address() -> None:
    async def scenario() -> None:
        server, port, peers = await _echo_server()
        link = await SiteLink("s", NetworkProfile(latency_ms=100), ("127.0.0.1", port), nat_address(300),
                              random.Random(1)).start()
        slow = await SiteLink("t", NetworkProfile(bandwidth_kbps=800), ("127.0.0.1", port), nat_address(301),
                              random.Random(1)).start()
        try:
            assert await _round_trip(link.port, b"x" * 100) >= 0.2  # 100 ms each way
            # 100 kB through 800 kbit/s (100 kB/s) takes a second
            assert await _round_trip(slow.port, b"y" * 100_000) >= 0.95
            assert peers == [nat_address(300), nat_address(301)] == ["127.1.2.51", "127.1.2.52"]
        finally:
            await link.close()
            await slow.close()
            server.close()

    asyncio.run(scenario())


def test_a_link_that_goes_down_cuts_open_connections_and_refuses_new_ones_until_it_is_back() -> None:
    async def scenario() -> None:
        server, port, _ = await _echo_server()
        link = await SiteLink("s", NetworkProfile(), ("127.0.0.1", port), "127.0.0.1", random.Random(1)).start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            link.set_up(False)
            assert await reader.read(10) == b""  # cut
            reader2, writer2 = await asyncio.open_connection("127.0.0.1", link.port)
            assert await reader2.read(10) == b""  # refused while down
            link.set_up(True)
            assert await _round_trip(link.port, b"pong") < 1
            assert link.stats.cut >= 1
            assert link.stats.refused == 1
            writer.close()
            writer2.close()
        finally:
            await link.close()
            server.close()

    asyncio.run(scenario())


def test_devices_share_one_flashed_image_until_one_writes_its_own_slot(tmp_path: Path) -> None:
    base = tmp_path / "flashed.img"
    base.write_bytes(vimage.build("2026.11.0", 1, size=65536))
    devices = [VirtualDevice.create(tmp_path / f"d{i}", hardware_id=f"hw-{i}", site="s", slot_bytes=65536,
                                    slot_a=base) for i in range(3)]
    assert base.stat().st_nlink == 4
    assert all(d.os_version() == "2026.11.0" for d in devices)
    writable = devices[0].slot_device("a")  # the agent is about to write this slot
    writable.write_bytes(vimage.build("2026.12.0", 2, size=65536))
    assert base.stat().st_nlink == 3
    assert devices[0].os_version() == "2026.12.0"
    assert devices[1].os_version() == "2026.11.0"
    assert vimage.read_header(base)["version"] == "2026.11.0"  # type: ignore[index]


def test_the_virtual_clock_keeps_real_time_until_its_epoch_then_runs_speed_times_faster() -> None:
    from datetime import UTC, datetime

    from edgefleet.clock import ScaledClock

    clock = ScaledClock(60)
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 1  # not started: real time
    clock.start(time.time() - 10)  # started 10 real seconds ago
    ahead = (clock.now() - datetime.now(UTC)).total_seconds()
    assert 580 <= ahead <= 600  # 10 s at 60x is 600 s of virtual time, 590 of them ahead of real time
    before = clock.monotonic()
    assert 0 <= time.monotonic() - before < 1  # intervals stay real
    other = ScaledClock(60, clock.epoch)  # another process with the same epoch reads the same time
    assert abs((other.now() - clock.now()).total_seconds()) < 1

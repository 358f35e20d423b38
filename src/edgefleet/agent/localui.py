"""The technician's page, served by the agent on the local network (``local_ui``): what
the device is running, its slots, the update in progress and its history, health checks,
attestation, the telemetry waiting in the buffer and the newest log lines. Everything
comes from the agent itself (``Agent.local_view``, the one thing the page reads of it), so
the page works with the uplink down. Behind the credential in ``local_ui_token_file``
(``edgefleet.localpage``); plain HTTP on the local network: the store's LAN is the
boundary, as for the console port next to the device."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from edgefleet.errors import ConfigError
from edgefleet.localpage import create_local_app, read_credential

log = logging.getLogger("edgefleet.agent.localui")


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"local_ui must be host:port, not {listen!r}")
    return host.strip("[]"), int(port)


async def serve_local_ui(view: Callable[[], dict[str, Any]], listen: str, token_file: Path | None,
                         stop: asyncio.Event) -> None:
    """Serve until ``stop``. Without a usable credential the page stays off (logged)."""
    token = await asyncio.to_thread(read_credential, token_file)
    if token is None:
        log.error("technician page off: local_ui needs local_ui_token_file with a credential")
        return
    host, port = parse_listen(listen)
    app = create_local_app(view, token, "device.html", "This device")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None,
                                           access_log=False, server_header=False))
    task = asyncio.create_task(server.serve(), name="technician-page")
    log.info("technician page on http://%s:%d", host, port)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    server.should_exit = True
    await task

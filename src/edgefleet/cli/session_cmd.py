"""``edgefleet devices shell|logs|port-forward|cp``: remote sessions to one device, gated
by its attestation and the operator's role and scope, and recorded (role operator)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, shown_errors
from edgefleet.protocol.sessions import SessionRequest
from edgefleet.remote_client import (
    Operator,
    carry_terminal,
    copy_from_device,
    copy_to_device,
    forward_port,
    raw_terminal,
    stream,
    terminal_size,
)

DeviceId = Annotated[str, typer.Argument(help="Device id (dev-...).")]


def shell(
    device_id: DeviceId, server: ServerUrl, token: AdminToken, ca_file: CaFile,
    command: Annotated[list[str] | None, typer.Argument(help="A command to run instead of a login shell "
                                                             "(after --), as ssh runs one.")] = None,
) -> None:
    """A shell on the device's real terminal (or one command, after --); exits with the
    remote exit code. Every session is audited and recorded (``edgefleet audit replay``)."""
    stdin = sys.stdin.fileno()
    cols, rows = terminal_size(stdin)
    operator = Operator(server, token, ca_file)
    request = SessionRequest(verb="shell", command=command or [], cols=cols, rows=rows)

    async def run() -> int:
        channel = await operator.session(device_id, request)
        with raw_terminal(stdin):  # only once the session began: a refusal prints as usual
            return await carry_terminal(channel, stdin, sys.stdout.buffer)

    with shown_errors():
        code = asyncio.run(run())
    raise typer.Exit(code)


def logs(
    device_id: DeviceId, server: ServerUrl, token: AdminToken, ca_file: CaFile,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new lines.")] = False,
    unit: Annotated[str | None, typer.Option("--unit", "-u", help="One systemd unit's journal.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time on, as journalctl reads it "
                                                   "(e.g. '1 hour ago', '2026-12-07 10:00').")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, max=100_000, help="How many lines back.")] = 200,
    forensic: Annotated[bool, typer.Option(help="A quarantined device's logs, read-only (forensics).")] = False,
) -> None:
    """The device's journal where systemd runs, the agent's own log otherwise."""
    request = SessionRequest(verb="logs", follow=follow, unit=unit, since=since, lines=lines, forensic=forensic)
    operator = Operator(server, token, ca_file)

    async def run() -> int:
        return await stream(await operator.session(device_id, request), sys.stdout.buffer)

    code = 0
    with shown_errors(), contextlib.suppress(KeyboardInterrupt):
        code = asyncio.run(run())
    raise typer.Exit(code)


def port_forward(
    device_id: DeviceId,
    ports: Annotated[str, typer.Argument(help="LOCAL:REMOTE, e.g. 8080:80 (REMOTE is on the device's loopback; "
                                              "LOCAL 0 picks a free port).")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    address: Annotated[str, typer.Option(help="The local address to listen on.")] = "127.0.0.1",
) -> None:
    """Forward a local TCP port to a port on the device's loopback until Ctrl-C; each
    connection is a session of its own (gated and audited)."""
    local, _, remote = ports.partition(":")
    if not (local.isdigit() and remote.isdigit() and 0 <= int(local) <= 65535 and 1 <= int(remote) <= 65535):
        raise typer.BadParameter(f"expected LOCAL:REMOTE ports, got {ports!r}", param_hint="PORTS")
    operator = Operator(server, token, ca_file)

    def ready(port: int) -> None:
        print(f"forwarding {address}:{port} -> {device_id} 127.0.0.1:{remote} (Ctrl-C ends)", file=sys.stderr,
              flush=True)

    with shown_errors(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(forward_port(operator, device_id, (address, int(local)), int(remote), ready))


_REMOTE = re.compile(r"^([A-Za-z0-9._-]{1,64}):(/.*)$")


def cp(
    source: Annotated[str, typer.Argument(help="DEVICE:/path on the device, or a local file.")],
    destination: Annotated[str, typer.Argument(help="A local file, or DEVICE:/path on the device.")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
) -> None:
    """Copy one file from or to a device (at most 64 MiB); a file on the device is replaced
    only once all of it arrived. Gated, audited and refusable by the site like a shell."""
    down, up = _REMOTE.match(source), _REMOTE.match(destination)
    if (down is None) == (up is None):
        raise typer.BadParameter("exactly one side must be DEVICE:/absolute/path", param_hint="SOURCE DESTINATION")
    operator = Operator(server, token, ca_file)
    with shown_errors():
        if down is not None:
            size = asyncio.run(copy_from_device(operator, down[1], down[2], Path(destination)))
        else:
            assert up is not None
            size = asyncio.run(copy_to_device(operator, up[1], Path(source), up[2]))
    print(f"{size} bytes copied", file=sys.stderr)

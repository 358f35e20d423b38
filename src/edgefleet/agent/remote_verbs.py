"""The verbs of a remote session on the device, loaded with the first session (not by an
idle agent): open the channel the offer names, check the site's policy, then run a shell
on a real PTY, stream the logs (the journal where systemd runs, the agent's own log
otherwise), forward to a port on the device's loopback, or copy one file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil

from edgefleet.agent.file_copy import copy_refusal, receive_file, send_file
from edgefleet.agent.own_log import OwnLog
from edgefleet.agent.pty_session import PtyProcess, argv_for
from edgefleet.agent.site_policy import SitePolicy
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.sessions import LOOPBACK, Exit, Ready, Refused, Resize, SessionOffer
from edgefleet.web.channel import Channel, splice
from edgefleet.web.device_client import DeviceTransport

log = logging.getLogger("edgefleet.agent.remote")


async def serve(transport: DeviceTransport, device_id: str, offer: SessionOffer, policy: SitePolicy,
                own_log: OwnLog | None) -> None:
    """Open the session's channel and run its verb, unless the site's policy refuses it."""
    try:
        channel = await transport.open_session(device_id, offer.id)
    except EdgefleetError as exc:
        log.warning("remote %s session %s: cannot open its channel: %s", offer.verb, offer.id, exc)
        return
    try:
        refusal = policy.refusal(offer.verb)
        if refusal is None and offer.verb == "forward" and offer.host not in LOOPBACK:
            refusal = Refused(code="not_loopback", reason=f"a forward reaches the loopback only, not {offer.host}")
        if refusal is None and offer.verb == "copy":
            refusal = await asyncio.to_thread(copy_refusal, offer)
        if refusal is not None:
            log.warning("remote %s session %s refused: %s", offer.verb, offer.id, refusal.reason)
            await channel.control(refusal)
            return
        log.warning("remote %s session %s opened by the fleet's operator", offer.verb, offer.id)
        await channel.control(Ready())
        if offer.verb == "logs":
            await _logs(channel, offer, own_log)
        else:
            await {"shell": _shell, "forward": _forward, "copy": _copy}[offer.verb](channel, offer)
    except EdgefleetError as exc:
        log.info("remote %s session %s: %s", offer.verb, offer.id, exc)
    finally:
        with contextlib.suppress(Exception):  # the link may be gone: nothing left to close cleanly
            await channel.close()
        log.warning("remote %s session %s ended", offer.verb, offer.id)


async def _shell(channel: Channel, offer: SessionOffer) -> None:
    env = {"TERM": "xterm-256color", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "HOME": os.environ.get("HOME", "/root"), "LANG": os.environ.get("LANG", "C.UTF-8"),
           "EDGEFLEET_SESSION": offer.id}
    process = PtyProcess(argv_for(offer.command), cols=offer.cols, rows=offer.rows, env=env)
    log.info("remote shell %s: pid %d", offer.id, process.pid)
    output = asyncio.ensure_future(process.pump_output(channel.send))
    inbound = asyncio.ensure_future(_keystrokes(channel, process))
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait({exited, inbound}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            with contextlib.suppress(TimeoutError):  # what it printed last, before the exit code
                await asyncio.wait_for(asyncio.shield(output), 2)
            await channel.control(Exit(code=exited.result()))
    finally:
        for task in (output, inbound, exited):
            task.cancel()
        await asyncio.gather(output, inbound, exited, return_exceptions=True)
        await process.end()


async def _keystrokes(channel: Channel, process: PtyProcess) -> None:
    while (frame := await channel.receive()) is not None:
        if isinstance(frame, bytes):
            await process.write(frame)
        elif isinstance(frame, Resize):
            process.resize(frame.cols, frame.rows)


async def _logs(channel: Channel, offer: SessionOffer, own_log: OwnLog | None) -> None:
    argv = journal_argv(offer)
    if argv is not None:
        await _stream_command(channel, argv)
    else:
        await _own_log(channel, offer, own_log)


async def _own_log(channel: Channel, offer: SessionOffer, own_log: OwnLog | None) -> None:
    if own_log is None:
        await channel.send(b"(this agent keeps no log of its own and the device runs no journal)\r\n")
        await channel.control(Exit(code=1))
        return
    queue: asyncio.Queue[str] = asyncio.Queue()
    if offer.follow:
        own_log.followers.add(queue)
    try:
        backlog = list(own_log.lines)[-offer.lines:] if offer.lines else []
        if backlog:
            await channel.send(("\r\n".join(backlog) + "\r\n").encode())
        if offer.follow:
            closed = asyncio.ensure_future(_until_closed(channel))
            while not closed.done():
                line = asyncio.ensure_future(queue.get())
                await asyncio.wait({line, closed}, return_when=asyncio.FIRST_COMPLETED)
                if line.done():
                    await channel.send((line.result() + "\r\n").encode())
                else:
                    line.cancel()
            return
        await channel.control(Exit(code=0))
    finally:
        own_log.followers.discard(queue)


async def _forward(channel: Channel, offer: SessionOffer) -> None:
    assert offer.port is not None  # the server refuses a forward without one
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(offer.host, offer.port), 10)
    except (OSError, TimeoutError) as exc:
        await channel.control(Exit(code=1))
        log.info("remote forward %s: %s:%d unreachable: %s", offer.id, offer.host, offer.port, exc)
        return
    await splice(channel, reader, writer)


async def _copy(channel: Channel, offer: SessionOffer) -> None:
    await (send_file if offer.direction == "get" else receive_file)(channel, offer)


def journal_argv(offer: SessionOffer) -> list[str] | None:
    """journalctl's arguments for a logs session, where systemd runs (None elsewhere)."""
    journal = shutil.which("journalctl")
    if journal is None or not os.path.isdir("/run/systemd/system"):
        return None
    argv = [journal, "--no-pager", "-o", "short-iso", "-n", str(offer.lines)] + ["-f"] * offer.follow
    if offer.unit is not None:
        argv += ["-u", offer.unit]
    if offer.since is not None:
        argv += ["--since", offer.since]
    return argv


async def _until_closed(channel: Channel) -> None:
    while await channel.receive() is not None:
        pass  # a logs session takes no input


async def _stream_command(channel: Channel, argv: list[str]) -> None:
    """Stream a command's output (the journal) until it ends or the operator leaves."""
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    assert process.stdout is not None
    closed = asyncio.ensure_future(_until_closed(channel))
    try:
        while True:
            chunk = asyncio.ensure_future(process.stdout.read(16 * 1024))
            await asyncio.wait({chunk, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not chunk.done():
                chunk.cancel()
                return
            if not chunk.result():
                await channel.control(Exit(code=await process.wait()))
                return
            await channel.send(chunk.result().replace(b"\n", b"\r\n"))
    finally:
        closed.cancel()
        if process.returncode is None:
            process.kill()
            await process.wait()


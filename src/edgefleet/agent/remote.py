"""Remote sessions on the device: the check-in brings an offer, the agent opens the session's
channel outward (no inbound port) and runs the verb: a shell on a real PTY, the logs
(the journal where systemd runs, the agent's own log otherwise) or a forward to a port
on the device's loopback. The site's policy file (in the image) may refuse any verb; the
refusal goes back to the operator with its reason. The technician's page shows a banner
while a session is open."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.agent.file_copy import copy_refusal, receive_file, send_file
from edgefleet.agent.pty_session import PtyProcess, argv_for
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.sessions import LOOPBACK, Exit, Ready, Refused, Resize, SessionOffer, Verb
from edgefleet.web.channel import Channel, splice
from edgefleet.web.device_client import DeviceTransport

log = logging.getLogger("edgefleet.agent.remote")
VERBS: tuple[Verb, ...] = ("shell", "logs", "forward", "copy")
OWN_LOG_LINES = 500


@dataclass(frozen=True)
class SitePolicy:
    """Which verbs this device's site allows (``remote-access.json`` in the image: e.g.
    ``{"shell": false}``). No file: all of them. An unreadable file: none (fail closed)."""

    allowed: frozenset[str]
    source: str

    @classmethod
    def load(cls, path: Path | None) -> SitePolicy:
        if path is None or not path.exists():
            return cls(frozenset(VERBS), "no policy file")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not all(isinstance(v, bool) for v in data.values()):
                raise ValueError("expected an object of verb: true/false")
        except (OSError, ValueError) as exc:
            log.error("remote access policy %s is unusable, refusing every session: %s", path, exc)
            return cls(frozenset(), f"{path} (unusable: {exc})")
        return cls(frozenset(v for v in VERBS if data.get(v, True)), str(path))

    def refusal(self, verb: str) -> Refused | None:
        if verb in self.allowed:
            return None
        return Refused(code="site_policy", reason=f"this site's policy refuses remote {verb} ({self.source})")


# The agent whose code runs now: set in its loop's context, inherited by the tasks and
# threads it starts, so a log line is told from one of another agent or a server that
# shares the process (the demo, the simulator, tests).
_RUNNING: contextvars.ContextVar[object | None] = contextvars.ContextVar("edgefleet_agent", default=None)


class OwnLog(logging.Handler):
    """The agent's own log, the last lines of it, for a logs session where there is no
    journal; followers get new lines as they are logged."""

    def __init__(self, owner: object, lines: int = OWN_LOG_LINES) -> None:
        super().__init__(logging.INFO)
        self.owner = owner
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self.followers: set[asyncio.Queue[str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if _RUNNING.get() is not self.owner:
            return  # another agent's, or the server's
        line = self.format(record)
        self.lines.append(line)
        for queue in self.followers:
            queue.put_nowait(line)


@dataclass
class RemoteAccess:
    """The sessions this device runs now. ``start`` takes a check-in's offers."""

    policy_file: Path | None
    own_log: OwnLog | None = None
    open: dict[str, SessionOffer] = field(default_factory=dict)  # the technician page's banner
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, transport: DeviceTransport, device_id: str, offers: Iterable[SessionOffer]) -> None:
        for offer in offers:
            if offer.id in self.open:
                continue  # offered again while it opens
            self.open[offer.id] = offer
            task = asyncio.create_task(self._run(transport, device_id, offer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def keep_own_log(self) -> None:
        """Keep the agent's last log lines from now on (for a logs session without a journal)."""
        if self.own_log is None:
            _RUNNING.set(self)  # in the agent loop's context: its tasks and threads inherit it
            self.own_log = OwnLog(self)
            logging.getLogger("edgefleet").addHandler(self.own_log)

    async def close(self) -> None:
        """End every session (the agent stops): their processes are killed."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.own_log is not None:
            logging.getLogger("edgefleet").removeHandler(self.own_log)
            self.own_log = None

    async def _run(self, transport: DeviceTransport, device_id: str, offer: SessionOffer) -> None:
        try:
            channel = await transport.open_session(device_id, offer.id)
        except EdgefleetError as exc:
            log.warning("remote %s session %s: cannot open its channel: %s", offer.verb, offer.id, exc)
            self.open.pop(offer.id, None)
            return
        try:
            refusal = SitePolicy.load(self.policy_file).refusal(offer.verb)
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
            runner = {"shell": self._shell, "logs": self._logs, "forward": self._forward, "copy": _copy}[offer.verb]
            await runner(channel, offer)
        except EdgefleetError as exc:
            log.info("remote %s session %s: %s", offer.verb, offer.id, exc)
        finally:
            self.open.pop(offer.id, None)
            with contextlib.suppress(Exception):  # the link may be gone: nothing left to close cleanly
                await channel.close()
            log.warning("remote %s session %s ended", offer.verb, offer.id)

    async def _shell(self, channel: Channel, offer: SessionOffer) -> None:
        env = {"TERM": "xterm-256color", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "HOME": os.environ.get("HOME", "/root"), "LANG": os.environ.get("LANG", "C.UTF-8"),
               "EDGEFLEET_SESSION": offer.id}
        process = PtyProcess(argv_for(offer.command), cols=offer.cols, rows=offer.rows, env=env)
        log.info("remote shell %s: pid %d", offer.id, process.pid)
        output = asyncio.ensure_future(process.pump_output(channel.send))
        inbound = asyncio.ensure_future(self._keystrokes(channel, process))
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

    @staticmethod
    async def _keystrokes(channel: Channel, process: PtyProcess) -> None:
        while (frame := await channel.receive()) is not None:
            if isinstance(frame, bytes):
                await process.write(frame)
            elif isinstance(frame, Resize):
                process.resize(frame.cols, frame.rows)

    async def _logs(self, channel: Channel, offer: SessionOffer) -> None:
        argv = journal_argv(offer)
        if argv is not None:
            await _stream_command(channel, argv)
        else:
            await self._own_log(channel, offer)

    async def _own_log(self, channel: Channel, offer: SessionOffer) -> None:
        if self.own_log is None:
            await channel.send(b"(this agent keeps no log of its own and the device runs no journal)\r\n")
            await channel.control(Exit(code=1))
            return
        queue: asyncio.Queue[str] = asyncio.Queue()
        if offer.follow:
            self.own_log.followers.add(queue)
        try:
            backlog = list(self.own_log.lines)[-offer.lines:] if offer.lines else []
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
            self.own_log.followers.discard(queue)

    async def _forward(self, channel: Channel, offer: SessionOffer) -> None:
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


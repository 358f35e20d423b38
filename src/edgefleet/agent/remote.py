"""Remote sessions on the device: the check-in brings an offer, the agent opens the session's
channel outward (no inbound port) and runs the verb (``remote_verbs``: a shell on a real
PTY, the logs, a forward to a port on the device's loopback, a file copy). The site's
policy file (in the image) may refuse any verb; the refusal goes back to the operator
with its reason. The technician's page shows a banner while a session is open.

This module is what every agent holds: the sessions open now and its own last log lines.
The channel and the verbs (WebSockets, PTYs) load with the first session (issue #31)."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.protocol.sessions import Refused, SessionOffer, Verb

if TYPE_CHECKING:
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
        from edgefleet.agent import remote_verbs  # the first session loads the channel and the verbs

        try:
            await remote_verbs.serve(transport, device_id, offer, SitePolicy.load(self.policy_file), self.own_log)
        finally:
            self.open.pop(offer.id, None)

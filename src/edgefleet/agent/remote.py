"""Remote sessions on the device: the check-in brings an offer, the agent opens the session's
channel outward (no inbound port) and runs the verb (``remote_verbs``: a shell on a real
PTY, the logs, a forward to a port on the device's loopback, a file copy). The site's
policy file (in the image) may refuse any verb; the refusal goes back to the operator
with its reason. The technician's page shows a banner while a session is open.

This module is what every agent holds: the sessions open now and its own last log lines.
The channel and the verbs (WebSockets, PTYs) load with the first session (issue #31)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.own_log import RUNNING, OwnLog
from edgefleet.agent.site_policy import SitePolicy
from edgefleet.protocol.sessions import SessionOffer

if TYPE_CHECKING:
    from edgefleet.web.device_client import DeviceTransport


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
            RUNNING.set(self)  # in the agent loop's context: its tasks and threads inherit it
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

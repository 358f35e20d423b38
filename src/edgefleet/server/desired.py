"""The one writer of devices' desired state.

Every change to a device's desired document goes through ``DesiredWriter.transaction``:
the change is stored inside the caller's transaction (with whatever else the caller
writes there), and once that transaction commits the writer publishes it, in this order
for every caller: the change feed's entries are marked as applied here, any hook the
caller registered runs, the configuration is signed into the device's director metadata
(unless the caller signed it in the same transaction), the device's cached copy is
forgotten, and its long poll is woken. A device therefore never hears of a document
whose configuration its director has not signed. ``tests/test_layers.py`` fails when
any other module calls the store's writers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.clock import Clock
from edgefleet.errors import InvalidRequest
from edgefleet.protocol.desired import DesiredDocument
from edgefleet.server.devicecache import DeviceCache
from edgefleet.server.longpoll import LongPolls
from edgefleet.store import Database
from edgefleet.store.devices import set_desired, set_desired_many


def checked(document: dict[str, Any]) -> None:
    """Refuse a document a device would refuse (the shared model, ``protocol/desired.py``)."""
    try:
        DesiredDocument.model_validate(document)
    except ValidationError as exc:
        raise InvalidRequest(f"not a desired state: {exc.error_count()} error(s), first at "
                             f"{'.'.join(map(str, exc.errors()[0]['loc']))}: {exc.errors()[0]['msg']}",
                             code="invalid_desired_state") from exc


class DesiredChanges:
    """The desired-state changes of one transaction (``conn``), published after it commits."""

    def __init__(self, conn: AsyncConnection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.unsigned: dict[str, bool] = {}  # device -> its configuration still needs signing
        self.feed: list[int] = []  # change feed entries this process wakes itself
        self.on_commit: list[Callable[[], None]] = []  # run after the commit, before anyone is woken

    def _note(self, device_id: str, signed: bool) -> None:
        self.unsigned[device_id] = self.unsigned.get(device_id, False) or not signed

    async def set(self, device_id: str, document: dict[str, Any], *, signed: bool = False) -> int | None:
        """Store ``document`` as the device's desired state; its new version (None if there
        is no such device). ``signed``: the caller signed its director metadata already.

        Raises InvalidRequest when it is not a ``DesiredDocument``; nothing is stored."""
        checked(document)
        version = await set_desired(self.conn, device_id, document, self.now)
        if version is not None:
            self._note(device_id, signed)
        return version

    async def set_many(self, documents: Mapping[str, dict[str, Any]], *, signed: bool = False) -> None:
        """``set`` for many devices in two statements (the rollout controller's path)."""
        for document in documents.values():
            checked(document)
        self.feed += await set_desired_many(self.conn, documents, self.now)
        for device_id in documents:
            self._note(device_id, signed)


class DesiredWriter:
    def __init__(self, db: Database, clock: Clock, devices: DeviceCache, long_polls: LongPolls,
                 sign_config: Callable[[str], Awaitable[None]]) -> None:
        self.db, self.clock, self.devices, self.long_polls = db, clock, devices, long_polls
        self._sign_config = sign_config

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[DesiredChanges]:
        """A store transaction whose desired-state changes (``DesiredChanges.set``) are
        published once it commits; nothing is published when it fails."""
        async with self.db.transaction() as conn:
            changes = DesiredChanges(conn, self.clock.now())
            yield changes
        await self._publish(changes)

    async def _publish(self, changes: DesiredChanges) -> None:
        # This process wakes its own changes below: its change feed must not (before signing).
        self.devices.applied.update(changes.feed)
        for hook in changes.on_commit:
            hook()
        for device_id, unsigned in changes.unsigned.items():
            if unsigned:
                await self._sign_config(device_id)  # before the device hears of it
        for device_id in changes.unsigned:
            self.devices.forget(device_id)
            self.long_polls.notify(device_id)

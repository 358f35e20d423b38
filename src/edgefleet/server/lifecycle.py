"""A device's end: decommissioning forgets it everywhere it is kept (row, director
metadata, update history, presence, the device cache), so its certificate stops working
at once. The admin API and the dashboard both end a device here."""

from __future__ import annotations

from edgefleet.errors import NotFound
from edgefleet.server.state import ServerState
from edgefleet.store.devices import delete_device
from edgefleet.store.director import forget_device as forget_director
from edgefleet.store.updates import forget_update_history


async def decommission(state: ServerState, device_id: str) -> None:
    """Raises NotFound when there is no such device."""
    async with state.db.transaction() as conn:
        found = await delete_device(conn, device_id, state.clock.now())
        await forget_director(conn, device_id)
        await forget_update_history(conn, device_id)
    if not found:
        raise NotFound(f"device {device_id} not found")
    state.presence.forget(device_id)
    state.devices.forget(device_id)

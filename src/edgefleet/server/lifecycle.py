"""A device's end. Revoking puts its certificate on the fleet's revocation list (the CRL
hubs pull), so the control plane and every hub refuse it; the device stays listed, as
revoked. Decommissioning revokes it too and forgets it everywhere it is kept (row,
director metadata, update history, presence, the device cache). The admin API and the
dashboard both end a device here."""

from __future__ import annotations

from edgefleet.errors import NotFound
from edgefleet.server.auth import DECOMMISSIONED
from edgefleet.server.state import ServerState
from edgefleet.store.devices import changed, delete_device
from edgefleet.store.director import forget_device as forget_director
from edgefleet.store.revocations import revoke_current_certificate
from edgefleet.store.updates import forget_update_history


async def revoke(state: ServerState, device_id: str, *, reason: str, by: str) -> str:
    """The serial revoked. Raises NotFound when there is no such device."""
    now = state.clock.now()
    async with state.db.transaction() as conn:
        serial = await revoke_current_certificate(conn, device_id, reason=reason, by=by, now=now)
        if serial is not None:
            await conn.run_sync(changed, device_id, now)
    if serial is None:
        raise NotFound(f"device {device_id} not found")
    state.devices.forget(device_id)
    return serial


async def decommission(state: ServerState, device_id: str, *, by: str) -> None:
    """Raises NotFound when there is no such device."""
    now = state.clock.now()
    async with state.db.transaction() as conn:
        found = await revoke_current_certificate(conn, device_id, reason=DECOMMISSIONED, by=by, now=now)
        await delete_device(conn, device_id, now)
        await forget_director(conn, device_id)
        await forget_update_history(conn, device_id)
    if found is None:
        raise NotFound(f"device {device_id} not found")
    state.presence.forget(device_id)
    state.devices.forget(device_id)

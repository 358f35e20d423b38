"""What an operator limited to a scope (``protocol/scope.py``) may see and act on: a device
outside it, or a rollout that may take one, is answered as not found (its existence is
not theirs to learn); a rollout they start must keep to their scope."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.errors import Forbidden, NotFound
from edgefleet.protocol.v1 import RolloutView
from edgefleet.server.auth import AdminPrincipal
from edgefleet.server.state import ServerState
from edgefleet.store.devices import get_device
from edgefleet.store.schema import Device


def _sees(who: AdminPrincipal, row: Device | None) -> bool:
    return row is not None and who.sees(row.site, row.labels or {})


async def visible_device(conn: AsyncConnection, who: AdminPrincipal, device_id: str) -> Device:
    """The device, if it exists and is in ``who``'s scope. Raises NotFound otherwise."""
    row = await get_device(conn, device_id)
    if row is None or not _sees(who, row):
        raise NotFound(f"device {device_id} not found")
    return row


async def sees_device(conn: AsyncConnection, who: AdminPrincipal, device_id: str) -> bool:
    """Whether the device exists and is in ``who``'s scope."""
    return _sees(who, await get_device(conn, device_id))


async def check_device(state: ServerState, who: AdminPrincipal, device_id: str) -> None:
    """Before acting on a device: NotFound when it is outside ``who``'s scope (a missing
    device is left to the action itself, which says so)."""
    if who.scope is None:
        return
    async with state.db.transaction(readonly=True) as conn:
        row = await get_device(conn, device_id)
    if row is not None and not _sees(who, row):
        raise NotFound(f"device {device_id} not found")


def covers(who: AdminPrincipal, selector: Mapping[str, str]) -> bool:
    """Whether every device a rollout with ``selector`` can take is in ``who``'s scope."""
    return who.scope is None or who.scope.covers(selector)


def visible_rollout(who: AdminPrincipal, view: RolloutView) -> RolloutView:
    """``view``, if its rollout keeps to ``who``'s scope. Raises NotFound otherwise."""
    if not covers(who, view.selector):
        raise NotFound(f"rollout {view.id} not found")
    return view


async def check_rollout(state: ServerState, who: AdminPrincipal, rollout_id: str) -> None:
    """Before acting on a rollout: NotFound when it does not keep to ``who``'s scope (a
    whole-fleet token reads nothing for it)."""
    if who.scope is not None:
        visible_rollout(who, await state.rollout_views.get(rollout_id))


def check_selector(who: AdminPrincipal, selector: Mapping[str, str]) -> None:
    """Before starting a rollout. Raises Forbidden (``out_of_scope``) naming what the
    selector must pin."""
    if who.scope is not None and not who.scope.covers(selector):
        raise Forbidden(f"{who.name!r} is limited to {who.scope}: a rollout's selector must pin each of its keys "
                        f"to a value in it (the selector {dict(selector)} may take devices outside it)",
                        code="out_of_scope")

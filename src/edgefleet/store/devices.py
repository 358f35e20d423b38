"""Device queries. Each function runs inside the caller's transaction.

The device requests' own queries are synchronous functions of a ``Connection``: they run
through ``Database.read``/``write`` (a whole transaction in one step), or inside an open
``AsyncConnection`` with ``run_sync``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, bindparam, delete, func, insert, literal, or_, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from edgefleet.protocol.scope import Scope
from edgefleet.store.schema import AttestationIdentity, AttestationStatus, Device, DeviceChange, Revocation


@dataclass(frozen=True)
class DeviceAuth:
    cert_serial: str
    desired_version: int
    attested_at: datetime | None = None  # of the last passing attestation
    quarantined: bool = False
    tpm_identity: bool = False  # an active TPM identity (credential activated)
    attested_release: str | None = None  # the release its last verdict judged it against
    revoked: bool = False  # its current certificate is on the fleet's revocation list
    next_serial: str | None = None  # a renewed certificate it has not presented yet


async def insert_device(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(insert(Device).values(**values))


async def hardware_id_taken(conn: AsyncConnection, hardware_id: str) -> bool:
    row = await conn.execute(select(Device.id).where(Device.hardware_id == hardware_id))
    return row.first() is not None


_AUTH = (
    select(Device.cert_serial, Device.desired_version, AttestationStatus.passed, AttestationStatus.attested_at,
           AttestationStatus.quarantined, AttestationStatus.release.label("attested_release"),
           AttestationIdentity.state.label("identity_state"), Revocation.id.label("revocation"),
           Device.next_cert_serial)
    .outerjoin(AttestationStatus, AttestationStatus.device_id == Device.id)
    .outerjoin(AttestationIdentity, AttestationIdentity.device_id == Device.id)
    .outerjoin(Revocation, Revocation.serial == Device.cert_serial)
    .where(Device.id == bindparam("id"))
)


def device_auth(conn: Connection, device_id: str) -> DeviceAuth | None:
    """The hot path of every device request: one primary-key read (with the attestation gate)."""
    row = conn.execute(_AUTH, {"id": device_id}).first()
    return None if row is None else _auth_of(row)


def _auth_of(row: Row[*tuple[Any, ...]]) -> DeviceAuth:
    return DeviceAuth(row.cert_serial, row.desired_version, row.attested_at if row.passed else None,
                      bool(row.quarantined), row.identity_state == "active", row.attested_release,
                      row.revocation is not None, row.next_cert_serial)


_AUTH_AND_DESIRED = _AUTH.add_columns(Device.desired)


def device_auth_and_desired(conn: Connection, device_id: str) -> tuple[DeviceAuth, dict[str, Any]] | None:
    """``device_auth`` and the desired document it versions, in one read (a woken long poll)."""
    row = conn.execute(_AUTH_AND_DESIRED, {"id": device_id}).first()
    return None if row is None else (_auth_of(row), row.desired)


# Statements of the check-in path are built once: SQLAlchemy then computes each one's cache
# key once, not on every execution.
_DESIRED = select(Device.desired_version, Device.desired).where(Device.id == bindparam("id"))


def desired_state(conn: Connection, device_id: str) -> tuple[int, dict[str, Any]] | None:
    row = conn.execute(_DESIRED, {"id": device_id}).first()
    return None if row is None else (row.desired_version, row.desired)


async def set_desired(conn: AsyncConnection, device_id: str, document: dict[str, Any], now: datetime) -> int | None:
    """Store a new desired document; returns its version (None if no such device)."""
    result = await conn.execute(
        update(Device)
        .where(Device.id == device_id)
        .values(desired=document, desired_version=Device.desired_version + 1, desired_at=now)
        .returning(Device.desired_version)
    )
    row = result.first()
    if row is None:
        return None
    await conn.run_sync(changed, device_id, now)
    return int(row[0])


async def set_desired_many(conn: AsyncConnection, documents: Mapping[str, dict[str, Any]],
                           now: datetime) -> list[int]:
    """``set_desired`` for many devices in two statements (the rollout controller's path);
    returns the ids of the change feed entries it wrote."""
    if not documents:
        return []
    stmt = (update(Device).where(Device.id == bindparam("b_id"))
            .values(desired=bindparam("b_desired", type_=Device.desired.type),
                    desired_version=Device.desired_version + 1, desired_at=now)
            .execution_options(synchronize_session=False))
    await conn.execute(stmt, [{"b_id": d, "b_desired": doc} for d, doc in documents.items()])
    rows = await conn.execute(insert(DeviceChange).returning(DeviceChange.id),
                              [{"device_id": d, "changed_at": now} for d in documents])
    return [int(change_id) for change_id in rows.scalars()]


_CHANGED = (insert(DeviceChange).values(device_id=bindparam("b_id"), changed_at=bindparam("b_at"))
            .returning(DeviceChange.id))


def changed(conn: Connection, device_id: str, now: datetime) -> int:
    """Note a change of the device's auth or desired state; returns the feed entry's id.
    Same transaction as the change itself: other server processes can never see the
    change without the feed entry that makes them drop their cached copy."""
    return int(conn.execute(_CHANGED, {"b_id": device_id, "b_at": now}).scalar_one())


async def changes_since(conn: AsyncConnection, last_id: int, limit: int) -> list[tuple[int, str]]:
    rows = await conn.execute(
        select(DeviceChange.id, DeviceChange.device_id).where(DeviceChange.id > last_id)
        .order_by(DeviceChange.id).limit(limit)
    )
    return [(int(r.id), r.device_id) for r in rows]


async def latest_change(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.coalesce(func.max(DeviceChange.id), 0)))).scalar_one())


async def prune_changes(conn: AsyncConnection, before: datetime) -> None:
    await conn.execute(delete(DeviceChange).where(DeviceChange.changed_at < before))


_STATUS = (
    update(Device)
    .where(Device.id == bindparam("b_id"), Device.status_seq < bindparam("b_seq"))
    .values(status=bindparam("b_status", type_=Device.status.type), status_seq=bindparam("b_seq"),
            status_at=bindparam("b_at"), running_version=bindparam("b_running"), health=bindparam("b_health"),
            update_state=bindparam("b_update"))
    .returning(Device.status_seq)
)
_STATUS_SEQ = select(Device.status_seq).where(Device.id == bindparam("id"))
_HEALTH = select(Device.health).where(Device.id == bindparam("id"))


def device_site(conn: Connection, device_id: str) -> str | None:
    site: str | None = conn.execute(select(Device.site).where(Device.id == device_id)).scalar_one_or_none()
    return site


def stored_health(conn: Connection, device_id: str) -> str | None:
    """The health the device last reported (None for a device that is not there)."""
    health = conn.execute(_HEALTH, {"id": device_id}).scalar_one_or_none()
    return None if health is None else str(health)


def apply_status(conn: Connection, device_id: str, seq: int, report: dict[str, Any], now: datetime, *,
                       running_version: str | None, health: str, update_state: str) -> tuple[bool, int]:
    """Store a report only if its sequence number is newer; returns (accepted, stored seq).

    The comparison happens in the UPDATE itself, so concurrent or replayed reports can
    never move a device's status backwards.
    """
    result = conn.execute(_STATUS, {"b_id": device_id, "b_seq": seq, "b_status": report, "b_at": now,
                                    "b_running": running_version, "b_health": health, "b_update": update_state})
    if result.first() is not None:
        return True, seq
    current = conn.execute(_STATUS_SEQ, {"id": device_id}).scalar_one()
    return False, int(current)


_PRESENCE = (
    update(Device)
    .where(Device.id == bindparam("device_id"))
    .values(last_seen_at=bindparam("seen_at"))
    .execution_options(synchronize_session=False)
)


async def record_presence(conn: AsyncConnection, seen: Mapping[str, datetime]) -> None:
    if not seen:
        return
    await conn.execute(_PRESENCE, [{"device_id": d, "seen_at": t} for d, t in seen.items()])


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices a list shows: a site, a kind, labels that must all match (the
    operator's labels, as rollout selectors read them), a piece of the id or hardware id."""

    site: str | None = None
    kind: str = "device"
    labels: Mapping[str, str] = field(default_factory=dict)
    search: str | None = None
    scope: Scope | None = None  # the operator's (protocol/scope.py): only devices in it

    def where(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = [Device.kind == self.kind]
        if self.site is not None:
            clauses.append(Device.site == self.site)
        clauses += [Device.labels[key].as_string() == value for key, value in sorted(self.labels.items())]
        if self.search:
            pattern = "%" + _escape_like(self.search) + "%"
            clauses.append(or_(Device.id.like(pattern, escape="\\"), Device.hardware_id.like(pattern, escape="\\")))
        for requirement in self.scope.requirements if self.scope is not None else ():
            column = Device.site if requirement.key == "site" else Device.labels[requirement.key].as_string()
            clauses.append(or_(*(_Glob(column, literal(_escape_like(value).replace("*", "%")), literal(value))
                                 if "*" in value else column == value for value in requirement.values)))
        return clauses


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Glob(FunctionElement[bool]):
    """``column`` matches a scope's ``*`` pattern, case-sensitively as the scope does: LIKE
    on PostgreSQL, GLOB on SQLite (whose LIKE ignores case). Arguments: the column, the
    pattern for LIKE, the pattern for GLOB (scope values hold no other special character)."""

    type = Boolean()
    inherit_cache = True
    name = "scope_glob"


@compiles(_Glob)
def _like(element: _Glob, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern, _ = list(element.clauses)
    return f"({compiler.process(column, **kw)} LIKE {compiler.process(pattern, **kw)} ESCAPE '\\')"


@compiles(_Glob, "sqlite")
def _sqlite_glob(element: _Glob, compiler: SQLCompiler, **kw: Any) -> str:
    column, _, pattern = list(element.clauses)
    return f"({compiler.process(column, **kw)} GLOB {compiler.process(pattern, **kw)})"


async def list_devices(conn: AsyncConnection, only: DeviceFilter = DeviceFilter(), *, limit: int,
                       offset: int = 0) -> list[Device]:
    stmt = select(Device.__table__).where(*only.where()).order_by(Device.site, Device.id).limit(limit).offset(offset)
    return [Device(**row._mapping) for row in await conn.execute(stmt)]


async def count_devices(conn: AsyncConnection, only: DeviceFilter = DeviceFilter()) -> int:
    return int((await conn.execute(select(func.count()).select_from(Device).where(*only.where()))).scalar_one())


_DEVICE = select(Device.__table__).where(Device.id == bindparam("b_id"))


async def get_device(conn: AsyncConnection, device_id: str) -> Device | None:
    row = (await conn.execute(_DEVICE, {"b_id": device_id})).first()
    return None if row is None else Device(**row._mapping)


async def hardware_and_config(conn: AsyncConnection, device_ids: Sequence[str]) -> dict[
        str, tuple[str | None, dict[str, Any] | None]]:
    """Each device's hardware type and the rendered configuration its desired state carries
    (what the director signs for it besides the release): two fields, not whole rows."""
    rows = await conn.execute(select(Device.id, Device.inventory["hardware_type"].as_string(),
                                     Device.desired["config"]).where(Device.id.in_(device_ids)))
    return {device_id: (hardware, config) for device_id, hardware, config in rows}


async def desired_documents(conn: AsyncConnection, device_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows = await conn.execute(select(Device.id, Device.desired).where(Device.id.in_(device_ids)))
    return {device_id: desired for device_id, desired in rows}


async def set_next_certificate(conn: AsyncConnection, device_id: str, serial: str, not_after: datetime,
                               now: datetime) -> None:
    """A renewed certificate for ``device_id``; it replaces the current one when first used."""
    await conn.execute(update(Device).where(Device.id == device_id)
                       .values(next_cert_serial=serial, next_cert_not_after=not_after))
    await conn.run_sync(changed, device_id, now)


async def promote_next_certificate(conn: AsyncConnection, device_id: str, serial: str,
                                   now: datetime) -> tuple[str, datetime] | None:
    """``serial`` was presented: it becomes the device's certificate. The one it replaces
    (serial, not-after), or None when ``serial`` is not the device's next certificate (any
    more: another process promoted it first)."""
    old = (await conn.execute(select(Device.cert_serial, Device.cert_not_after)
                              .where(Device.id == device_id, Device.next_cert_serial == serial))).first()
    if old is None:
        return None
    result = await conn.execute(
        update(Device).where(Device.id == device_id, Device.next_cert_serial == serial)
        .values(cert_serial=Device.next_cert_serial, cert_not_after=Device.next_cert_not_after,
                next_cert_serial=None, next_cert_not_after=None))
    if result.rowcount != 1:
        return None
    await conn.run_sync(changed, device_id, now)
    return old.cert_serial, old.cert_not_after


async def delete_device(conn: AsyncConnection, device_id: str, now: datetime) -> bool:
    result = await conn.execute(delete(Device).where(Device.id == device_id).returning(Device.id))
    if result.first() is None:
        return False
    await conn.run_sync(changed, device_id, now)
    return True

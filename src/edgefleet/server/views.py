"""Database rows to API views."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.errors import InvalidRequest
from edgefleet.protocol.scope import Scope
from edgefleet.protocol.typed_text import parse_pairs
from edgefleet.protocol.v1 import ApprovalView, DeviceList, DeviceView, HealthFinding, RevocationView
from edgefleet.server.presence import Presence
from edgefleet.store.attestation import statuses as attestation_statuses
from edgefleet.store.devices import DeviceFilter, count_devices, list_devices
from edgefleet.store.schema import Approval, AttestationStatus, Device, Revocation


@dataclass(frozen=True)
class Freshness:
    """How long a passing verdict counts (the server's attestation_max_age_seconds), and now."""

    max_age_seconds: float
    now: datetime


def attestation_view(status: AttestationStatus | None, fresh: Freshness | None = None) -> dict[str, Any] | None:
    """The last verdict, with the one state UI, CLI and API show (``attestation_state``)."""
    if status is None:
        return None
    state, reason = attestation_state(status, fresh)
    return {"state": state, "reason": reason, "passed": status.passed, "attested_at": status.attested_at.isoformat(),
            "quarantined": status.quarantined, "release": status.release,
            "failed_checks": list(status.failures.get("checks", []))}


def attestation_state(status: AttestationStatus, fresh: Freshness | None) -> tuple[str, str | None]:
    """quarantined (until an operator releases it), failed, stale (passed longer ago than a
    verdict counts) or passed; with the reason, the failing check first."""
    checks = [str(c) for c in status.failures.get("checks", [])]
    if status.quarantined:
        why = [str(c) for c in status.failures.get("quarantined_for") or checks]
        return "quarantined", (why[0] if why else "quarantined after a failed attestation") + \
            " (edgefleet devices release-quarantine releases it)"
    if not status.passed:
        return "failed", checks[0] if checks else "the last quote did not verify"
    if fresh is not None:
        age = (fresh.now - status.attested_at).total_seconds()
        if age > fresh.max_age_seconds:
            return "stale", f"last passed {age:.0f} s ago; a verdict counts for {fresh.max_age_seconds:.0f} s"
    return "passed", None


def device_view(device: Device, presence: Presence, status: AttestationStatus | None = None,
                fresh: Freshness | None = None, revoked: Revocation | None = None) -> DeviceView:
    pending = presence.latest(device.id)
    last_seen = device.last_seen_at
    if pending is not None and (last_seen is None or pending > last_seen):
        last_seen = pending
    applied = (device.status or {}).get("desired_version_applied")
    return DeviceView(
        id=device.id,
        hardware_id=device.hardware_id,
        kind=device.kind,
        site=device.site,
        labels=device.labels,
        enrolled_at=device.enrolled_at,
        last_seen_at=last_seen,
        cert_not_after=device.cert_not_after,
        status_seq=device.status_seq,
        status_at=device.status_at,
        running_version=device.running_version,
        health=device.health,
        health_findings=_findings(device.status),
        update_state=device.update_state,
        desired_version=device.desired_version,
        desired_version_applied=applied if isinstance(applied, int) else None,
        inventory=device.inventory,
        attestation=attestation_view(status, fresh),
        update=_update_view(device.status),
        workloads=(device.status or {}).get("workloads"),
        revoked=None if revoked is None else RevocationView(serial=revoked.serial, reason=revoked.reason,
                                                            revoked_by=revoked.revoked_by,
                                                            revoked_at=revoked.revoked_at),
    )


def _findings(status: dict[str, Any] | None) -> list[HealthFinding]:
    """What failed on the device, as its last report said (stored as the report was)."""
    found = (status or {}).get("health_findings")
    if not isinstance(found, list):
        return []
    return [HealthFinding.model_validate(f) for f in found if isinstance(f, dict)]


def _update_view(status: dict[str, Any] | None) -> dict[str, Any] | None:
    report = (status or {}).get("update")
    if not isinstance(report, dict):
        return None
    return {k: v for k, v in report.items() if k != "events"}


async def device_list(conn: AsyncConnection, presence: Presence, only: DeviceFilter, *, limit: int,
                      offset: int, fresh: Freshness | None = None) -> DeviceList:
    """A page of devices, by site then id, with their attestation verdicts (the admin API's
    list and the dashboard's)."""
    rows = await list_devices(conn, only, limit=limit, offset=offset)
    total = await count_devices(conn, only)
    attested = await attestation_statuses(conn, [r.id for r in rows])
    return DeviceList(total=total, devices=[device_view(r, presence, attested.get(r.id), fresh) for r in rows])


def device_filter(*, site: str | None = None, kind: str = "device", selector: str | None = None,
                  search: str | None = None, scope: Scope | None = None) -> DeviceFilter:
    """A device list's filter from its query (the admin API's and the dashboard's):
    ``selector`` is ``k=v,k2=v2``. Raises InvalidRequest naming what could not be read."""
    try:
        labels = parse_pairs((selector or "").split(","))
    except ValueError as exc:
        raise InvalidRequest(f"selector: {exc}") from exc
    return DeviceFilter(site=site or None, kind=kind, labels=labels, search=(search or "").strip() or None,
                        scope=scope)


def approval_view(row: Approval) -> ApprovalView:
    facts = row.facts or {}
    return ApprovalView(kind=row.kind, device_id=row.device_id, fingerprint=row.fingerprint,
                        state=row.state, reason=row.reason, hardware_id=facts.get("hardware_id"),
                        site=facts.get("site"), hardware_type=facts.get("hardware_type") or None,
                        requested_at=row.requested_at, decided_by=row.decided_by, decided_at=row.decided_at)

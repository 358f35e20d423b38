"""Database rows to API views."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.protocol.v1 import DeviceList, DeviceView, HealthFinding
from edgefleet.server.presence import Presence
from edgefleet.store.attestation import statuses as attestation_statuses
from edgefleet.store.devices import count_devices, list_devices
from edgefleet.store.schema import AttestationStatus, Device


def attestation_view(status: AttestationStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {"passed": status.passed, "attested_at": status.attested_at.isoformat(), "quarantined": status.quarantined,
            "release": status.release, "failed_checks": list(status.failures.get("checks", []))}


def device_view(device: Device, presence: Presence, status: AttestationStatus | None = None) -> DeviceView:
    pending = presence.latest(device.id)
    last_seen = device.last_seen_at
    if pending is not None and (last_seen is None or pending > last_seen):
        last_seen = pending
    applied = (device.status or {}).get("desired_version_applied")
    return DeviceView(
        id=device.id,
        hardware_id=device.hardware_id,
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
        attestation=attestation_view(status),
        update=_update_view(device.status),
        workloads=(device.status or {}).get("workloads"),
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


async def device_list(conn: AsyncConnection, presence: Presence, *, site: str | None, limit: int,
                      offset: int) -> DeviceList:
    """A page of devices, by site then id, with their attestation verdicts (the admin API's
    list and the dashboard's)."""
    rows = await list_devices(conn, site=site, limit=limit, offset=offset)
    total = await count_devices(conn, site=site)
    attested = await attestation_statuses(conn, [r.id for r in rows])
    return DeviceList(total=total, devices=[device_view(r, presence, attested.get(r.id)) for r in rows])

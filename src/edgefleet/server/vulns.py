"""What the fleet's releases contain that advisories name: advisories (OSV) and VEX
statements imported by operators, each published release's SBOM (its signed ``sbom``
target), and the devices on each release.

A release's findings are its SBOM's components matched with the advisories that name them
(Debian by source package and version, in Debian's ordering, for the image's Debian
release; PyPI by canonical name, in PEP 440's), less what a VEX statement says does not
affect it. A device's findings are those of the release its last passing attestation
proved (else the one it reports, marked as not proven).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from edgefleet.clock import Clock
from edgefleet.errors import InvalidRequest
from edgefleet.protocol.scope import Scope
from edgefleet.protocol.v1 import AdvisoryImport, AffectedDevice, FindingView
from edgefleet.releases.image import release_fields
from edgefleet.server.repository import RepositoryService
from edgefleet.store import Database
from edgefleet.store.devices import DeviceFilter
from edgefleet.store.schema import AttestationStatus, Device
from edgefleet.store.vulns import advisories_naming, modified_of, save_advisory, save_statements, statements
from edgefleet.util.paths import contained
from edgefleet.vuln import osv, vex
from edgefleet.vuln.components import Component, components

log = logging.getLogger("edgefleet.server.vulns")

MAX_SBOM_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DeviceRelease:
    device_id: str
    site: str
    release: str
    proven: bool


class Vulnerabilities:
    def __init__(self, db: Database, repository: RepositoryService, clock: Clock) -> None:
        self.db, self.repository, self.clock = db, repository, clock

    async def import_advisories(self, documents: list[Any]) -> AdvisoryImport:
        """Store these OSV advisories: new ones, and those ``modified`` since they were
        stored (a re-import of the same export changes nothing). A malformed one is
        refused with its reason; the others go in."""
        parsed: list[osv.Advisory] = []
        refused: list[dict[str, str]] = []
        for document in documents:
            try:
                parsed.append(osv.parse(document))
            except InvalidRequest as exc:
                ident = document.get("id") if isinstance(document, dict) else None
                refused.append({"id": str(ident)[:128] if ident else "?", "reason": exc.message[:300]})
        added = updated = unchanged = 0
        now = self.clock.now()
        async with self.db.transaction() as conn:
            stored = await modified_of(conn, [a.id for a in parsed])
            for advisory in parsed:
                before = stored.get(advisory.id)
                if before is not None and before >= advisory.modified:
                    unchanged += 1
                    continue
                await save_advisory(conn, advisory, now)
                stored[advisory.id] = advisory.modified
                added, updated = (added + 1, updated) if before is None else (added, updated + 1)
        if refused:
            log.warning("%d advisories refused, e.g. %s: %s", len(refused), refused[0]["id"], refused[0]["reason"])
        return AdvisoryImport(added=added, updated=updated, unchanged=unchanged, refused=refused)

    async def import_vex(self, document: Any) -> int:
        """Store an OpenVEX document's statements. Raises InvalidRequest."""
        found = vex.parse(document)
        async with self.db.transaction() as conn:
            return await save_statements(conn, found, self.clock.now())

    def sbom(self, release: str) -> list[Component] | None:
        """The components of ``release``'s published SBOM (None: no SBOM was published
        with it). Raises InvalidRequest when the published file is not a CycloneDX SBOM."""
        published = self.repository.published()
        if published is None:
            return None
        for target in published.signed.targets.values():
            fields = release_fields(target)
            if fields.get("kind") != "sbom" or fields.get("release") != release:
                continue
            directory, _, name = target.path.rpartition("/")
            path = contained(self.repository.image.targets_dir, directory, f"{target.hashes['sha256']}.{name}")
            if target.length > MAX_SBOM_BYTES:
                raise InvalidRequest(f"the SBOM of {release} is {target.length} bytes", code="invalid_sbom")
            try:
                return components(json.loads(path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise InvalidRequest(f"the SBOM of {release} cannot be read: {exc}", code="invalid_sbom") from exc
        return None

    async def release_findings(self, release: str) -> list[FindingView] | None:
        """Every advisory affecting a package of ``release`` (suppressed ones marked), most
        severe first; None when the release has no published SBOM."""
        listed = await asyncio.to_thread(self.sbom, release)
        if listed is None:
            return None
        async with self.db.transaction(readonly=True) as conn:
            naming: dict[tuple[str, str], list[osv.Advisory]] = {}
            for ecosystem in ("Debian", "PyPI"):
                names = {c.match_name for c in listed if c.ecosystem == ecosystem}
                for advisory in await advisories_naming(conn, ecosystem, names):
                    for affected in advisory.affected:
                        if osv.base_ecosystem(affected.ecosystem) == ecosystem:
                            naming.setdefault((ecosystem, affected.name), []).append(advisory)
            said = await statements(conn)
        findings = [finding for component in listed
                    for finding in _findings(component, naming.get((component.ecosystem, component.match_name), []),
                                             said)]
        findings.sort(key=lambda f: (osv.SEVERITIES.index(f.severity), f.advisory, f.package))
        return findings

    async def devices(self, scope: Scope | None, device_id: str | None = None) -> list[DeviceRelease]:
        """The fleet's devices (in ``scope``) with the release each runs."""
        only = DeviceFilter(scope=scope)
        query = (select(Device.id, Device.site, Device.running_version, AttestationStatus.passed,
                        AttestationStatus.release).outerjoin(AttestationStatus,
                                                             AttestationStatus.device_id == Device.id)
                 .where(*only.where()))
        if device_id is not None:
            query = query.where(Device.id == device_id)
        async with self.db.transaction(readonly=True) as conn:
            rows = list(await conn.execute(query.order_by(Device.site, Device.id)))
        found = []
        for ident, site, running, passed, attested in rows:
            proven = bool(passed) and attested is not None
            release = attested if proven else running
            if release:
                found.append(DeviceRelease(ident, site, release, proven))
        return found

    async def affected_devices(self, name: str, scope: Scope | None) -> list[AffectedDevice]:
        """The devices (in ``scope``) whose release has a package ``name`` (an advisory id
        or alias, e.g. a CVE) affects and no VEX statement clears."""
        fleet = await self.devices(scope)
        affected: list[AffectedDevice] = []
        for release in sorted({d.release for d in fleet}):
            findings = [f for f in await self.release_findings(release) or []
                        if f.suppressed is None and (f.advisory == name or name in f.aliases)]
            for device in (d for d in fleet if d.release == release):
                affected += [AffectedDevice(device_id=device.device_id, site=device.site, release=release,
                                            proven=device.proven, package=f.package, version=f.version,
                                            fixed_in=f.fixed_in) for f in findings]
        return affected


def _findings(component: Component, advisories: list[osv.Advisory],
              said: dict[tuple[str, str], tuple[str, str]]) -> list[FindingView]:
    found = []
    for advisory in advisories:
        for affected in advisory.affected:
            ecosystem, _, distro = affected.ecosystem.partition(":")
            if ecosystem != component.ecosystem or affected.name != component.match_name:
                continue
            if distro and component.distro_release is not None and distro != component.distro_release:
                continue  # an advisory of another Debian release
            if not affected.contains(component.match_version):
                continue
            statement = next((said[(n, p)] for n in advisory.names for p in component.products if (n, p) in said),
                             None)
            suppressed = None
            if statement is not None and statement[0] in ("not_affected", "fixed"):
                suppressed = f"{statement[0]}: {statement[1]}"
            found.append(FindingView(
                advisory=advisory.id, aliases=list(advisory.aliases), severity=advisory.severity,
                summary=advisory.summary, ecosystem=component.ecosystem, package=component.name,
                version=component.version, fixed_in=affected.fixed_after(component.match_version),
                suppressed=suppressed))
            break
    return found

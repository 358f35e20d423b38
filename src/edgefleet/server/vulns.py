"""What the fleet's releases contain that advisories name: advisories (OSV), VEX statements
and KEV catalogues imported by operators, each published release's SBOM (its signed
``sbom`` target), and the devices on each release. The matching itself is
``vuln/findings.py``; this service reads what it needs, keeps the findings of every
release while neither the published targets nor the imported data change, and raises an
alert when a vulnerability known to be exploited runs in the fleet.

A device's findings are those of the release its last passing attestation proved (else
the one it reports, marked as not proven).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from edgefleet.clock import Clock
from edgefleet.errors import InvalidRequest, NotFound, StoreError
from edgefleet.protocol.scope import Scope
from edgefleet.protocol.v1 import (
    AdvisoryImport,
    AffectedDevice,
    CveReport,
    ExploitedImport,
    FindingView,
    VulnerabilitySummary,
)
from edgefleet.releases.image import release_fields
from edgefleet.server.alerts import Alerts
from edgefleet.server.repository import RepositoryService
from edgefleet.store import Database
from edgefleet.store.devices import DeviceFilter
from edgefleet.store.schema import AdvisoryRow, AttestationStatus, Device, KnownExploited, VexStatement
from edgefleet.store.vulns import (
    advisories_naming,
    advisory_dates,
    exploited,
    mark_alerted,
    modified_of,
    save_advisories,
    save_exploited,
    save_statements,
    statements,
)
from edgefleet.util.paths import contained
from edgefleet.vuln import findings as judge
from edgefleet.vuln import osv, vex
from edgefleet.vuln.components import components, subject
from edgefleet.vuln.findings import DeviceRelease, Release

log = logging.getLogger("edgefleet.server.vulns")

MAX_SBOM_BYTES = 64 * 1024 * 1024
MAX_EXPLOITED = 100_000
SBOMS_HELD = 256  # parsed SBOMs kept, by content digest


class Vulnerabilities:
    def __init__(self, db: Database, repository: RepositoryService, clock: Clock, alerts: Alerts) -> None:
        self.db, self.repository, self.clock, self.alerts = db, repository, clock, alerts
        self._sboms: dict[str, Release] = {}  # by the SBOM target's sha256 and release
        self._kept: tuple[Any, Judged] | None = None  # (what it was computed from, the findings)

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
        now = self.clock.now()
        latest: dict[str, osv.Advisory] = {}
        for advisory in parsed:  # an export may list an advisory twice: the newest counts
            if advisory.id not in latest or advisory.modified > latest[advisory.id].modified:
                latest[advisory.id] = advisory
        async with self.db.transaction() as conn:
            stored = await modified_of(conn, list(latest))
            changed = [(a, None if a.id not in stored else stored[a.id][1]) for a in latest.values()
                       if a.id not in stored or stored[a.id][0] < a.modified]
            await save_advisories(conn, changed, now)
        added = sum(first is None for _, first in changed)
        updated = len(changed) - added
        unchanged = len(parsed) - len(changed)
        if refused:
            log.warning("%d advisories refused, e.g. %s: %s", len(refused), refused[0]["id"], refused[0]["reason"])
        if added or updated:
            await self.alert_exploited()  # an advisory may name a known-exploited CVE the fleet runs
        return AdvisoryImport(added=added, updated=updated, unchanged=unchanged, refused=refused)

    async def import_vex(self, document: Any) -> int:
        """Store an OpenVEX document's statements. Raises InvalidRequest."""
        found = vex.parse(document)
        async with self.db.transaction() as conn:
            return await save_statements(conn, found, self.clock.now())

    async def import_exploited(self, document: Any) -> ExploitedImport:
        """Store a KEV catalogue (CISA's ``known_exploited_vulnerabilities.json`` shape:
        ``vulnerabilities`` of ``cveID`` and ``dateAdded``), then alert for each entry the
        fleet runs. Raises InvalidRequest for something that is not one."""
        listed = document.get("vulnerabilities") if isinstance(document, dict) else None
        if not isinstance(listed, list):
            raise InvalidRequest("not a KEV catalogue (no vulnerabilities list)", code="invalid_kev")
        entries = {}
        for index, item in enumerate(listed[:MAX_EXPLOITED]):
            cve = item.get("cveID") if isinstance(item, dict) else None
            if not isinstance(cve, str) or not 0 < len(cve) <= 128:
                raise InvalidRequest(f"KEV entry {index} has no cveID", code="invalid_kev")
            note = " ".join(str(item.get(k) or "") for k in ("vendorProject", "product", "vulnerabilityName"))
            entries[cve] = (cve, str(item.get("dateAdded") or "")[:32], note.strip()[:500])
        async with self.db.transaction() as conn:
            added = await save_exploited(conn, entries.values(), self.clock.now())
        return ExploitedImport(added=added, alerts=await self.alert_exploited())

    async def alert_exploited(self) -> int:
        """Raise one alert (``vulnerability_exploited``, through the webhooks) for each
        known-exploited vulnerability that affects a device of the fleet and was not alerted
        yet; how many were raised. Cheap when nothing changed: a KEV catalogue lists
        about a thousand CVEs, of which a fleet runs few."""
        async with self.db.transaction(readonly=True) as conn:
            pending = {e.cve: e for e in (await exploited(conn)).values() if e.alerted_at is None}
        if not pending:
            return 0
        judged = await self.all_findings()
        everything, releases = judged.findings, judged.releases
        running = {name for listed in everything.values() for finding in listed if finding.suppressed is None
                   for name in judge.names_of(finding) if name in pending}
        if not running:
            return 0
        fleet = await self.devices(None)
        raised = 0
        for cve in sorted(running):
            entry = pending[cve]
            report = judge.cve_report(cve, releases, everything, fleet, {}, None, None, self.clock.now())
            if report is None or not report.affected_devices:
                continue  # its releases are published, but no device runs them (yet)
            async with self.db.transaction() as conn:
                if not await mark_alerted(conn, cve, self.clock.now()):
                    continue
                await self.alerts.raise_alert(
                    conn, "vulnerability_exploited", cve,
                    f"{cve} is known to be exploited (since {entry.date_added}) and runs on "
                    f"{report.affected_devices} devices", {
                        "cve": cve, "advisories": report.advisories, "severity": report.severity,
                        "affected_devices": report.affected_devices, "affected_by_site": report.affected_by_site,
                        "releases": sorted({r.release for r in report.affected_releases if r.devices}),
                        "first_fixed_release": report.first_fixed_release})
            raised += 1
        if raised:
            self.alerts.wake()
        return raised

    async def watch_exploited(self, interval: float) -> None:
        """Every ``interval`` seconds, alert for a known-exploited vulnerability that now runs
        in the fleet (a device moved to an affected release, a release was published)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.alert_exploited()
            except (StoreError, InvalidRequest) as exc:
                log.warning("could not look for known-exploited vulnerabilities in the fleet: %s", exc)

    def _release(self, version: str, counter: int, target: Any) -> Release:
        """The parsed SBOM of a published ``sbom`` target (kept by its digest). Raises
        InvalidRequest when the file is not a CycloneDX SBOM."""
        key = f"{target.hashes['sha256']}:{version}:{counter}"
        kept = self._sboms.get(key)
        if kept is not None:
            return kept
        if target.length > MAX_SBOM_BYTES:
            raise InvalidRequest(f"the SBOM of {version} is {target.length} bytes", code="invalid_sbom")
        directory, _, name = target.path.rpartition("/")
        path = contained(self.repository.image.targets_dir, directory, f"{target.hashes['sha256']}.{name}")
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"the SBOM of {version} cannot be read: {exc}", code="invalid_sbom") from exc
        release = Release(version, counter, subject(document), tuple(components(document)))
        if len(self._sboms) >= SBOMS_HELD:
            del self._sboms[next(iter(self._sboms))]
        self._sboms[key] = release
        return release

    def releases(self) -> list[Release]:
        """Every published release that has an SBOM, by counter."""
        published = self.repository.published()
        if published is None:
            return []
        counters, sboms = {}, {}
        for target in published.signed.targets.values():
            fields = release_fields(target)
            if fields.get("kind") == "sbom" and isinstance(fields.get("release"), str):
                sboms[fields["release"]] = target
            elif isinstance(fields.get("version"), str) and "release_counter" in fields:
                counters[fields["version"]] = int(str(fields["release_counter"]))
        return sorted((self._release(version, counters.get(version, -1), target)
                       for version, target in sboms.items()), key=lambda r: (r.counter, r.version))

    async def _fingerprint(self) -> tuple[Any, ...]:
        """What the findings were computed from, in the database: changes with any import
        (on any server of the fleet)."""
        async with self.db.transaction(readonly=True) as conn:
            advisories = (await conn.execute(select(func.count(), func.max(AdvisoryRow.modified),
                                                    func.max(AdvisoryRow.stored_at)))).one()
            said = (await conn.execute(select(func.count(), func.max(VexStatement.imported_at)))).one()
            known = (await conn.execute(select(func.count(), func.max(KnownExploited.imported_at)))).one()
        return (*advisories, *said, *known)

    async def all_findings(self) -> Judged:
        """The findings of every published release with an SBOM, each with the release that
        first fixes it; kept while neither the published targets nor the imports change."""
        published = self.repository.published()
        fingerprint = await self._fingerprint()
        kept = self._kept
        if kept is not None and kept[0][0] is published and kept[0][1] == fingerprint:
            return kept[1]
        releases = await asyncio.to_thread(self.releases)
        async with self.db.transaction(readonly=True) as conn:
            naming: dict[tuple[str, str], list[osv.Advisory]] = {}
            for ecosystem in osv.ECOSYSTEMS:
                names = {c.match_name for r in releases for c in r.components if c.ecosystem == ecosystem}
                for advisory in await advisories_naming(conn, ecosystem, names):
                    for affected in advisory.affected:
                        if osv.base_ecosystem(affected.ecosystem) == ecosystem:
                            naming.setdefault((ecosystem, affected.name), []).append(advisory)
            said = await statements(conn)
            known = {cve: e.date_added for cve, e in (await exploited(conn)).items()}

        def judged() -> dict[str, list[FindingView]]:  # seconds with a large feed: off the event loop
            return judge.with_fixing_releases(releases, {
                r.version: judge.release_findings(r, naming, said, known) for r in releases})

        found = Judged(await asyncio.to_thread(judged), releases, said)
        self._kept = ((published, fingerprint), found)
        return found

    async def release_findings(self, release: str) -> list[FindingView] | None:
        """Every advisory affecting a package of ``release`` (suppressed ones marked), most
        severe first; None when the release has no published SBOM."""
        return (await self.all_findings()).findings.get(release)

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
        return _affected((await self.all_findings()).findings, await self.devices(scope), name)

    async def report(self, name: str, scope: Scope | None) -> tuple[CveReport, list[AffectedDevice]]:
        """The facts of a vulnerability notification for ``name`` (an advisory id or CVE)
        over the devices in ``scope``, and those devices. Raises NotFound when no published
        release has a package it names."""
        judged = await self.all_findings()
        fleet = await self.devices(scope)
        named = {f.advisory for listed in judged.findings.values() for f in listed if name in judge.names_of(f)}
        async with self.db.transaction(readonly=True) as conn:
            first_seen, published = await advisory_dates(conn, named)
        found = judge.cve_report(name, judged.releases, judged.findings, fleet, judged.said, first_seen, published,
                                 self.clock.now())
        if found is None:
            raise NotFound(f"no published release has a package {name} names (or no advisory names it)")
        return found, _affected(judged.findings, fleet, name)

    async def summary(self, scope: Scope | None) -> VulnerabilitySummary:
        judged = await self.all_findings()
        return judge.summary(judged.releases, judged.findings, await self.devices(scope))


@dataclass(frozen=True)
class Judged:
    """The findings of every published release with an SBOM, and what they were judged with."""

    findings: dict[str, list[FindingView]]
    releases: list[Release]
    said: judge.Said  # the VEX statements


def _affected(findings: dict[str, list[FindingView]], fleet: list[DeviceRelease], name: str) -> list[AffectedDevice]:
    """The devices of ``fleet`` that advisory ``name`` affects (each release's findings
    searched once, not once per device)."""
    hits = {release: judge.affecting(listed, name) for release, listed in findings.items()}
    return [AffectedDevice(device_id=device.device_id, site=device.site, release=device.release,
                           proven=device.proven, package=f.package, version=f.version, fixed_in=f.fixed_in)
            for device in fleet for f in hits.get(device.release, [])]

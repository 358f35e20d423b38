"""Findings: which advisories affect which release, and what that means for the devices that
run them. A release's findings are its SBOM's components matched with the advisories that
name them (Debian by source package and version in Debian's ordering, for the image's
Debian release; PyPI by canonical name, in PEP 440's), less what a VEX statement says does
not affect it. Pure: the caller reads the SBOMs, advisories, statements and devices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from edgefleet.protocol.v1 import (
    AffectedRelease,
    CveReport,
    FindingView,
    FleetAdvisory,
    SeverityCount,
    VulnerabilitySummary,
)
from edgefleet.vuln import osv
from edgefleet.vuln.components import Component

Said = Mapping[tuple[str, str], tuple[str, str]]  # (vulnerability, product) -> (status, justification)


@dataclass(frozen=True)
class Release:
    """A published release with an SBOM."""

    version: str
    counter: int
    product: str  # the SBOM's subject
    components: tuple[Component, ...]


@dataclass(frozen=True)
class DeviceRelease:
    device_id: str
    site: str
    release: str
    proven: bool  # its last attestation passed on this release (else: the release it reports)


def names_of(finding: FindingView) -> set[str]:
    return {finding.advisory, *finding.aliases}


def component_findings(component: Component, advisories: Iterable[osv.Advisory], said: Said,
                       exploited: Mapping[str, str]) -> list[FindingView]:
    """The advisories that affect ``component`` (at most one finding per advisory)."""
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
                suppressed=suppressed,
                known_exploited=next((exploited[n] for n in advisory.names if n in exploited), None)))
            break
    return found


def release_findings(release: Release, naming: Mapping[tuple[str, str], Sequence[osv.Advisory]], said: Said,
                     exploited: Mapping[str, str]) -> list[FindingView]:
    """Every advisory affecting a package of ``release`` (suppressed ones marked), most
    severe first. ``naming``: (ecosystem, name) -> the advisories that name it."""
    findings = [finding for component in release.components
                for finding in component_findings(component, naming.get((component.ecosystem, component.match_name),
                                                                        ()), said, exploited)]
    findings.sort(key=lambda f: (osv.SEVERITIES.index(f.severity), f.advisory, f.package))
    return findings


def with_fixing_releases(releases: Sequence[Release],
                         findings: Mapping[str, list[FindingView]]) -> dict[str, list[FindingView]]:
    """``findings`` (per release) with each one's first later release it does not affect."""
    ordered = sorted(releases, key=lambda r: r.counter)
    affecting: dict[str, set[str]] = {}
    for version, listed in findings.items():
        for finding in listed:
            if finding.suppressed is None:
                affecting.setdefault(finding.advisory, set()).add(version)
    counters = {r.version: r.counter for r in releases}
    done: dict[str, list[FindingView]] = {}
    for version, listed in findings.items():
        done[version] = [finding.model_copy(update={"fixed_by_release": next(
            (r.version for r in ordered if r.counter > counters[version]
             and r.version not in affecting.get(finding.advisory, ())), None)}) for finding in listed]
    return done


def affecting(findings: Iterable[FindingView], name: str) -> list[FindingView]:
    """The findings, not suppressed, of the advisory ``name`` (its id or an alias)."""
    return [f for f in findings if f.suppressed is None and name in names_of(f)]


def cve_report(name: str, releases: Sequence[Release], findings: Mapping[str, list[FindingView]],
               fleet: Sequence[DeviceRelease], said: Said, first_seen: datetime | None, published: datetime | None,
               now: datetime) -> CveReport | None:
    """The facts of a vulnerability notification for advisory ``name`` over ``fleet``; None
    when no published release contains a package it names."""
    known = {r.version: r for r in releases}
    hits = {version: affecting(listed, name) for version, listed in findings.items()}
    hits = {version: found for version, found in hits.items() if found}
    named = [f for listed in findings.values() for f in listed if name in names_of(f)]  # suppressed too
    if not named:
        return None
    first = min(named, key=lambda f: osv.SEVERITIES.index(f.severity))
    per_release = Counter(d.release for d in fleet)
    affected_releases = [AffectedRelease(release=version, product=known[version].product, package=f.package,
                                         version=f.version, fixed_in=f.fixed_in, devices=per_release[version])
                         for version in sorted(hits, key=lambda v: known[v].counter) for f in hits[version]]
    affected = [d for d in fleet if d.release in hits]
    lowest = min((known[v].counter for v in hits), default=None)
    newest = max((known[v].counter for v in hits), default=None)
    fixing = [r.version for r in sorted(releases, key=lambda r: r.counter)
              if r.version not in hits and lowest is not None and r.counter > lowest]
    first_fixed = next((v for v in fixing if newest is not None and known[v].counter > newest), None)
    fixed = sum(per_release[v] for v in fixing)
    advisories = {f.advisory for f in named}
    aliases = sorted({a for f in named for a in names_of(f)} - {name} - advisories)
    vex = sorted({f"{status}: {justification} ({product})" for (vulnerability, product), (status, justification)
                  in said.items() if vulnerability in {name, *aliases, *advisories}})
    return CveReport(
        cve=name, advisories=sorted(advisories), aliases=aliases, severity=first.severity,
        summary=first.summary, published=published, first_seen=first_seen, known_exploited=first.known_exploited,
        affected_releases=affected_releases, affected_devices=len(affected),
        proven_devices=sum(d.proven for d in affected), affected_by_site=dict(sorted(Counter(
            d.site for d in affected).items())),
        fix_available=bool(hits) and all(f.fixed_in is not None for found in hits.values() for f in found),
        fixing_releases=fixing, first_fixed_release=first_fixed, fixed_devices=fixed,
        fix_rolled_out_percent=round(100 * fixed / (fixed + len(affected)), 1) if fixed + len(affected) else None,
        vex=vex, generated_at=now)


def summary(releases: Sequence[Release], findings: Mapping[str, list[FindingView]],
            fleet: Sequence[DeviceRelease]) -> VulnerabilitySummary:
    """Counts per severity over ``fleet`` and every advisory affecting one of its devices."""
    counters = {r.version: r.counter for r in releases}
    per_release = Counter(d.release for d in fleet)
    hits: dict[str, dict[str, FindingView]] = {}  # advisory -> release -> its finding there
    for version in per_release:
        for finding in findings.get(version, []):
            if finding.suppressed is None:
                hits.setdefault(finding.advisory, {}).setdefault(version, finding)
    advisories = []
    for advisory, where in hits.items():
        ordered = sorted(where, key=lambda v: counters[v])
        newest = where[ordered[-1]]  # the fix must come after every affected release
        advisories.append(FleetAdvisory(
            advisory=advisory, aliases=newest.aliases, severity=newest.severity, summary=newest.summary,
            devices=sum(per_release[v] for v in ordered), releases=ordered,
            fixed_by_release=newest.fixed_by_release, known_exploited=newest.known_exploited))
    severities = {}
    for severity in osv.SEVERITIES:
        at = {v for a in advisories if a.severity == severity for v in a.releases}
        severities[severity] = SeverityCount(advisories=sum(a.severity == severity for a in advisories),
                                             devices=sum(per_release[v] for v in at))
    advisories.sort(key=lambda a: (a.known_exploited is None, osv.SEVERITIES.index(a.severity), -a.devices,
                                   a.advisory))
    return VulnerabilitySummary(devices=len(fleet), severities=severities, advisories=advisories,
                                total=len(advisories),
                                releases_without_sbom=sorted(v for v in per_release if v not in findings))

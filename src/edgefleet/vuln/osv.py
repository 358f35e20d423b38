"""Advisories in the OSV format (https://ossf.github.io/osv-schema/), read strictly enough to
be safe and leniently enough to take the Debian and PyPI exports as they are; version
ranges evaluated with each ecosystem's own ordering (Debian: python-debian, with epochs and
``~``; PyPI: PEP 440 through ``packaging``). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from debian.debian_support import Version as DebianVersion
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion
from packaging.version import Version as Pep440Version

from edgefleet.errors import InvalidRequest

ECOSYSTEMS = ("Debian", "PyPI")
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
MAX_RANGES = 64
MAX_EVENTS = 256
MAX_VERSIONS = 4096


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"advisory: {message}", code="invalid_advisory")


def base_ecosystem(ecosystem: str) -> str:
    """``Debian:12`` -> ``Debian``."""
    return ecosystem.split(":", 1)[0]


@lru_cache(maxsize=65536)
def version_key(ecosystem: str, version: str) -> Any:
    """What ``version`` sorts by in ``ecosystem`` (kept: judging a fleet compares the same
    few thousand versions again and again). Raises InvalidRequest when the ecosystem
    cannot read it."""
    try:
        return Pep440Version(version) if ecosystem == "PyPI" else DebianVersion(version)
    except (InvalidVersion, ValueError) as exc:
        raise _bad(f"{ecosystem} version {version!r}: {exc}") from exc


def compare(ecosystem: str, left: str, right: str) -> int:
    """-1, 0 or 1 as ``left`` sorts before, with or after ``right`` in ``ecosystem``.
    Raises InvalidRequest for a version the ecosystem cannot read."""
    a, b = version_key(ecosystem, left), version_key(ecosystem, right)
    return int(a > b) - int(a < b)


@dataclass(frozen=True)
class Range:
    events: tuple[tuple[str, str], ...]  # ("introduced"|"fixed"|"last_affected"|"limit", version), as given

    def contains(self, ecosystem: str, version: str) -> bool:
        """OSV's evaluation: walk the events in version order; affected from an
        ``introduced`` on, not from a ``fixed`` on or past a ``last_affected``."""
        affected = False
        ordered = sorted(self.events, key=lambda e: (e[1] != "0", 0 if e[1] == "0" else version_key(ecosystem, e[1])))
        for kind, bound in ordered:
            if kind == "introduced" and (bound == "0" or compare(ecosystem, version, bound) >= 0):
                affected = True
            elif (kind == "fixed" and compare(ecosystem, version, bound) >= 0) or (
                    kind == "last_affected" and compare(ecosystem, version, bound) > 0):
                affected = False
        return affected

    def fixed_after(self, ecosystem: str, version: str) -> str | None:
        """The first ``fixed`` version above ``version`` in this range, if any."""
        fixes = [bound for kind, bound in self.events if kind == "fixed" and compare(ecosystem, bound, version) > 0]
        return min(fixes, key=lambda fix: version_key(ecosystem, fix)) if fixes else None


@dataclass(frozen=True)
class Affected:
    ecosystem: str  # as the advisory writes it (``Debian:12``)
    name: str
    ranges: tuple[Range, ...]
    versions: frozenset[str]  # listed one by one

    def contains(self, version: str) -> bool:
        base = base_ecosystem(self.ecosystem)
        return version in self.versions or any(r.contains(base, version) for r in self.ranges)

    def fixed_after(self, version: str) -> str | None:
        base = base_ecosystem(self.ecosystem)
        fixes = [f for r in self.ranges if (f := r.fixed_after(base, version)) is not None]
        return min(fixes, key=lambda fix: version_key(base, fix)) if fixes else None

    def to_json(self) -> dict[str, Any]:
        return {"ecosystem": self.ecosystem, "name": self.name, "versions": sorted(self.versions),
                "ranges": [[list(e) for e in r.events] for r in self.ranges]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Affected:
        return cls(data["ecosystem"], data["name"], tuple(Range(tuple((k, v) for k, v in r)) for r in data["ranges"]),
                   frozenset(data["versions"]))


@dataclass(frozen=True)
class Advisory:
    id: str
    modified: datetime
    aliases: tuple[str, ...]
    summary: str
    severity: str  # one of SEVERITIES
    affected: tuple[Affected, ...]  # only the ecosystems read here
    published: datetime | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """This advisory and its aliases (a CVE id is usually among them)."""
        return (self.id, *self.aliases)


def parse(document: Any) -> Advisory:
    """One OSV advisory. Raises InvalidRequest naming what is wrong."""
    if not isinstance(document, dict):
        raise _bad("not a JSON object")
    ident = document.get("id")
    if not isinstance(ident, str) or not 0 < len(ident) <= 128:
        raise _bad("id missing or not a short string")
    when = _timestamp(ident, "modified", document.get("modified"))
    published = None if document.get("published") is None else _timestamp(ident, "published",
                                                                           document["published"])
    aliases = tuple(str(a)[:128] for a in document.get("aliases") or [] if isinstance(a, str))[:32]
    affected = []
    for entry in document.get("affected") or []:
        package = entry.get("package") if isinstance(entry, dict) else None
        if not isinstance(package, dict) or base_ecosystem(str(package.get("ecosystem", ""))) not in ECOSYSTEMS:
            continue  # another ecosystem: nothing of ours
        affected.append(_affected(ident, str(package["ecosystem"]), str(package.get("name", "")), entry))
    return Advisory(ident, when, aliases, str(document.get("summary") or document.get("details") or "")[:500],
                    _severity(document), tuple(affected), published)


def _timestamp(ident: str, field: str, value: Any) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise _bad(f"{ident}: {field} {value!r} is not a timestamp") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _affected(ident: str, ecosystem: str, name: str, entry: Mapping[str, Any]) -> Affected:
    if not 0 < len(name) <= 256:
        raise _bad(f"{ident}: a package name of {len(name)} characters")
    base = base_ecosystem(ecosystem)
    if base == "PyPI":
        name = canonicalize_name(name)  # as the SBOM's names are matched
    ranges = []
    for item in (entry.get("ranges") or [])[:MAX_RANGES]:
        if not isinstance(item, dict) or item.get("type") not in ("ECOSYSTEM", "SEMVER"):
            continue  # GIT ranges name commits, not versions
        events = []
        for event in (item.get("events") or [])[:MAX_EVENTS]:
            if not isinstance(event, dict) or len(event) != 1:
                raise _bad(f"{ident}: an event must have exactly one of introduced, fixed, last_affected, limit")
            ((kind, version),) = event.items()
            if kind not in ("introduced", "fixed", "last_affected", "limit") or not isinstance(version, str):
                raise _bad(f"{ident}: event {event!r}")
            if version != "0":
                compare(base, version, version)  # refuses what the ecosystem cannot read
            events.append((kind, version))
        ranges.append(Range(tuple(events)))
    versions = [v for v in (entry.get("versions") or [])[:MAX_VERSIONS] if isinstance(v, str)]
    return Affected(ecosystem, name, tuple(ranges), frozenset(versions))


def _severity(document: Mapping[str, Any]) -> str:
    """The advisory's severity as a word: the ecosystem's own (``database_specific`` or
    ``ecosystem_specific``), else UNKNOWN (CVSS vectors are kept out of this)."""
    for holder in [document.get("database_specific")] + [a.get("ecosystem_specific") for a in
                                                        document.get("affected") or [] if isinstance(a, dict)]:
        if isinstance(holder, dict):
            word = str(holder.get("severity", "")).upper()
            if word in SEVERITIES:
                return word
            if word == "MODERATE":
                return "MEDIUM"
    return "UNKNOWN"

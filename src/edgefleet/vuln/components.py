"""The packages a CycloneDX SBOM lists, as advisories name them: a Debian binary package by
its source package and version (what Debian's advisories name), a Python distribution by
its canonical name. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packageurl import PackageURL
from packaging.utils import canonicalize_name

from edgefleet.errors import InvalidRequest
from edgefleet.vuln.vex import product_key

MAX_COMPONENTS = 100_000
SOURCE_PROPERTY = "edgefleet:debian:source"  # a Debian component's "source-name source-version"


@dataclass(frozen=True)
class Component:
    ecosystem: str  # "Debian" or "PyPI"
    name: str  # as the SBOM lists it
    version: str
    match_name: str  # what advisories name: the Debian source package, the canonical PyPI name
    match_version: str
    distro_release: str | None  # Debian: "12" from the purl's distro=debian-12
    products: tuple[str, ...]  # the package URLs a VEX statement may name it by


def components(document: Any) -> list[Component]:
    """The Debian and PyPI components of a CycloneDX JSON document (others are not read).
    Raises InvalidRequest for something that is not one."""
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        raise InvalidRequest("SBOM: not a CycloneDX document", code="invalid_sbom")
    found = []
    for item in (document.get("components") or [])[:MAX_COMPONENTS]:
        if not isinstance(item, dict) or not isinstance(item.get("purl"), str):
            continue
        try:
            purl = PackageURL.from_string(item["purl"])
        except ValueError:
            continue
        if purl.version is None:
            continue
        if purl.type == "deb":
            source, source_version = purl.name, purl.version
            for prop in item.get("properties") or []:
                if isinstance(prop, dict) and prop.get("name") == SOURCE_PROPERTY:
                    parts = str(prop.get("value", "")).split()
                    if len(parts) == 2:
                        source, source_version = parts
            distro = str((purl.qualifiers or {}).get("distro", ""))
            release = distro.rpartition("-")[2] if distro.startswith("debian-") else None
            products = {product_key(f"pkg:deb/debian/{purl.name}@{purl.version}"), f"pkg:deb/debian/{purl.name}",
                        product_key(f"pkg:deb/debian/{source}@{source_version}"), f"pkg:deb/debian/{source}"}
            found.append(Component("Debian", purl.name, purl.version, source, source_version, release,
                                   tuple(sorted(products))))
        elif purl.type == "pypi":
            name = canonicalize_name(purl.name)
            products = {f"pkg:pypi/{name}@{purl.version}", f"pkg:pypi/{name}"}
            found.append(Component("PyPI", purl.name, purl.version, name, purl.version, None, tuple(sorted(products))))
    return found


def subject(document: Any) -> str:
    """What a CycloneDX SBOM describes (``metadata.component``'s name), or "" when unnamed."""
    component = (document.get("metadata") or {}).get("component") if isinstance(document, dict) else None
    name = component.get("name") if isinstance(component, dict) else None
    return name[:128] if isinstance(name, str) else ""

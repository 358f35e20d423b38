"""The software bill of materials of an image's root filesystem, as CycloneDX 1.6 JSON
(cyclonedx-python-lib builds and validates it against the schema): every Debian package
dpkg's status file lists as installed (with its source package, which Debian's advisories
name) and every Python distribution installed for the agent.

Reproducible like the rest of the build: the serial number derives from the content and
the timestamp from ``SOURCE_DATE_EPOCH`` (or the epoch), and every component's reference
is its package URL.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.bom_ref import BomRef
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from debian.deb822 import Deb822
from packageurl import PackageURL

from edgefleet.errors import BuildError
from edgefleet.vuln.components import SOURCE_PROPERTY

SBOM = "sbom.cdx.json"
DISTRO = "debian-12"
_SOURCE = re.compile(r"^(\S+)(?:\s+\((\S+)\))?$")


@dataclass(frozen=True)
class Package:
    ecosystem: str  # "Debian" or "PyPI", as OSV names them
    name: str
    version: str
    arch: str | None = None
    source: str | None = None  # Debian: the source package
    source_version: str | None = None

    @property
    def purl(self) -> PackageURL:
        if self.ecosystem == "PyPI":
            return PackageURL(type="pypi", name=self.name.lower(), version=self.version)
        qualifiers = {"arch": self.arch or "all", "distro": DISTRO}
        return PackageURL(type="deb", namespace="debian", name=self.name, version=self.version,
                          qualifiers=qualifiers)


def debian_packages(root: Path) -> list[Package]:
    """What dpkg's status file in ``root`` lists as installed."""
    status = root / "var/lib/dpkg/status"
    packages = []
    with status.open(encoding="utf-8") as handle:
        for paragraph in Deb822.iter_paragraphs(handle):
            if paragraph.get("Status", "").split()[-1:] != ["installed"]:
                continue
            name, version = paragraph["Package"], paragraph["Version"]
            source, source_version = name, version
            found = _SOURCE.match(paragraph.get("Source", ""))
            if found is not None:
                source, source_version = found.group(1), found.group(2) or version
            packages.append(Package("Debian", name, version, paragraph.get("Architecture"), source, source_version))
    return sorted(packages, key=lambda p: (p.name, p.arch or ""))


def python_packages(site: Path) -> list[Package]:
    """The Python distributions installed in ``site`` (a --target directory)."""
    found = {(d.metadata["Name"], d.version) for d in importlib.metadata.distributions(path=[str(site)])}
    return [Package("PyPI", name, version) for name, version in sorted(found, key=lambda nv: nv[0].lower())]


def build_sbom(name: str, version: str, packages: list[Package]) -> str:
    """CycloneDX 1.6 JSON of an image ``name`` ``version`` holding ``packages``, validated.
    Raises BuildError if the library's validator refuses it."""
    components = []
    for package in packages:
        purl = package.purl
        properties = []
        if package.source is not None:
            properties.append(Property(name=SOURCE_PROPERTY, value=f"{package.source} {package.source_version}"))
        components.append(Component(name=package.name, version=package.version, type=ComponentType.LIBRARY,
                                    purl=purl, bom_ref=BomRef(purl.to_string()), properties=properties))
    content = "\n".join(sorted(c.bom_ref.value or "" for c in components))
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"edgefleet:{name}:{version}:{content}"))
    bom.metadata.timestamp = datetime.datetime.fromtimestamp(_source_date_epoch(), datetime.UTC)
    bom.metadata.component = Component(name=name, version=version, type=ComponentType.OPERATING_SYSTEM,
                                       bom_ref=BomRef(f"edgefleet-image:{name}@{version}"))
    for component in components:
        bom.components.add(component)
    bom.register_dependency(bom.metadata.component, components)
    text: str = JsonV1Dot6(bom).output_as_string(indent=2)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise BuildError(f"the SBOM of {name} {version} does not validate: {error}")
    return text + "\n"


def _source_date_epoch() -> int:
    import os

    try:
        return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    except ValueError:
        return 0

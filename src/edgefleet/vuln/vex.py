"""OpenVEX statements (https://github.com/openvex/spec): a vulnerability's status for a
product, here a package (its package URL, with or without a version). Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packageurl import PackageURL

from edgefleet.errors import InvalidRequest

STATUSES = ("not_affected", "affected", "fixed", "under_investigation")
MAX_STATEMENTS = 10_000


@dataclass(frozen=True)
class Statement:
    vulnerability: str  # its id (CVE-..., DSA-..., GHSA-...)
    product: str  # a package URL without qualifiers (``pkg:deb/debian/openssl``), with ``@version`` when given
    status: str
    justification: str


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"VEX: {message}", code="invalid_vex")


def parse(document: Any) -> list[Statement]:
    """The statements of an OpenVEX document. Raises InvalidRequest naming what is wrong."""
    if not isinstance(document, dict) or not isinstance(document.get("statements"), list):
        raise _bad("not an OpenVEX document (no statements)")
    found = []
    for index, item in enumerate(document["statements"][:MAX_STATEMENTS]):
        if not isinstance(item, dict):
            raise _bad(f"statement {index} is not an object")
        vulnerability = item.get("vulnerability")
        name = vulnerability.get("name") if isinstance(vulnerability, dict) else vulnerability
        status = item.get("status")
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise _bad(f"statement {index}: no vulnerability name")
        if status not in STATUSES:
            raise _bad(f"statement {index}: status {status!r} (one of {', '.join(STATUSES)})")
        justification = str(item.get("justification") or item.get("impact_statement") or "")[:500]
        if status == "not_affected" and not justification:
            raise _bad(f"statement {index}: not_affected needs a justification")
        for product in item.get("products") or []:
            ident = product.get("@id") if isinstance(product, dict) else product
            found.append(Statement(name, product_key(str(ident)), status, justification))
    return found


def product_key(ident: str) -> str:
    """A package URL as statements are matched: type, namespace, name and version, without
    qualifiers. Raises InvalidRequest for something that is not a package URL."""
    try:
        purl = PackageURL.from_string(ident)
    except ValueError as exc:
        raise _bad(f"product {ident[:100]!r} is not a package URL ({exc})") from exc
    return PackageURL(type=purl.type, namespace=purl.namespace, name=purl.name, version=purl.version).to_string()

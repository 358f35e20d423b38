"""Admin API v1: vulnerability advisories (OSV), VEX and KEV catalogues in; findings per
release, per device and per advisory, the fleet's summary and a CVE's notification report
out (``server/vulns.py``)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from edgefleet.errors import InvalidRequest, NotFound
from edgefleet.protocol.base import ADVISORY_NAME, MAX_INT
from edgefleet.protocol.v1 import (
    AdvisoryImport,
    CveReport,
    ExploitedImport,
    VexImport,
    VulnerabilityReport,
    VulnerabilitySummary,
)
from edgefleet.server.auth import Operator, ScopedViewer
from edgefleet.server.bodies import bounded_body
from edgefleet.server.state import server_state

log = logging.getLogger("edgefleet.server")
router = APIRouter(prefix="/api/v1/admin/vulnerabilities", tags=["vulnerabilities"])

MAX_IMPORT_BYTES = 16 * 1024 * 1024  # a batch of advisories (the CLI sends a few MiB at a time)
MAX_ADVISORIES = 10_000
MAX_VEX_BYTES = 4 * 1024 * 1024
MAX_KEV_BYTES = 16 * 1024 * 1024  # CISA's catalogue is about 1.5 MiB


async def _json(request: Request, limit: int) -> Any:
    data = await bounded_body(request, limit)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from exc


@router.post("/advisories")
async def import_advisories(who: Operator, request: Request) -> AdvisoryImport:
    """A JSON list of OSV advisories (at most 10,000, 16 MiB): each new one is added, a
    stored one replaced only by a newer ``modified``; a malformed one is refused with its
    reason while the others go in."""
    documents = await _json(request, MAX_IMPORT_BYTES)
    if isinstance(documents, dict):
        documents = [documents]
    if not isinstance(documents, list) or len(documents) > MAX_ADVISORIES:
        raise InvalidRequest(f"the body must be a JSON list of at most {MAX_ADVISORIES} OSV advisories")
    result = await server_state(request).vulns.import_advisories(documents)
    log.info("%s imported advisories: %d added, %d updated, %d unchanged, %d refused", who.name, result.added,
             result.updated, result.unchanged, len(result.refused))
    return result


@router.post("/vex")
async def import_vex(who: Operator, request: Request) -> VexImport:
    """An OpenVEX document: its statements mark findings not affected (or fixed), with the
    justification shown beside them."""
    stored = await server_state(request).vulns.import_vex(await _json(request, MAX_VEX_BYTES))
    log.info("%s imported %d VEX statements", who.name, stored)
    return VexImport(stored=stored)


@router.post("/exploited")
async def import_exploited(who: Operator, request: Request) -> ExploitedImport:
    """A KEV catalogue (CISA's ``known_exploited_vulnerabilities.json`` shape): findings of
    its CVEs are marked known exploited, and each one that runs in the fleet raises a
    ``vulnerability_exploited`` alert (once) through the webhooks."""
    result = await server_state(request).vulns.import_exploited(await _json(request, MAX_KEV_BYTES))
    log.info("%s imported a KEV catalogue: %d new entries, %d alerts", who.name, result.added, result.alerts)
    return result


@router.get("/summary")
async def summary(
    who: ScopedViewer, request: Request,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> VulnerabilitySummary:
    """Counts per severity over the caller's devices, and the advisories that affect them
    (known exploited first, then most severe and widest)."""
    found = await server_state(request).vulns.summary(who.scope)
    return found.model_copy(update={"advisories": found.advisories[offset:offset + limit]})


@router.get("/report")
async def cve_report(
    who: ScopedViewer, request: Request,
    cve: Annotated[str, Query(pattern=ADVISORY_NAME, description="an advisory id or alias")],
) -> CveReport:
    """What a vulnerability notification needs for one CVE over the caller's devices:
    affected releases and devices (by site), first seen, whether and where it is fixed, and
    how far the fix has been rolled out."""
    found, _ = await server_state(request).vulns.report(cve, who.scope)
    return found


@router.get("")
async def report(
    who: ScopedViewer, request: Request,
    release: Annotated[str | None, Query(max_length=128)] = None,
    device: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    cve: Annotated[str | None, Query(pattern=ADVISORY_NAME, description="an advisory id or alias")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> VulnerabilityReport:
    """Exactly one of: ``release`` (the findings of its SBOM), ``device`` (those of the
    release it runs), ``cve`` (the devices it affects, in the caller's scope)."""
    if sum(x is not None for x in (release, device, cve)) != 1:
        raise InvalidRequest("give exactly one of release, device or cve")
    state = server_state(request)
    if cve is not None:
        devices = await state.vulns.affected_devices(cve, who.scope)
        return VulnerabilityReport(cve=cve, devices=devices[offset:offset + limit], total=len(devices))
    if device is not None:
        runs = await state.vulns.devices(who.scope, device)  # none outside the caller's scope
        if not runs:
            raise NotFound(f"device {device} not found, or it reports no release")
        release = runs[0].release
    assert release is not None
    findings = await state.vulns.release_findings(release)
    if findings is None:
        raise NotFound(f"release {release} has no published SBOM (edgefleet release create --sbom)")
    return VulnerabilityReport(release=release, device=device, findings=findings[offset:offset + limit],
                               total=len(findings))

"""The fleet's certificate revocation list, for hubs (and anything else holding the fleet
CA certificate). Public, as CRL distribution points are: it names only serials, and the
fleet CA's signature is what makes it count."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from edgefleet.server.state import server_state

router = APIRouter(tags=["revocation"])
CRL_MEDIA_TYPE = "application/pkix-crl"


@router.get("/api/v1/revocations.crl", response_class=Response,
            responses={200: {"content": {CRL_MEDIA_TYPE: {}}, "description": "DER X.509 CRL (RFC 5280)"}})
async def revocation_list(request: Request) -> Response:
    """The newest CRL, signed by the fleet CA; its CRL number grows with every revocation."""
    der = await server_state(request).revocations.der()
    return Response(der, media_type=CRL_MEDIA_TYPE, headers={"cache-control": "no-cache"})

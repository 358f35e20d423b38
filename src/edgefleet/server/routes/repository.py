"""Admin API for signed releases: upload roots, artifacts and targets (verified before
they become visible), list releases. The repository itself is served as static files
under /repository/ by the app, so any mirror can copy it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from starlette.responses import JSONResponse

from edgefleet.server.auth import Admin, Operator, Viewer
from edgefleet.server.bodies import bounded_body
from edgefleet.server.state import server_state

router = APIRouter(prefix="/api/v1/admin/repository", tags=["releases"])

MAX_METADATA_BYTES = 32 * 1024 * 1024
Sha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]


@router.put("/roots/{which}")
async def put_root(who: Admin, which: Literal["image", "director"], request: Request) -> dict[str, int]:
    """Upload a root: the first (version 1) from an admin, later ones as valid rotations."""
    state = server_state(request)
    data = await bounded_body(request, MAX_METADATA_BYTES)
    version = await asyncio.to_thread(state.repository.accept_root, which, data)
    if which == "director":
        await state.director.resign_all()  # devices must notice (and verify) the new director root
    return {"version": version}


@router.head("/blobs/{sha256}")
async def has_blob(_: Operator, sha256: Sha256, request: Request) -> Response:
    """200 if an artifact with this sha256 was uploaded already, 404 otherwise."""
    return Response(status_code=200 if server_state(request).repository.has_blob(sha256) else 404)


@router.put("/blobs/{sha256}")
async def put_blob(_: Operator, sha256: Sha256, request: Request) -> dict[str, int]:
    """Stream an artifact (image, module) named by its sha256; refused if the bytes differ."""
    service = server_state(request).repository

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk

    return {"length": await service.store_blob(sha256, chunks())}


@router.put("/targets")
async def put_targets(who: Operator, request: Request) -> dict[str, int]:
    """Publish targets signed offline by a threshold of release owners."""
    service = server_state(request).repository
    data = await bounded_body(request, MAX_METADATA_BYTES)
    return {"snapshot_version": await asyncio.to_thread(service.accept_targets, data)}


@router.get("/releases")
async def releases(_: Viewer, request: Request) -> Response:
    """The releases in the published targets, newest counter first."""
    version, rows = await asyncio.to_thread(server_state(request).repository.releases)
    if version is None:
        return JSONResponse({"releases": []})
    return JSONResponse({"targets_version": version, "releases": rows})

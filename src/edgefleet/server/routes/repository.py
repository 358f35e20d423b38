"""Admin API for signed releases: upload roots, artifacts and targets (verified before
they become visible), list releases. The repository itself is served as static files
under /repository/ by the app, so any mirror can copy it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.responses import JSONResponse

from edgefleet.delta.index import MAX_DICTIONARY
from edgefleet.server.auth import Admin, Operator, Viewer
from edgefleet.server.bodies import bounded_body, bounded_model
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
    """200 if an artifact with this sha256 was uploaded already, 404 otherwise (the headers
    of the JSON answers they stand for, without their bodies)."""
    return Response(status_code=200 if server_state(request).repository.has_blob(sha256) else 404,
                    media_type="application/json")


@router.put("/blobs/{sha256}")
async def put_blob(_: Operator, sha256: Sha256, request: Request) -> dict[str, int]:
    """Stream an artifact (image, module) named by its sha256; refused if the bytes differ."""
    return {"length": await server_state(request).repository.store_blob(sha256, request.stream())}


MAX_PIECE_IDS = 65_536  # a publisher asks 8,192 at a time (releases/publish.py)
MAX_PIECE_IDS_BODY = MAX_PIECE_IDS * 36 + 64


class PieceIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: Annotated[list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]], Field(max_length=MAX_PIECE_IDS)]


Namespace = Annotated[str, Path(pattern=r"^(raw|[0-9a-f]{32})$")]


@router.post("/pieces/{namespace}/missing", openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": PieceIds.model_json_schema()}}}})
async def missing_pieces(_: Operator, namespace: Namespace, request: Request) -> dict[str, object]:
    """Which of these content-index pieces the repository lacks, and whether it has the
    namespace's dictionary (a publisher uploads only what is missing)."""
    # Read here, bounded, after the credentials: a body FastAPI parsed for us would be read
    # in full before them (this route is past the global body limit).
    body = await bounded_model(request, PieceIds, MAX_PIECE_IDS_BODY)
    service = server_state(request).repository
    missing = await asyncio.to_thread(service.missing_pieces, namespace, body.ids)
    return {"missing": missing, "dictionary": namespace == "raw" or service.has_dictionary(namespace)}


@router.put("/pieces/{namespace}/dictionary")
async def put_dictionary(_: Operator, namespace: Namespace, request: Request) -> dict[str, bool]:
    """The zstd dictionary the namespace's pieces are compressed with (its id is the namespace)."""
    data = await bounded_body(request, MAX_DICTIONARY)
    await asyncio.to_thread(server_state(request).repository.store_dictionary, namespace, data)
    return {"stored": True}


@router.put("/pieces/{namespace}")
async def put_pieces(_: Operator, namespace: Namespace, request: Request) -> dict[str, int]:
    """A pack of pieces (``delta.pieces``); each is checked against its id before it is kept."""
    return {"stored": await server_state(request).repository.store_pieces(namespace, request.stream())}


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

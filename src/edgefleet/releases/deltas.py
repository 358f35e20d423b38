"""The delta targets of a release, built when it is created: a content index with its
pieces (any base), and a known-base delta from each of the last few releases' images.

Targets (signed with the release, so devices verify them through TUF like the image):

    os/<version>/<image>.index                 kind os-index
    os/<version>/<image>.from-<base>.delta     kind os-delta, base_version, base_sha256

Pieces are not targets: they are named by their content and checked against the signed
index, and live beside the targets in ``pieces/``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from edgefleet.delta.bsdelta import build_delta
from edgefleet.delta.index import build_index
from edgefleet.releases.image import describe, release_fields

log = logging.getLogger("edgefleet.releases")


@dataclass(frozen=True)
class Base:
    version: str
    path: Path  # the base release's image file


def build_delta_targets(image: Path, image_target: TargetFile, version: str, bases: Iterable[Base],
                        pieces_dir: Path, work: Path, *, index: bool = True, chunking: str | None = None,
                        dictionary: bytes | None = None) -> list[tuple[Path, TargetFile]]:
    """(file, target) for the index and each delta, the files written into ``work`` (the
    caller's scratch directory, which it copies them out of and removes)."""
    made: list[tuple[Path, TargetFile]] = []
    common = {"release": version, "image": image_target.path}
    if index:
        out = work / f"{image.name}.index"
        info = build_index(image, out, pieces_dir, chunking, dictionary)
        custom = {"edgefleet": {"kind": "os-index", **common, "mode": info.mode, "entries": info.entries,
                                "pieces": info.pieces, "pieces_bytes": info.pieces_bytes,
                                "namespace": info.namespace}}
        made.append((out, describe(out, f"{image_target.path}.index", custom)))
        log.info("content index of %s: %d chunks, %d pieces (%d bytes)", version, info.entries, info.pieces,
                 info.pieces_bytes)
    for base in bases:
        out = work / f"{image.name}.from-{base.version}.delta"
        delta = build_delta(base.path, image, out)
        custom = {"edgefleet": {"kind": "os-delta", **common, "base_version": base.version,
                                "base_sha256": delta.base_sha256}}
        made.append((out, describe(out, f"{image_target.path}.from-{base.version}.delta", custom)))
        log.info("delta %s -> %s: %d bytes", base.version, version, delta.size)
    return made


def sizes(targets: Iterable[TargetFile]) -> dict[str, dict[str, Any]]:
    """Per os-image target path: its index and pieces bytes and each delta's size."""
    found: dict[str, dict[str, Any]] = {}
    for target in targets:
        info = release_fields(target)
        image = info.get("image")
        if not isinstance(image, str):
            continue
        entry = found.setdefault(image, {"deltas": {}})
        if info.get("kind") == "os-index":
            entry["index_bytes"] = target.length
            entry["pieces_bytes"] = info.get("pieces_bytes")
        elif info.get("kind") == "os-delta":
            entry["deltas"][str(info.get("base_version"))] = target.length
    return found

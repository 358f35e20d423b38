"""Upload a release workspace to the control plane: roots first, then the artifacts the
server does not have yet, then the targets metadata (which the server verifies before
anything becomes visible to devices)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.client import AdminClient
from edgefleet.delta.index import Index, dictionary_path
from edgefleet.delta.pieces import pack
from edgefleet.errors import ConfigError
from edgefleet.releases.image import release_fields
from edgefleet.releases.repository import RepositoryDir
from edgefleet.releases.workspace import Workspace

PIECES_PER_REQUEST = 8192


@dataclass(frozen=True)
class Published:
    roots: int
    uploaded: int
    skipped: int
    snapshot_version: int
    pieces: int = 0


def _roots(repo: RepositoryDir) -> list[bytes]:
    latest = repo.root().signed.version
    return [(repo.metadata_dir / f"{v}.root.json").read_bytes() for v in range(1, latest + 1)]


def publish_workspace(workspace: Workspace, client: AdminClient) -> Published:
    """Raises ServerRefused (e.g. below threshold, rollback) or TransportError."""
    roots = 0
    for which, repo in (("image", workspace.image), ("director", workspace.director)):
        for data in _roots(repo):
            client.put_root(which, data)
            roots += 1
    uploaded = skipped = 0
    local: dict[str, Path | None] = {}
    for target in workspace.image.targets().signed.targets.values():
        sha256, path = target.hashes["sha256"], workspace.target_file(target)
        if local.get(sha256) is None:
            local[sha256] = path if path.exists() else None
    for sha256, source in local.items():
        if client.has_blob(sha256):
            skipped += 1
            continue
        if source is None:
            raise ConfigError(f"the workspace has no file for artifact {sha256[:16]}...; cannot publish")
        client.put_blob(sha256, source)
        uploaded += 1
    pieces = _publish_pieces(workspace, client)
    snapshot = client.put_targets((workspace.image.metadata_dir / "targets.json").read_bytes())
    return Published(roots, uploaded, skipped, snapshot, pieces)


def _publish_pieces(workspace: Workspace, client: AdminClient) -> int:
    """Upload the dictionaries and pieces of every content index that the server lacks,
    before the targets that name the indexes become visible. Returns how many pieces."""
    wanted: dict[str, set[bytes]] = {}
    for target in workspace.image.targets().signed.targets.values():
        if release_fields(target).get("kind") == "os-index":
            index = Index.load(workspace.target_file(target))
            wanted.setdefault(index.namespace, set()).update(index.id(i) for i in range(len(index)))
    uploaded = 0
    for namespace, ids in sorted(wanted.items()):
        ordered = sorted(ids)
        for start in range(0, len(ordered), PIECES_PER_REQUEST):
            batch = [i.hex() for i in ordered[start:start + PIECES_PER_REQUEST]]
            missing, has_dictionary = client.missing_pieces(namespace, batch)
            if not has_dictionary:
                client.put_dictionary(namespace, dictionary_path(workspace.pieces_dir, namespace).read_bytes())
            if missing:
                records = pack(workspace.pieces_dir, namespace, [bytes.fromhex(i) for i in missing])
                uploaded += client.put_pieces(namespace, records)
    return uploaded

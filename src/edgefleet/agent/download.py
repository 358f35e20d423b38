"""Streaming, resumable, bounded downloads of signed targets.

The signed length bounds what is written (endless-data attack); bytes already on disk from
an interrupted attempt are kept and the transfer resumes with an HTTP Range request; the
file is verified against the signed hashes before it is handed to anyone, and deleted if
it does not match.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile

from edgefleet.errors import InvalidRequest, PersistError, TransportError, UpdateRefused
from edgefleet.util.paths import check_target
from edgefleet.util.stop import StopSignal


def target_url(base: str, target: TargetFile) -> str:
    directory, _, name = target.path.rpartition("/")
    prefix = f"{directory}/" if directory else ""
    return f"{base.rstrip('/')}/targets/{prefix}{target.hashes['sha256']}.{name}"


def verify_target(path: Path, target: TargetFile) -> None:
    """Raises UpdateRefused (and removes ``path``) unless it has ``target``'s length and hashes."""
    with open(path, "rb") as handle:
        try:
            target.verify_length_and_hashes(handle)
        except tuf_errors.LengthOrHashMismatchError as exc:
            path.unlink(missing_ok=True)
            raise UpdateRefused(f"{target.path} does not match its signed hashes", code="hash_mismatch") from exc


def fetch_target(client: httpx.Client, mirrors: list[str], target: TargetFile, directory: Path,
                 stop: StopSignal | None = None) -> tuple[Path, int]:
    """Download ``target`` into ``directory``; returns (verified file, bytes fetched now).

    Raises:
        UpdateRefused: more bytes than signed, bytes that do not match the hashes, or a
            target name that is not a plain relative path with a sha256.
        TransportError: no mirror could complete the transfer, or ``stop`` was set (what
            arrived is kept, and the next attempt resumes from it).
    """
    stop = stop or threading.Event()
    try:  # signed, but a name that leaves ``directory`` is refused whoever signed it
        check_target(target.path, target.hashes.get("sha256", ""))
    except InvalidRequest as exc:
        raise UpdateRefused(exc.message, code=exc.code) from exc
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / target.hashes["sha256"]
    if final.exists():
        verify_target(final, target)
        return final, 0
    partial = directory / f"{target.hashes['sha256']}.partial"
    fetched = 0
    errors = []
    for mirror in mirrors:
        have = partial.stat().st_size if partial.exists() else 0
        if have > target.length:
            partial.unlink()
            have = 0
        if have < target.length:
            try:
                fetched += _transfer(client, target_url(mirror, target), partial, have, target, stop)
            except (httpx.HTTPError, TransportError) as exc:
                if stop.is_set():
                    raise TransportError(f"download of {target.path} interrupted; will resume") from exc
                errors.append(f"{mirror}: {exc}")
                continue
        verify_target(partial, target)
        os.replace(partial, final)
        return final, fetched
    raise TransportError(f"could not fetch {target.path}: {'; '.join(errors) or 'no mirrors'}")


def _transfer(client: httpx.Client, url: str, partial: Path, have: int, target: TargetFile,
              stop: StopSignal) -> int:
    headers = {"range": f"bytes={have}-"} if have else {}
    written = 0
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 200:
            have = 0  # the mirror ignored the range: start over
        elif response.status_code != 206:
            raise TransportError(f"{url}: HTTP {response.status_code}")
        try:
            with open(partial, "r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                try:
                    # Each network read is written as it arrives: with a fixed chunk size
                    # httpx would hold back up to a chunk and lose it when the link drops.
                    for chunk in response.iter_bytes():
                        if have + written + len(chunk) > target.length:
                            out.close()
                            partial.unlink(missing_ok=True)
                            raise UpdateRefused(f"{target.path}: mirror sent more than the signed "
                                                f"{target.length} bytes", code="target_too_long")
                        out.write(chunk)
                        written += len(chunk)
                        if stop.is_set():
                            raise TransportError(f"download of {target.path} interrupted; will resume")
                finally:
                    if not out.closed:
                        out.flush()
                        os.fsync(out.fileno())
        except OSError as exc:
            raise PersistError(f"cannot write {partial}: {exc}") from exc
    return written

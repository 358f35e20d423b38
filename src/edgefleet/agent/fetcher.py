"""How the agent's TUF clients fetch: httpx with the fleet CA (and the device certificate
for per-device director metadata), trying each mirror in turn. TUF verifies everything it
fetches, so a mirror needs no trust of its own (any hub, CDN or nginx will do). The
director sends a device's whole repository in one answer (``BundleFetcher``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
from pydantic import ValidationError
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface

from edgefleet.protocol.v1 import DIRECTOR_ROOT_FILE, DirectorBundle
from edgefleet.web.tls import tls_context

log = logging.getLogger("edgefleet.agent")

CHUNK = 64 * 1024
BUNDLE_MAX_LENGTH = 4 * 1024 * 1024  # a device's director files are a few KiB; roots at most 512 KB each


def https_client(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None,
                 timeout: float = 30.0, *, system_cas: bool = False) -> httpx.Client:
    """An httpx client with ``tls_context``."""
    return httpx.Client(verify=tls_context(ca_file, cert_file, key_file, system_cas=system_cas), timeout=timeout,
                        follow_redirects=False)


class MirrorFetcher(FetcherInterface):
    """``url`` must start with ``base``; on failure the same path is tried at each mirror."""

    def __init__(self, base: str, mirrors: list[str], client: httpx.Client) -> None:
        """``client`` (owned by the caller) carries the TLS settings and connection pool."""
        self.base = base.rstrip("/")
        self.mirrors = [m.rstrip("/") for m in mirrors] or [self.base]
        self._client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith((self.base + "/", self.base + "?")):
            raise tuf_errors.DownloadError(f"{url} is outside {self.base}")
        path = url[len(self.base):]
        last: Exception | None = None
        for mirror in self.mirrors:
            try:
                return self._stream(mirror + path)
            except tuf_errors.DownloadHTTPError as exc:
                if exc.status_code == 404 and mirror == self.mirrors[-1]:
                    raise
                last = exc
            except tuf_errors.DownloadError as exc:
                last = exc
        assert last is not None
        raise last

    def _stream(self, url: str) -> Iterator[bytes]:
        try:
            response = self._client.send(self._client.build_request("GET", url), stream=True)
        except httpx.HTTPError as exc:
            raise tuf_errors.DownloadError(f"cannot fetch {url}: {exc}") from exc
        if response.status_code != 200:
            response.close()
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        return self._chunks(response)

    @staticmethod
    def _chunks(response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(CHUNK)
        except httpx.HTTPError as exc:
            raise tuf_errors.DownloadError(f"transfer failed: {exc}") from exc
        finally:
            response.close()


class BundleFetcher(FetcherInterface):
    """A TUF client's fetches served from the director's bundle: one answer holding the
    roots after the device's own, the timestamp, and the snapshot and targets it names
    unless the device holds them (``GET`` of the repository's URL, ``protocol.v1.DirectorBundle``).
    What the bundle lacks is fetched file by file; a root after the bundle's
    ``latest_root`` does not exist (404), as the server would answer. Only a transport:
    the TUF client verifies every file as if fetched alone."""

    def __init__(self, inner: MirrorFetcher, files: dict[str, bytes], latest_root: int | None) -> None:
        self._inner, self._files, self._latest_root = inner, files, latest_root

    @classmethod
    def load(cls, inner: MirrorFetcher, root: int, snapshot: int) -> FetcherInterface:
        """The bundle for a device that trusts root version ``root`` and holds snapshot
        version ``snapshot`` (0: none); ``inner`` itself when the director sends none (an
        older server) or an unreadable one. Raises DownloadError when it is unreachable."""
        try:
            data = inner.download_bytes(f"{inner.base}?root={root}&snapshot={snapshot}", BUNDLE_MAX_LENGTH)
            bundle = DirectorBundle.model_validate_json(data)
        except tuf_errors.DownloadHTTPError as exc:
            if exc.status_code not in (404, 405, 422):
                raise
            log.info("the director sends no bundle (HTTP %d): fetching its files one by one", exc.status_code)
            return inner
        except (tuf_errors.DownloadLengthMismatchError, ValidationError) as exc:
            log.warning("unusable director bundle (%s): fetching its files one by one", exc.__class__.__name__)
            return inner
        return cls(inner, {name: text.encode() for name, text in bundle.files.items()}, bundle.latest_root)

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(self._inner.base + "/")
        held = self._files.get(name)
        if held is not None:
            return iter((held,))
        match = DIRECTOR_ROOT_FILE.match(name)
        if match and self._latest_root is not None and int(match.group(1)) > self._latest_root:
            raise tuf_errors.DownloadHTTPError(f"{url}: no such root", 404)
        return self._inner.fetch(url)

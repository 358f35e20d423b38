"""How the agent's TUF clients fetch: httpx with the fleet CA (and the device certificate
for per-device director metadata), trying each mirror in turn. TUF verifies everything it
fetches, so a mirror needs no trust of its own (any hub, CDN or nginx will do)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface

from edgefleet.web.tls import tls_context

CHUNK = 64 * 1024


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
        if not url.startswith(self.base + "/"):
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

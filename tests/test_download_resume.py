"""A download cut at a random point resumes with a Range request, does not fetch again what
it already has, and the result verifies."""

from __future__ import annotations

import http.server
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tuf.api.metadata import TargetFile

from edgefleet.agent.download import fetch_target, target_url
from edgefleet.errors import TransportError, UpdateRefused
from edgefleet.releases.image import describe


class FlakyRangeMirror:
    """Serves one file at its consistent-snapshot URL, honours ``Range: bytes=N-``, counts
    the bytes it sends, and drops the connection after ``cut_at`` bytes of the first reply."""

    def __init__(self, path: str, content: bytes, cut_at: int | None) -> None:
        self.content = content
        self.cut_at = cut_at
        self.sent = 0
        self.ranges: list[str | None] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != path:
                    self.send_error(404)
                    return
                requested = self.headers.get("range")
                mirror.ranges.append(requested)
                start = int(requested.removeprefix("bytes=").rstrip("-")) if requested else 0
                body = mirror.content[start:]
                self.send_response(206 if requested else 200)
                if requested:
                    self.send_header("content-range", f"bytes {start}-{len(mirror.content) - 1}/{len(mirror.content)}")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if mirror.cut_at is not None:
                    body, mirror.cut_at = body[: mirror.cut_at], None
                    self.wfile.write(body)
                    mirror.sent += len(body)
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the link drops mid-transfer
                    return
                self.wfile.write(body)
                mirror.sent += len(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    content = random.Random(4).randbytes(3 * 1024 * 1024 + 123)
    path = tmp_path / "image.erofs"
    path.write_bytes(content)
    return path, content


@pytest.fixture
def http_client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_download_cut_at_a_random_point_resumes_without_refetching(
    image: tuple[Path, bytes], tmp_path: Path, http_client: httpx.Client, seed: int
) -> None:
    path, content = image
    target = describe(path, "os/1/image.erofs")
    cut_at = random.Random(seed).randrange(1, len(content) - 1)
    mirror = FlakyRangeMirror(target_url("", target), content, cut_at)
    try:
        with pytest.raises(TransportError):
            fetch_target(http_client, [mirror.url], target, tmp_path / "downloads")
        partial = tmp_path / "downloads" / f"{target.hashes['sha256']}.partial"
        kept = partial.stat().st_size
        assert 0 < kept <= cut_at
        result, fetched = fetch_target(http_client, [mirror.url], target, tmp_path / "downloads")
    finally:
        mirror.close()
    assert result.read_bytes() == content
    assert mirror.ranges == [None, f"bytes={kept}-"]
    assert fetched == len(content) - kept
    assert mirror.sent == cut_at + (len(content) - kept)  # nothing that had arrived was sent twice


def refused_fetch(http_client: httpx.Client, target: TargetFile, served: bytes, downloads: Path
                  ) -> tuple[str, list[str | None]]:
    """Fetch ``target`` from a mirror serving ``served``, which must be refused: returns the
    refusal's code and the ranges the mirror was asked for."""
    mirror = FlakyRangeMirror(target_url("", target), served, None)
    try:
        with pytest.raises(UpdateRefused) as refused:
            fetch_target(http_client, [mirror.url], target, downloads)
    finally:
        mirror.close()
    return refused.value.code, mirror.ranges


def test_resumed_download_with_corrupt_kept_bytes_is_refused_and_discarded(
    image: tuple[Path, bytes], tmp_path: Path, http_client: httpx.Client
) -> None:
    path, content = image
    target = describe(path, "os/1/image.erofs")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{target.hashes['sha256']}.partial").write_bytes(b"X" * 1000)  # tampered on disk
    code, _ = refused_fetch(http_client, target, content, downloads)
    assert code == "hash_mismatch"
    assert list(downloads.iterdir()) == []


def test_mirror_sending_more_than_the_signed_length_is_refused(
    image: tuple[Path, bytes], tmp_path: Path, http_client: httpx.Client
) -> None:
    path, content = image
    target = describe(path, "os/1/image.erofs")
    code, _ = refused_fetch(http_client, target, content + b"\0" * 4096, tmp_path / "downloads")
    assert code == "target_too_long"
    assert list((tmp_path / "downloads").iterdir()) == []


def test_second_mirror_completes_what_the_first_started(
    image: tuple[Path, bytes], tmp_path: Path, http_client: httpx.Client
) -> None:
    path, content = image
    target = describe(path, "os/1/image.erofs")
    first = FlakyRangeMirror(target_url("", target), content, 1_000_000)
    second = FlakyRangeMirror(target_url("", target), content, None)
    try:
        result, _ = fetch_target(http_client, [first.url, second.url], target, tmp_path / "downloads")
    finally:
        first.close()
        second.close()
    assert result.read_bytes() == content
    assert second.ranges[0] is not None
    assert second.ranges[0].startswith("bytes=")
    assert first.sent + second.sent == len(content)


@pytest.mark.parametrize("name", ["os/../../escape.img", "/etc/escape.img", "os/.hidden"])
def test_a_signed_target_whose_name_leaves_the_download_directory_is_refused_before_any_request(
    image: tuple[Path, bytes], tmp_path: Path, http_client: httpx.Client, name: str
) -> None:
    path, content = image
    assert refused_fetch(http_client, describe(path, name), content, tmp_path / "downloads") == ("unsafe_path", [])
    assert not (tmp_path / "downloads").exists()

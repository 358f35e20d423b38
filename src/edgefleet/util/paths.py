"""Names that become file paths: what a name may be, and that its file stays in its root.

A TUF target path is signed, but a signature says who named a file, not that the name is
safe: a target named ``os/../../x`` or a "digest" with a slash in it would place a file
outside the repository. Every such name goes through here, on the server when targets are
published and on the device when they are fetched.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgefleet.errors import InvalidRequest

# A segment holds no slash, backslash or control character, and does not start with a dot:
# never ".", ".." or a hidden name.
_SEGMENT = re.compile(r"[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_SEGMENTS = 16


def check_target(path: str, sha256: str) -> None:
    """Raises InvalidRequest (code ``unsafe_path``) unless ``path`` is relative, made of
    plain segments, and ``sha256`` is a lower-case hex digest."""
    segments = path.split("/")
    if len(segments) > MAX_SEGMENTS or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise InvalidRequest(f"target path {path[:200]!r} is not a plain relative path", code="unsafe_path")
    if not _SHA256.fullmatch(sha256):
        raise InvalidRequest(f"target {path[:200]!r} has no lower-case sha256", code="unsafe_path")


def contained(root: Path, *parts: str) -> Path:
    """``root`` joined with ``parts``; raises InvalidRequest (``unsafe_path``) if the result,
    symbolic links resolved, is not inside ``root``."""
    candidate = root.joinpath(*parts)
    if not candidate.resolve().is_relative_to(root.resolve()):
        raise InvalidRequest(f"{'/'.join(parts)[:200]!r} leaves {root}", code="unsafe_path")
    return candidate

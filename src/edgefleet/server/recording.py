"""Session recordings in asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/):
a JSON header line, then one ``[seconds, code, data]`` line per event: ``o`` for what
the device printed, ``r`` for a resize (``COLSxROWS``). What the operator types is not
recorded as such (passwords typed at a prompt are not echoed, so they stay out of the
file too); its effect is, in the output. Any asciinema player replays the file."""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from edgefleet.errors import EdgefleetError, InvalidRequest, NotFound

_SESSION = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def recording_path(directory: Path, session_id: str) -> Path:
    """The recording of ``session_id`` inside ``directory``; a name that is not a session
    id (a path trick) is refused before it becomes a path."""
    if not _SESSION.match(session_id):
        raise InvalidRequest(f"not a session id: {session_id[:80]!r}", code="invalid_session_id")
    return directory / f"{session_id}.cast"


class RecordingFailed(EdgefleetError):
    """The recording cannot be written (a full disk): the session it records ends."""

    code = "recording_failed"


class Recording:
    """One session's asciicast file, written as the session runs (each event flushed, so a
    server that dies mid-session leaves a recording up to its last event)."""

    def __init__(self, path: Path, *, cols: int, rows: int, started: datetime, title: str,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._start = monotonic()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = path.open("x", encoding="utf-8")  # never over an earlier session's
        except OSError as exc:
            raise RecordingFailed(f"the session's recording cannot be made: {exc.strerror}") from exc
        self._line({"version": 2, "width": cols, "height": rows, "timestamp": int(started.timestamp()),
                    "title": title[:200], "env": {"TERM": "xterm-256color"}})

    def _line(self, value: Any) -> None:
        try:
            self._file.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
            self._file.flush()
        except OSError as exc:
            raise RecordingFailed(f"the session's recording cannot be written: {exc.strerror}") from exc

    def _at(self) -> float:
        return round(self._monotonic() - self._start, 6)

    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._line([self._at(), "o", text])

    def resize(self, cols: int, rows: int) -> None:
        self._line([self._at(), "r", f"{cols}x{rows}"])

    def close(self) -> None:
        if not self._file.closed:
            tail = self._decoder.decode(b"", final=True)
            try:
                if tail:
                    self._line([self._at(), "o", tail])
            finally:
                with contextlib.suppress(OSError):  # what could be written was flushed
                    self._file.close()


def read_recording(directory: Path, session_id: str) -> bytes:
    """A stored recording's bytes. Raises NotFound, or InvalidRequest for a bad id."""
    path = recording_path(directory, session_id)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"no recording of session {session_id}") from exc

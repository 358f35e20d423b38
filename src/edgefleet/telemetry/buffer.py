"""The device's durable telemetry buffer: logs, metrics and events wait here, in order, for
the uplink.

SQLite in WAL mode with ``synchronous=FULL``: an append that returned survives the agent
being killed and the power being cut. Records are appended in batches (one transaction
each) and get consecutive sequence numbers, so order is kept per device. The buffer is
bounded in bytes (each record's body plus a fixed overhead): when an append would cross
the bound, the oldest records are dropped in the same transaction and counted; the count
is cumulative and travels with every batch, so the receiver learns how many were lost
and never double-counts. Records leave only when the receiver acknowledged storing them
(``ack``). A failed append (disk full, I/O error) changes nothing and raises
``BufferError``; a file that is not a database any more is moved aside and a new buffer
started (``open_buffer``), loudly.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgefleet.errors import PersistError
from edgefleet.telemetry.sqlitefile import SqliteFile

log = logging.getLogger("edgefleet.telemetry")
OVERHEAD = 32  # bytes counted per record besides its body (seq, kind, time, index)
Kind = Literal["log", "metric", "event"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, at REAL NOT NULL,
                                    body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 1), ('bytes', 0), ('dropped', 0);
"""


class BufferError(PersistError):
    """The buffer could not store or read records (disk full, I/O error, corrupt file)."""

    code = "telemetry_buffer"


@dataclass(frozen=True)
class Record:
    kind: Kind
    at: float  # unix seconds
    body: bytes  # the record, encoded by its producer (JSON)


@dataclass(frozen=True)
class Stored:
    seq: int
    kind: Kind
    at: float
    body: bytes


@dataclass(frozen=True)
class Batch:
    records: list[Stored]
    dropped: int  # records dropped by the byte bound so far (cumulative)

    @property
    def first_seq(self) -> int:
        return self.records[0].seq

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq


@dataclass(frozen=True)
class Figures:
    queued: int
    bytes: int
    dropped: int
    oldest_age_seconds: float | None


def _size(body: bytes) -> int:
    return len(body) + OVERHEAD


class DurableBuffer:
    def __init__(self, path: Path, max_bytes: int) -> None:
        """Raises BufferError when the file cannot be opened as a buffer."""
        if max_bytes < 4 * OVERHEAD:
            raise ValueError("max_bytes is too small to hold anything")
        self.path = path
        self.max_bytes = max_bytes
        self._file = SqliteFile(path, _SCHEMA, BufferError)
        self._lock = self._file.lock
        self._db = self._file.db
        self._transaction = self._file.transaction

    def close(self) -> None:
        self._file.close()

    def _meta(self, db: sqlite3.Connection) -> dict[str, int]:
        return {key: int(value) for key, value in db.execute("SELECT key, value FROM meta")}

    def append(self, records: Sequence[Record], marks: Mapping[str, int] | None = None) -> int:
        """Store ``records`` in one transaction; returns the last sequence number given.
        Drops the oldest records if the bound requires it. ``marks`` are set in the same
        transaction (a producer's own cursor: what it has appended so far). Raises
        BufferError (nothing was stored)."""
        if not records:
            if marks:
                with self._transaction("mark") as db:
                    self._set_marks(db, marks)
            return self.last_seq()
        incoming = sum(_size(r.body) for r in records)
        if incoming > self.max_bytes:
            raise BufferError(f"a batch of {incoming} bytes does not fit a buffer of {self.max_bytes}",
                              code="telemetry_batch_too_large")
        with self._transaction("append") as db:
            meta = self._meta(db)
            first = meta["next_seq"]
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?)",
                           [(first + n, r.kind, r.at, r.body) for n, r in enumerate(records)])
            total, dropped = meta["bytes"] + incoming, 0
            while total > self.max_bytes:
                oldest = db.execute("SELECT seq, length(body) FROM records ORDER BY seq LIMIT 512").fetchall()
                if not oldest:
                    break
                freed, cutoff = 0, oldest[0][0] - 1
                for seq, length in oldest:
                    if total - freed <= self.max_bytes:
                        break
                    freed, cutoff = freed + length + OVERHEAD, seq
                removed = db.execute("DELETE FROM records WHERE seq <= ?", (cutoff,)).rowcount
                total, dropped = total - freed, dropped + removed
            last = first + len(records) - 1
            db.executemany("UPDATE meta SET value = ? WHERE key = ?",
                           [(last + 1, "next_seq"), (total, "bytes"), (meta["dropped"] + dropped, "dropped")])
            self._set_marks(db, marks or {})
        if dropped:
            log.warning("telemetry buffer full (%d bytes): dropped the %d oldest records", self.max_bytes, dropped)
        return last

    @staticmethod
    def _set_marks(db: sqlite3.Connection, marks: Mapping[str, int]) -> None:
        db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       [(f"mark:{key}", value) for key, value in marks.items()])

    def mark(self, key: str) -> int:
        """A mark set with ``append`` (0 if never set)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"mark:{key}",)).fetchone()
        return 0 if row is None else int(row[0])

    def last_seq(self) -> int:
        """The sequence number of the last record ever appended (0 before the first)."""
        with self._lock:
            return self._meta(self._db)["next_seq"] - 1

    def batch(self, max_records: int = 1000, max_bytes: int = 1 << 20) -> Batch | None:
        """The oldest records, in order (at least one, then up to the limits); None when
        empty. They stay until ``ack``."""
        with self._lock:
            rows = self._db.execute("SELECT seq, kind, at, body FROM records ORDER BY seq LIMIT ?",
                                    (max_records,)).fetchall()
            dropped = self._meta(self._db)["dropped"]
        records: list[Stored] = []
        size = 0
        for seq, kind, at, body in rows:
            size += _size(body)
            if records and size > max_bytes:
                break
            records.append(Stored(seq, kind, at, bytes(body)))
        return Batch(records, dropped) if records else None

    def ack(self, last_seq: int) -> int:
        """The receiver stored everything up to ``last_seq``: remove it. Returns how many
        records went. Raises BufferError."""
        with self._transaction("ack") as db:
            freed = db.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM records WHERE seq <= ?",
                               (last_seq,)).fetchone()
            db.execute("DELETE FROM records WHERE seq <= ?", (last_seq,))
            db.execute("UPDATE meta SET value = max(0, value - ?) WHERE key = 'bytes'",
                       (int(freed[1]) + OVERHEAD * int(freed[0]),))
        return int(freed[0])

    def figures(self, now: float | None = None) -> Figures:
        """Cheap enough for every step of the shipper: records only ever leave from the
        oldest end (acknowledged or dropped), so what is queued runs from the first
        record's seq to the last one given, and the first record is the oldest."""
        with self._lock:
            meta = self._meta(self._db)
            first = self._db.execute("SELECT seq, at FROM records ORDER BY seq LIMIT 1").fetchone()
        if first is None:
            return Figures(0, meta["bytes"], meta["dropped"], None)
        age = max(0.0, (now if now is not None else time.time()) - float(first[1]))
        return Figures(meta["next_seq"] - int(first[0]), meta["bytes"], meta["dropped"], age)


def open_buffer(path: Path, max_bytes: int) -> DurableBuffer:
    """The buffer at ``path``; a file that is not a readable buffer any more (truncated,
    overwritten) is moved aside as ``<name>.corrupt-<time>`` and a new buffer started."""
    try:
        buffer = DurableBuffer(path, max_bytes)
        with buffer._lock:
            check = buffer._db.execute("PRAGMA quick_check").fetchone()
        if check is not None and check[0] == "ok":
            return buffer
        buffer.close()
        problem = str(check[0] if check else "no answer")
    except BufferError as exc:
        problem = exc.message
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{aside}{suffix}"))
    log.error("telemetry buffer %s is unreadable (%s): moved to %s, starting a new one; its records are lost",
              path, problem, aside)
    return DurableBuffer(path, max_bytes)

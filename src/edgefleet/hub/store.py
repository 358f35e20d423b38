"""What a regional hub keeps: every record its devices shipped, stored once per (device,
seq) like the control plane does, for a bounded time (local diagnosis), and numbered in
arrival order so that summaries and exporters each follow the stream with a cursor.

Raw records leave only when they are older than the retention and every follower has
passed them, so a hub that is cut off from upstream (or from Loki, or an OpenTelemetry
collector) keeps what it still owes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.errors import PersistError
from edgefleet.protocol.telemetry import TelemetryBatch
from edgefleet.telemetry.sqlitefile import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (device_id TEXT PRIMARY KEY, site TEXT, stored_through INTEGER NOT NULL,
                                    dropped INTEGER NOT NULL, batches INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, site TEXT,
                                seq INTEGER NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL, body TEXT NOT NULL,
                                received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS raw_by_device ON raw (device_id, seq);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, through INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS latest_summaries (site TEXT NOT NULL, metric TEXT NOT NULL, body TEXT NOT NULL,
                                             PRIMARY KEY (site, metric));
"""


class HubStoreError(PersistError):
    """The hub could not store or read records (disk full, I/O error)."""

    code = "hub_store"


@dataclass(frozen=True)
class RawRecord:
    id: int  # arrival order at this hub
    device_id: str
    site: str | None
    seq: int
    kind: str
    at: float  # unix seconds
    body: dict[str, Any]


@dataclass(frozen=True)
class Stream:
    device_id: str
    site: str | None
    stored_through: int
    dropped: int
    updated_at: float  # unix time of its last batch


class HubStore:
    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(path, _SCHEMA, HubStoreError)

    def close(self) -> None:
        self._file.close()

    def ingest(self, device_id: str, site: str | None, batch: TelemetryBatch, now: float) -> int:
        """Store the batch's records above what is stored already (a batch sent again adds
        nothing), in one transaction, under ``site`` (the one its certificate names, never the
        batch's word); returns how far this device's records are stored."""
        with self._file.transaction("ingest") as db:
            row = db.execute("SELECT stored_through FROM streams WHERE device_id = ?", (device_id,)).fetchone()
            through = 0 if row is None else int(row[0])
            fresh = [r for r in batch.rows() if r["seq"] > through]
            db.executemany("INSERT INTO raw (device_id, site, seq, kind, at, body, received_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(device_id, site, r["seq"], r["kind"], r["at"].timestamp(), r["body"], now)
                            for r in fresh])
            new_through = max(through, batch.last_seq)
            db.execute("INSERT INTO streams VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(device_id) DO UPDATE SET "
                       "site = coalesce(excluded.site, site), stored_through = excluded.stored_through, "
                       "dropped = max(dropped, excluded.dropped), batches = batches + 1, "
                       "updated_at = excluded.updated_at",
                       (device_id, site, new_through, batch.dropped, now))
        return new_through

    @staticmethod
    def _raw(rows: Sequence[sqlite3.Row | tuple[Any, ...]]) -> list[RawRecord]:
        return [RawRecord(int(r[0]), r[1], r[2], int(r[3]), r[4], float(r[5]), json.loads(r[6])) for r in rows]

    def after(self, last_id: int, limit: int, kinds: Sequence[str] = ("log", "metric", "event")) -> list[RawRecord]:
        """Records that arrived after ``last_id``, in arrival order (at most ``limit``)."""
        marks = ",".join("?" * len(kinds))
        with self._file.reading("read") as db:
            rows = db.execute(f"SELECT id, device_id, site, seq, kind, at, body FROM raw WHERE id > ? "  # noqa: S608
                              f"AND kind IN ({marks}) ORDER BY id LIMIT ?", (last_id, *kinds, limit)).fetchall()
        return self._raw(rows)

    def last_id(self) -> int:
        with self._file.reading("read") as db:
            row = db.execute("SELECT coalesce(max(id), 0) FROM raw").fetchone()
        return int(row[0])

    def newest(self, kind: str, limit: int) -> list[RawRecord]:
        """The newest records of a kind, newest first (what a technician looks at)."""
        with self._file.reading("read") as db:
            rows = db.execute("SELECT id, device_id, site, seq, kind, at, body FROM raw WHERE kind = ? "
                              "ORDER BY id DESC LIMIT ?", (kind, limit)).fetchall()
        return self._raw(rows)

    def device_records(self, device_id: str, after_seq: int = 0, limit: int = 1000) -> list[RawRecord]:
        with self._file.reading("read") as db:
            rows = db.execute("SELECT id, device_id, site, seq, kind, at, body FROM raw WHERE device_id = ? "
                              "AND seq > ? ORDER BY seq LIMIT ?", (device_id, after_seq, limit)).fetchall()
        return self._raw(rows)

    def streams(self) -> list[Stream]:
        with self._file.reading("read") as db:
            rows = db.execute("SELECT device_id, site, stored_through, dropped, updated_at FROM streams "
                              "ORDER BY site, device_id")
            return [Stream(r[0], r[1], int(r[2]), int(r[3]), float(r[4])) for r in rows]

    def cursor(self, name: str) -> int:
        with self._file.reading("read") as db:
            row = db.execute("SELECT through FROM cursors WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def advance(self, name: str, through: int) -> None:
        with self._file.transaction("advance") as db:
            db.execute("INSERT INTO cursors VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET through = "
                       "max(through, excluded.through)", (name, through))

    def prune(self, older_than: float, followed_through: int) -> int:
        """Remove raw records received before ``older_than`` that every follower has passed
        (ids up to ``followed_through``); returns how many."""
        with self._file.transaction("prune") as db:
            return int(db.execute("DELETE FROM raw WHERE received_at < ? AND id <= ?",
                                  (older_than, followed_through)).rowcount)

    def count(self) -> int:
        with self._file.reading("read") as db:
            return int(db.execute("SELECT count(*) FROM raw").fetchone()[0])

    def save_summaries(self, summaries: Sequence[dict[str, Any]]) -> None:
        """The newest summary per site and metric (what /metrics shows; kept over restarts)."""
        with self._file.transaction("save summaries") as db:
            db.executemany("INSERT INTO latest_summaries VALUES (?, ?, ?) ON CONFLICT(site, metric) DO UPDATE "
                           "SET body = excluded.body",
                           [(s["site"], s["metric"], json.dumps(s, separators=(",", ":"))) for s in summaries])

    def latest_summaries(self) -> list[dict[str, Any]]:
        with self._file.reading("read") as db:
            rows = db.execute("SELECT body FROM latest_summaries ORDER BY site, metric").fetchall()
        return [json.loads(r[0]) for r in rows]

"""One SQLite file in WAL mode with ``synchronous=FULL`` (a commit that returned survives
kill -9 and power loss), one connection shared by threads under a lock, and transactions
that either commit whole or change nothing and raise the owner's error type."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from edgefleet.errors import PersistError

log = logging.getLogger("edgefleet.telemetry")


class SqliteFile:
    def __init__(self, path: Path, schema: str, error: type[PersistError]) -> None:
        """Raises ``error`` when the file cannot be opened or given its schema."""
        self.path = path
        self.error = error
        self.lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(schema)
        except (sqlite3.Error, OSError) as exc:
            raise error(f"{path}: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextlib.contextmanager
    def transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                log.error("%s: %s failed, nothing changed: %s", self.path, what, exc)
                raise self.error(f"{self.path}: {what} failed: {exc}") from exc

    @contextlib.contextmanager
    def reading(self, what: str) -> Iterator[sqlite3.Connection]:
        with self.lock:
            try:
                yield self.db
            except sqlite3.Error as exc:
                raise self.error(f"{self.path}: {what} failed: {exc}") from exc

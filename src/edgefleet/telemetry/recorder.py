"""What the agent records: logs (its own warnings and errors, and every line its workloads
print), events and metrics, as JSON records staged in memory and written to the durable
buffer in batches (``flush_seconds`` after the first record of a batch, or at
``flush_records``), so that a chatty workload costs one transaction per batch and not one
per line, and an idle agent does not wake for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from edgefleet.errors import EdgefleetError
from edgefleet.telemetry.buffer import DurableBuffer, Kind, Record
from edgefleet.util.aio import any_set, pause

log = logging.getLogger("edgefleet.telemetry")


class Recorder:
    def __init__(self, buffer: DurableBuffer, flush_records: int = 500, recent_logs: int = 200) -> None:
        self.buffer = buffer
        self.flush_records = flush_records
        self._staged: list[Record] = []
        self._lock = threading.Lock()
        # The newest log lines, for the technician's page: shown with the uplink down and
        # after they have been shipped (and left the buffer).
        self.recent: deque[tuple[float, str, str, str]] = deque(maxlen=recent_logs)
        self._signal: Callable[[], None] | None = None  # wakes ``run``: a batch began, or one was written
        self._written = 0  # batches written into the buffer so far

    def _wake_run(self) -> None:
        signal = self._signal
        if signal is not None:
            with contextlib.suppress(RuntimeError):  # the loop that ran the flushes has closed
                signal()

    def _add(self, kind: Kind, body: Mapping[str, Any]) -> None:
        record = Record(kind, time.time(), json.dumps(body, separators=(",", ":"), default=str).encode())
        with self._lock:
            self._staged.append(record)
            first, full = len(self._staged) == 1, len(self._staged) >= self.flush_records
        if full:
            self.flush()
        elif first:
            self._wake_run()

    def log(self, level: str, source: str, message: str) -> None:
        self.recent.append((time.time(), level, source, message[:1000]))
        self._add("log", {"level": level, "source": source, "message": message[:4000]})

    def event(self, name: str, **fields: Any) -> None:
        self._add("event", {"event": name, **fields})

    def metric(self, name: str, value: float, **labels: str) -> None:
        self._add("metric", {"name": name, "value": value, "labels": labels})

    def flush(self) -> int:
        """Write what is staged (one transaction); returns how many records. A buffer that
        fails keeps them staged for the next flush."""
        with self._lock:
            staged, self._staged = self._staged, []
        if not staged:
            return 0
        try:
            self.buffer.append(staged)
        except EdgefleetError as exc:
            with self._lock:
                self._staged = staged + self._staged
                del self._staged[:-100_000]  # bounded in memory too, while the disk is full
            log.debug("telemetry staged, not written yet: %s", exc)
            return 0
        with self._lock:
            self._written += 1
        self._wake_run()  # ``run`` tells the shipper, whichever thread wrote
        return len(staged)

    async def run(self, stop: asyncio.Event, flush_seconds: float = 0.5,
                  on_flushed: Callable[[], None] | None = None) -> None:
        """Write what is staged ``flush_seconds`` after a batch's first record (records may
        come from any thread); sleep while nothing is. ``on_flushed`` hears of each write:
        this loop's at once, a full batch's (written where it filled up) within ``flush_seconds``."""
        loop = asyncio.get_running_loop()
        pending = asyncio.Event()

        def signal() -> None:
            loop.call_soon_threadsafe(pending.set)

        self._signal, told = signal, self._written
        try:
            while not stop.is_set():
                if not self._staged and self._written == told:
                    await any_set(stop, pending)
                pending.clear()
                if self._staged:
                    if await pause(stop, flush_seconds):
                        return  # the agent flushes once more as it stops
                    await asyncio.to_thread(self.flush)
                if self._written != told:
                    told = self._written
                    if on_flushed is not None:
                        on_flushed()
        finally:
            self._signal = None


class RecordingHandler(logging.Handler):
    """The agent process's own warnings and errors into the recorder (attached by the
    agent command, where one agent owns the process)."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(logging.WARNING)
        self.recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "edgefleet.telemetry":
            return  # never about itself: a failing buffer would feed itself
        try:
            self.recorder.log(record.levelname.lower(), record.name, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

"""A telemetry buffer's health: records queued, bytes, records dropped, the oldest record's
age and when a batch was last acknowledged. As Prometheus metrics (the agent's textfile,
the hub's /metrics): ``telemetry/health_metrics.py``, which an agent loads only when it
writes them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from edgefleet.telemetry.buffer import Figures


@dataclass(frozen=True)
class BufferHealth:
    figures: Figures
    last_ship_at: float | None  # unix time of the last acknowledged batch

    def samples(self, now: float | None = None) -> dict[str, float]:
        """Name (without prefix) -> value, as the agent also records them into telemetry."""
        now = time.time() if now is None else now
        values = {"queued_records": float(self.figures.queued), "buffer_bytes": float(self.figures.bytes),
                  "dropped_records_total": float(self.figures.dropped),
                  "oldest_age_seconds": self.figures.oldest_age_seconds or 0.0}
        if self.last_ship_at is not None:
            values["last_ship_age_seconds"] = round(max(0.0, now - self.last_ship_at), 3)
        return values


HELP = {"queued_records": "Records waiting in the durable buffer",
        "buffer_bytes": "Bytes the durable buffer holds (bodies plus per-record overhead)",
        "dropped_records_total": "Records dropped because the buffer reached its bound",
        "oldest_age_seconds": "Age of the oldest record waiting (0 when none)",
        "last_ship_age_seconds": "Seconds since a batch was last acknowledged by the receiver"}

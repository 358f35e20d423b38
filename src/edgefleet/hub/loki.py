"""Log and event records as a Loki push (``POST /loki/api/v1/push``, JSON): one stream per
device, site, source and level, each entry ``[unix nanoseconds, line]``. Loki keeps
one copy of an entry sent twice with the same time and line in the same stream, so a
hub's at-least-once push arrives once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edgefleet.hub.otlp import unix_nanos
from edgefleet.hub.store import RawRecord


def _line(record: RawRecord) -> tuple[dict[str, str], str]:
    labels = {"job": "edgefleet", "device": record.device_id, "site": record.site or "unknown", "kind": record.kind}
    if record.kind == "event":
        labels["level"] = "info"
        return labels, json.dumps(record.body, separators=(",", ":"), default=str)
    labels["level"] = str(record.body.get("level", "info"))
    labels["source"] = str(record.body.get("source", ""))
    return labels, str(record.body.get("message", ""))


def push_body(records: Sequence[RawRecord]) -> dict[str, Any]:
    streams: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
    for record in records:
        if record.kind not in ("log", "event"):
            continue
        labels, line = _line(record)
        streams.setdefault(tuple(sorted(labels.items())), []).append([str(unix_nanos(record.at)), line])
    return {"streams": [{"stream": dict(key), "values": values} for key, values in streams.items()]}

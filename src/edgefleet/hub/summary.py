"""Per-site summaries of metric records: for each site and metric name, over one interval,
the count, min, max, sum and the 0.5, 0.9 and 0.99 quantiles (nearest rank on the exact
values, so nothing is approximated). A hub summarises records in arrival order, so every
record joins exactly one summary, also when it arrives hours late after an outage; the
summary names the span of record times it covers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from edgefleet.hub.store import RawRecord

QUANTILES = (0.5, 0.9, 0.99)
UNKNOWN_SITE = "unknown"


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarise(records: Iterable[RawRecord], interval_end: float) -> list[dict[str, Any]]:
    """One summary per (site, metric) among the metric records with a numeric value."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for record in records:
        value = record.body.get("value")
        if record.kind != "metric" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            continue
        key = (record.site or UNKNOWN_SITE, str(record.body.get("name", "unnamed")))
        groups.setdefault(key, []).append((float(value), record.at))
    summaries = []
    for (site, metric), points in sorted(groups.items()):
        values = sorted(v for v, _ in points)
        times = [t for _, t in points]
        summaries.append({
            "site": site, "metric": metric, "count": len(values), "min": values[0], "max": values[-1],
            "sum": math.fsum(values), "quantiles": {str(q): quantile(values, q) for q in QUANTILES},
            "first_at": min(times), "last_at": max(times), "interval_end": interval_end})
    return summaries

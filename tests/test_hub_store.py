"""The hub's store and its followers, on real SQLite files: a batch sent twice is stored
once; each metric record joins exactly one summary, with exact quantiles; raw records
leave only past their retention and once every follower (summaries, exporters) passed
them; a hub restarted between steps neither repeats nor skips a summary."""

from __future__ import annotations

import json
from pathlib import Path

from edgefleet.hub.loop import SUMMARISED, Hub, HubSettings
from edgefleet.hub.store import HubStore
from edgefleet.hub.summary import quantile
from edgefleet.protocol.telemetry import TelemetryBatch


def batch(first: int, values: list[float], site: str = "store-a", at_ms: int = 1_795_000_000_000) -> TelemetryBatch:
    return TelemetryBatch.model_validate({
        "batch_id": f"dev-1:{first}-{first + len(values) - 1}", "first_seq": first, "at_ms": at_ms, "site": site,
        "records": [{"kind": "metric", "dt_ms": 1000, "body": {"name": "edge_temp_celsius", "value": v}}
                    for v in values]})


def hub(tmp_path: Path, **overrides: object) -> Hub:
    settings = HubSettings.model_validate({
        "name": "hub-1", "site": "region-1", "server_url": "https://127.0.0.1:1", "ca_file": tmp_path / "ca.pem",
        "tls_cert": tmp_path / "hub.pem", "tls_key": tmp_path / "hub.key", "data_dir": tmp_path / "hub",
        **overrides})
    return Hub(settings)


def test_a_batch_sent_twice_is_stored_once_and_a_stale_one_adds_nothing(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.db")
    assert store.ingest("dev-1", "store-a", batch(1, [1, 2, 3]), now=100.0) == 3
    assert store.ingest("dev-1", "store-a", batch(1, [1, 2, 3]), now=101.0) == 3
    assert store.ingest("dev-1", "store-a", batch(2, [2, 3, 4]), now=102.0) == 4  # overlaps: only seq 4 is new
    assert [r.seq for r in store.device_records("dev-1")] == [1, 2, 3, 4]
    assert [r.body["value"] for r in store.device_records("dev-1")] == [1, 2, 3, 4]
    store.close()


def test_each_metric_record_joins_one_summary_across_restarts_and_raw_records_wait_for_every_follower(
        tmp_path: Path) -> None:
    first = hub(tmp_path, raw_retention_seconds=60, loki_url="http://127.0.0.1:1")
    first.store.ingest("dev-1", "store-a", batch(1, [float(v) for v in range(1, 101)]), now=1000.0)
    first.store.ingest("dev-2", "store-b", batch(1, [7.0, 9.0], site="store-b"), now=1000.0)
    assert first.prune_once(now=5000.0) == 0  # nothing summarised or exported yet: all kept
    assert first.summarise_once(now=1001.0) == 102
    assert first.summarise_once(now=1002.0) == 0  # nothing new: no second summary
    assert first.prune_once(now=5000.0) == 0  # Loki has not taken them yet
    first.store.advance("loki", first.store.last_id())
    assert first.prune_once(now=1030.0) == 0  # not past retention yet
    assert first.prune_once(now=5000.0) == 102
    summaries = {s["site"]: s for s in first.store.latest_summaries()}
    assert summaries["store-a"]["count"] == 100
    assert (summaries["store-a"]["min"], summaries["store-a"]["max"], summaries["store-a"]["sum"]) == (1, 100, 5050)
    assert summaries["store-a"]["quantiles"] == {"0.5": 50.0, "0.9": 90.0, "0.99": 99.0}
    assert summaries["store-b"]["count"] == 2
    first.store.ingest("dev-1", "store-a", batch(101, [500.0]), now=6000.0)
    mark = first.upstream.mark(SUMMARISED)
    first.store.close()
    first.upstream.close()
    second = hub(tmp_path, raw_retention_seconds=60)  # restarted: the cursor is where it was
    assert second.upstream.mark(SUMMARISED) == mark
    assert second.summarise_once(now=6001.0) == 1
    queued = second.upstream.batch(100)
    assert queued is not None
    upstream = [json.loads(r.body) for r in queued.records]
    assert [(u["site"], u["count"]) for u in upstream] == [("store-a", 100), ("store-b", 2), ("store-a", 1)]
    second.store.close()
    second.upstream.close()


def test_quantiles_are_nearest_rank_on_the_exact_values() -> None:
    assert quantile([1.0], 0.99) == 1.0
    assert quantile([1.0, 2.0], 0.5) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.9) == 4.0

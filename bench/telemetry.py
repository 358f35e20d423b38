"""Records per second into the device's durable telemetry buffer, next to the floor of a
durable append on the same disk: the same bytes appended to a plain file with one fsync
per batch. Then bytes on the wire per metric point: our batches (JSON, gzip) next to the
same points as OTLP/HTTP protobuf + gzip, at the same batch size. All in the same
process, one core.

    python bench/telemetry.py [--records 200000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "src"))
from edgefleet.hub.otlp import Item, Source, metrics_request
from edgefleet.telemetry.buffer import Batch, DurableBuffer, Record, Stored
from edgefleet.telemetry.shipper import encode

NAMES = ("edge_cpu_seconds_total", "edge_memory_used_bytes", "edge_temperature_celsius", "edge_disk_used_bytes")


def points(count: int) -> list[bytes]:
    """Metric points as the agent's recorder encodes them: name, value, labels; four series
    of a device with realistic values (a counter, byte gauges, a temperature)."""
    values = (lambda n: round(n * 0.37, 2), lambda n: 812_000_000 + (n * 7919) % 4_000_000,
              lambda n: round(41 + (n * 13 % 70) / 10, 1), lambda n: 5_100_000_000 + n * 4096)
    return [json.dumps({"name": NAMES[n % 4], "value": values[n % 4](n // 4), "labels": {"core": str(n % 2)}},
                       separators=(",", ":")).encode() for n in range(count)]


def wire_bytes(bodies: list[bytes], batch: int, start: float) -> tuple[float, float]:
    """Bytes per point on the wire, ours and OTLP+gzip, points 1 s apart per series."""
    ours = otlp_total = 0
    for first in range(0, len(bodies), batch):
        stored = [Stored(first + n + 1, "metric", start + (first + n) // 4, body)
                  for n, body in enumerate(bodies[first:first + batch])]
        ours += len(encode("dev-0001", Batch(stored, 0), "store-0042"))
        request = metrics_request([(Source("dev-0001", "store-0042"),
                                    [Item("metric", r.at, json.loads(r.body)) for r in stored])])
        otlp_total += len(gzip.compress(request.SerializeToString(), compresslevel=6))
    return ours / len(bodies), otlp_total / len(bodies)


def into_buffer(directory: Path, bodies: list[bytes], batch: int) -> float:
    buffer = DurableBuffer(directory / "buffer.db", 1 << 30)
    now = time.time()
    started = time.perf_counter()
    for start in range(0, len(bodies), batch):
        buffer.append([Record("metric", now, body) for body in bodies[start:start + batch]])
    seconds = time.perf_counter() - started
    assert buffer.figures().queued == len(bodies)
    buffer.close()
    return seconds


def into_file(directory: Path, bodies: list[bytes], batch: int) -> float:
    started = time.perf_counter()
    with (directory / "plain.log").open("ab") as file:
        for start in range(0, len(bodies), batch):
            file.write(b"\n".join(bodies[start:start + batch]) + b"\n")
            file.flush()
            os.fsync(file.fileno())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    bodies = points(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        buffer_s = into_buffer(Path(tmp), bodies, args.batch)
        file_s = into_file(Path(tmp), bodies, args.batch)
    size = sum(map(len, bodies)) / len(bodies)
    ours, otlp_gzip = wire_bytes(bodies[:50_000], args.batch, 1_800_000_000.0)
    figures = {"records": args.records, "batch_records": args.batch, "record_bytes": round(size, 1),
               "buffer_records_per_s": round(args.records / buffer_s),
               "plain_file_fsync_records_per_s": round(args.records / file_s),
               "wire_bytes_per_point": round(ours, 2), "otlp_gzip_bytes_per_point": round(otlp_gzip, 2)}
    print(f"{args.records} metric points of {size:.0f} bytes, batches of {args.batch}, one fsync per batch:")
    print(f"  durable buffer (SQLite WAL, synchronous=FULL): {figures['buffer_records_per_s']:,} records/s")
    print(f"  plain file append + fsync (the floor):          {figures['plain_file_fsync_records_per_s']:,} records/s")
    print(f"bytes on the wire per metric point, batches of {args.batch}, gzip level 6:")
    print(f"  edgefleet batch (JSON):       {figures['wire_bytes_per_point']:.2f}")
    print(f"  OTLP/HTTP protobuf:           {figures['otlp_gzip_bytes_per_point']:.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

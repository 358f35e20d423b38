"""Records per second into the device's durable telemetry buffer, next to the floor of a
durable append on the same disk: the same bytes appended to a plain file with one fsync
per batch. Both in the same process, one core.

    python bench/telemetry.py [--records 200000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "src"))
from edgefleet.telemetry.buffer import DurableBuffer, Record


def points(count: int) -> list[bytes]:
    """Metric points as the agent encodes them: name, labels, time, value."""
    return [json.dumps({"name": "edge_cpu_seconds_total", "labels": {"site": "store-0042", "cpu": str(n % 4)},
                        "t": 1_800_000_000_000 + n * 1000, "v": n * 0.25}, separators=(",", ":")).encode()
            for n in range(count)]


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
    figures = {"records": args.records, "batch_records": args.batch, "record_bytes": round(size, 1),
               "buffer_records_per_s": round(args.records / buffer_s),
               "plain_file_fsync_records_per_s": round(args.records / file_s)}
    print(f"{args.records} metric points of {size:.0f} bytes, batches of {args.batch}, one fsync per batch:")
    print(f"  durable buffer (SQLite WAL, synchronous=FULL): {figures['buffer_records_per_s']:,} records/s")
    print(f"  plain file append + fsync (the floor):          {figures['plain_file_fsync_records_per_s']:,} records/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

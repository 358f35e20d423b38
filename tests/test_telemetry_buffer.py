"""The device's durable telemetry buffer (real SQLite files): order by sequence number,
removal only on acknowledgement, a byte bound that drops the oldest and counts them,
appends that survive kill -9, a full disk that changes nothing, and a corrupt file moved
aside."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefleet.telemetry.buffer import OVERHEAD, BufferError, DurableBuffer, Record, open_buffer
from edgefleet.telemetry.recorder import Recorder


def records(first: int, count: int, size: int = 20) -> list[Record]:
    return [Record("log", 1_800_000_000.0 + n, json.dumps({"n": n}).encode().ljust(size)) for n in
            range(first, first + count)]


def numbers(buffer: DurableBuffer) -> list[int]:
    batch = buffer.batch(max_records=1_000_000, max_bytes=1 << 40)
    return [] if batch is None else [int(json.loads(r.body)["n"]) for r in batch.records]


def test_records_leave_in_order_and_only_when_acknowledged(tmp_path: Path) -> None:
    buffer = DurableBuffer(tmp_path / "t.db", 1 << 20)
    assert buffer.append(records(0, 5)) == 5
    assert buffer.append(records(5, 5)) == 10
    batch = buffer.batch(max_records=4)
    assert batch is not None
    assert [r.seq for r in batch.records] == [1, 2, 3, 4]
    assert buffer.batch(max_records=4) == batch  # not acknowledged: the same batch again
    assert buffer.ack(batch.last_seq) == 4
    assert numbers(buffer) == list(range(4, 10))
    small = buffer.batch(max_bytes=2 * (20 + OVERHEAD))
    assert small is not None
    assert len(small.records) == 2
    buffer.close()
    reopened = DurableBuffer(tmp_path / "t.db", 1 << 20)
    assert numbers(reopened) == list(range(4, 10))
    assert reopened.append(records(10, 1)) == 11  # sequence numbers go on after a restart
    figures = reopened.figures(now=1_800_000_100.0)
    assert (figures.queued, figures.bytes, figures.dropped) == (7, 7 * (20 + OVERHEAD), 0)
    assert figures.oldest_age_seconds == pytest.approx(96.0)
    reopened.close()


def test_a_full_buffer_drops_the_oldest_records_and_counts_them(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    buffer = DurableBuffer(tmp_path / "t.db", 10 * (20 + OVERHEAD))
    buffer.append(records(0, 8))
    with caplog.at_level(logging.WARNING, "edgefleet.telemetry"):
        buffer.append(records(8, 5))
    assert numbers(buffer) == list(range(3, 13))
    assert "dropped the 3 oldest records" in caplog.text
    batch = buffer.batch()
    assert batch is not None
    assert batch.dropped == 3  # travels with every batch
    buffer.ack(batch.last_seq)
    buffer.append(records(13, 6))
    buffer.append(records(19, 6))
    assert numbers(buffer) == list(range(15, 25))
    assert buffer.figures().dropped == 5  # cumulative
    with pytest.raises(BufferError, match="does not fit"):
        buffer.append(records(0, 11))
    buffer.close()


def test_a_full_disk_changes_nothing_and_says_why(tmp_path: Path) -> None:
    buffer = DurableBuffer(tmp_path / "t.db", 1 << 30)
    buffer.append(records(0, 3))
    pages = buffer._db.execute("PRAGMA page_count").fetchone()[0]
    buffer._db.execute(f"PRAGMA max_page_count = {pages + 1}")  # the disk fills up
    with pytest.raises(BufferError, match="full"):
        buffer.append(records(3, 2000, size=200))
    assert numbers(buffer) == [0, 1, 2]
    assert buffer.last_seq() == 3
    assert buffer.figures().bytes == 3 * (20 + OVERHEAD)
    buffer.close()


WRITER = """
import sys, time
from pathlib import Path
from edgefleet.telemetry.buffer import DurableBuffer, Record
buffer = DurableBuffer(Path(sys.argv[1]), 1 << 30)
n = 0
while True:
    last = buffer.append([Record("metric", time.time(), b"x" * 40) for _ in range(50)])
    print(last, flush=True)
"""


def test_every_acknowledged_append_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        confirmed = [int(writer.stdout.readline()) for _ in range(5)]
        time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        rest = writer.stdout.read().split()
        writer.stdout.close()
        writer.wait()
        confirmed += [int(x) for x in rest]
        buffer = DurableBuffer(path, 1 << 30)
        batch = buffer.batch(max_records=10_000_000, max_bytes=1 << 40)
        assert batch is not None
        seqs = [r.seq for r in batch.records]
        assert seqs == list(range(1, len(seqs) + 1))  # no gap, nothing out of order
        assert seqs[-1] >= confirmed[-1]  # everything the writer was told is stored, is
        assert len(seqs) % 50 == 0  # no half batch
        buffer.close()


def test_a_corrupt_buffer_is_moved_aside_and_a_new_one_started(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t.db"
    path.write_bytes(b"this is not a database, it was overwritten" * 100)
    with caplog.at_level(logging.ERROR, "edgefleet.telemetry"):
        buffer = open_buffer(path, 1 << 20)
    assert "is unreadable" in caplog.text
    assert len(list(tmp_path.glob("t.db.corrupt-*"))) == 1
    assert buffer.append(records(0, 2)) == 2
    buffer.close()
    again = open_buffer(path, 1 << 20)
    assert numbers(again) == [0, 1]  # a sound buffer is kept
    again.close()


def test_a_recorder_sleeps_while_nothing_is_staged_and_writes_a_record_from_another_thread_soon_after(
        tmp_path: Path) -> None:
    buffer = open_buffer(tmp_path / "telemetry.db", 1 << 20)
    recorder = Recorder(buffer)
    flushes: list[int] = []
    flush = recorder.flush

    def counted() -> int:
        flushes.append(1)
        return flush()

    recorder.flush = counted  # type: ignore[method-assign]
    told: list[int] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(recorder.run(stop, flush_seconds=0.02, on_flushed=lambda: told.append(1)))
        await asyncio.sleep(0.5)  # 25 flush intervals with nothing staged
        assert flushes == []  # an idle agent does not wake to write nothing
        threading.Thread(target=recorder.log, args=("warning", "test", "from a workload's reader thread")).start()
        deadline = time.monotonic() + 30
        while buffer.figures().queued < 1:
            assert time.monotonic() < deadline, "the record was never written"
            await asyncio.sleep(0.01)
        assert told == [1]  # the shipper hears of the write
        stop.set()
        await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    assert buffer.figures().queued == 1
    buffer.close()


def test_a_batch_written_where_it_filled_up_wakes_the_shipper_too(tmp_path: Path) -> None:
    buffer = open_buffer(tmp_path / "telemetry.db", 1 << 20)
    recorder = Recorder(buffer, flush_records=3)
    told: list[int] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(recorder.run(stop, flush_seconds=0.05, on_flushed=lambda: told.append(1)))
        await asyncio.sleep(0)

        def chatty() -> None:  # a workload's reader thread: the third line fills the batch
            for n in range(3):
                recorder.log("info", "workload/meter", f"line {n}")

        reader = threading.Thread(target=chatty)
        reader.start()
        reader.join()
        assert buffer.figures().queued == 3  # written by the thread that filled the batch, at once
        deadline = time.monotonic() + 30
        while not told:
            assert time.monotonic() < deadline, "the shipper never heard of the full batch"
            await asyncio.sleep(0.01)
        assert told == [1]
        stop.set()
        await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    buffer.close()

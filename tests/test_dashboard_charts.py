"""The rollout chart's time axis: round moments within the rollout's span, at most six,
labelled with the clock time (and the date when the span crosses days), placed on the
same scale as the curves."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from edgefleet.server.dashboard.charts import MAX_TICKS, PAD, WIDTH, progress, progress_svg, time_ticks

START = datetime(2026, 12, 7, 12, 3, 17, tzinfo=UTC)


def test_a_ten_minute_rollout_gets_a_tick_every_two_minutes_on_the_minute() -> None:
    end = START + timedelta(minutes=10)
    ticks = time_ticks(START.timestamp(), end.timestamp())
    assert [label for _, label in ticks] == ["12:04", "12:06", "12:08", "12:10", "12:12"]
    assert all(moment % 120 == 0 for moment, _ in ticks)


def test_a_span_over_days_is_labelled_with_dates_and_a_few_seconds_with_seconds() -> None:
    days = time_ticks(START.timestamp(), (START + timedelta(days=3)).timestamp())
    assert len(days) <= MAX_TICKS
    assert days[0][1] == "12-08 00:00"
    seconds = time_ticks(START.timestamp(), (START + timedelta(seconds=8)).timestamp())
    assert [label for _, label in seconds] == ["12:03:18", "12:03:20", "12:03:22", "12:03:24"]


def test_the_chart_places_its_ticks_on_the_curves_scale() -> None:
    events = [(START, "wave_started", ""), (START + timedelta(seconds=5), "assign", ""),
              (START + timedelta(minutes=4), "device", "succeeded"),
              (START + timedelta(minutes=10), "halt", "attestation failed")]
    points, marks = progress(events)
    svg = progress_svg(points, marks, total=1)
    labels = re.findall(r'<text class="tick" x="([0-9.]+)"[^>]*>([0-9:]+)</text>', svg)
    assert [label for _, label in labels] == ["12:04", "12:06", "12:08", "12:10", "12:12"]
    xs = [float(x) for x, _ in labels]
    assert xs == sorted(xs)
    assert all(PAD <= x <= WIDTH - PAD for x in xs)
    # 12:04 is 43 s into a 600 s span.
    assert abs(xs[0] - (PAD + 43 / 600 * (WIDTH - 2 * PAD))) < 0.1
    assert ">UTC<" in svg

"""A rollout's progress over time as an SVG drawn on the server: how many devices had been
told the release, and how many had succeeded and failed, at each moment of the audit
trail, with a tick where each wave started, a red mark where it halted, and a time axis
(UTC) whose step is a round interval chosen for the rollout's span."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

WIDTH, HEIGHT, PAD = 640, 220, 28
AXIS = HEIGHT - 44  # the time axis; its labels below it, the legend at the bottom
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
MAX_TICKS = 6
SERIES = (("assigned", "#4b6cb7"), ("succeeded", "#2e8b57"), ("failed", "#c0392b"))


@dataclass(frozen=True)
class Point:
    at: datetime
    assigned: int
    succeeded: int
    failed: int


def progress(events: Sequence[tuple[datetime, str, str]]) -> tuple[list[Point], list[tuple[datetime, str]]]:
    """Cumulative counts from (at, kind, reason) events, oldest first; and the marks
    (wave starts, halts)."""
    points: list[Point] = []
    marks: list[tuple[datetime, str]] = []
    assigned = succeeded = failed = 0
    for at, kind, reason in sorted(events, key=lambda e: e[0]):
        if kind == "assign":
            assigned += 1
        elif kind == "device" and reason.startswith("succeeded"):
            succeeded += 1
        elif kind == "device" and reason.startswith(("failed", "timed_out")):
            failed += 1
        elif kind in ("wave_started", "halt"):
            marks.append((at, kind))
        points.append(Point(at, assigned, succeeded, failed))
    return points, marks


def time_ticks(start: float, end: float) -> list[tuple[float, str]]:
    """Round moments (epoch seconds) from ``start`` to ``end``, at most ``MAX_TICKS``, each
    with its label: a clock time, with the date when the span crosses days."""
    span = max(end - start, 1.0)
    step = next((s for s in STEPS if span / s <= MAX_TICKS), STEPS[-1])
    first = math.ceil(start / step) * step
    shape = "%H:%M:%S" if step < 60 else "%H:%M" if span < 86400 else "%m-%d %H:%M"
    return [(t, datetime.fromtimestamp(t, UTC).strftime(shape))
            for t in (first + i * step for i in range(MAX_TICKS + 1)) if t <= end]


def progress_svg(points: Sequence[Point], marks: Sequence[tuple[datetime, str]], total: int) -> str:
    if not points:
        return f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><text x="{PAD}" y="{HEIGHT // 2}">' \
               "no progress yet</text></svg>"
    start, end = points[0].at.timestamp(), points[-1].at.timestamp()
    span, top = max(end - start, 1.0), max(total, 1)

    def x(at: datetime) -> float:
        return at_x(at.timestamp())

    def at_x(moment: float) -> float:
        return PAD + (moment - start) / span * (WIDTH - 2 * PAD)

    def y(count: int) -> float:
        return AXIS - count / top * (AXIS - PAD)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="rollout progress">',
             f'<line x1="{PAD}" y1="{AXIS}" x2="{WIDTH - PAD}" y2="{AXIS}" stroke="#999"/>',
             f'<text x="2" y="{PAD}" font-size="10">{top}</text>']
    for moment, label in time_ticks(start, end):
        parts.append(f'<line class="tick" x1="{at_x(moment):.1f}" y1="{AXIS}" x2="{at_x(moment):.1f}" '
                     f'y2="{AXIS + 4}" stroke="#999"/><text class="tick" x="{at_x(moment):.1f}" y="{AXIS + 16}" '
                     f'font-size="10" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{WIDTH - PAD}" y="{AXIS + 28}" font-size="9" text-anchor="end" fill="#777">UTC</text>')
    for at, kind in marks:
        colour = "#c0392b" if kind == "halt" else "#bbb"
        parts.append(f'<line x1="{x(at):.1f}" y1="{PAD}" x2="{x(at):.1f}" y2="{AXIS}" stroke="{colour}" '
                     f'stroke-dasharray="3,3"><title>{escape(kind)} {at:%H:%M:%S}</title></line>')
    for index, (name, colour) in enumerate(SERIES):
        coords = " ".join(f"{x(p.at):.1f},{y(getattr(p, name)):.1f}" for p in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}">'
                     f"<title>{name}</title></polyline>")
        parts.append(f'<text x="{PAD + index * 110}" y="{HEIGHT - 6}" font-size="11" fill="{colour}">'
                     f"{name}: {getattr(points[-1], name)}</text>")
    parts.append("</svg>")
    return "".join(parts)

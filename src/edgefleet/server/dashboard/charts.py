"""A rollout's progress over time as an SVG drawn on the server: how many devices had been
told the release, and how many had succeeded and failed, at each moment of the audit
trail, with a tick where each wave started and a red mark where it halted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from xml.sax.saxutils import escape

WIDTH, HEIGHT, PAD = 640, 200, 28
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


def progress_svg(points: Sequence[Point], marks: Sequence[tuple[datetime, str]], total: int) -> str:
    if not points:
        return f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><text x="{PAD}" y="{HEIGHT // 2}">' \
               "no progress yet</text></svg>"
    start, end = points[0].at.timestamp(), points[-1].at.timestamp()
    span, top = max(end - start, 1.0), max(total, 1)

    def x(at: datetime) -> float:
        return PAD + (at.timestamp() - start) / span * (WIDTH - 2 * PAD)

    def y(count: int) -> float:
        return HEIGHT - PAD - count / top * (HEIGHT - 2 * PAD)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="rollout progress">',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>',
             f'<text x="2" y="{PAD}" font-size="10">{top}</text>']
    for at, kind in marks:
        colour = "#c0392b" if kind == "halt" else "#bbb"
        parts.append(f'<line x1="{x(at):.1f}" y1="{PAD}" x2="{x(at):.1f}" y2="{HEIGHT - PAD}" stroke="{colour}" '
                     f'stroke-dasharray="3,3"><title>{escape(kind)} {at:%H:%M:%S}</title></line>')
    for index, (name, colour) in enumerate(SERIES):
        coords = " ".join(f"{x(p.at):.1f},{y(getattr(p, name)):.1f}" for p in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}">'
                     f"<title>{name}</title></polyline>")
        parts.append(f'<text x="{PAD + index * 110}" y="{HEIGHT - 6}" font-size="11" fill="{colour}">'
                     f"{name}: {getattr(points[-1], name)}</text>")
    parts.append("</svg>")
    return "".join(parts)

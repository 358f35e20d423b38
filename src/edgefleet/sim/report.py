"""A run's report: ``report.json`` (the outcome, the checks, every sample) and
``report.html`` (the same, with charts drawn as inline SVG: no script, no network)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from jinja2 import Environment, PackageLoader, select_autoescape

from edgefleet.sim.checks import Check
from edgefleet.sim.scenario import Scenario
from edgefleet.util.atomic import atomic_write_bytes

WIDTH, HEIGHT, PAD = 760, 220, 36
PALETTE = ("#4b6cb7", "#2e8b57", "#c0392b", "#e67e22", "#8e44ad", "#16a085", "#7f8c8d", "#d35400")


@dataclass(frozen=True)
class Sample:
    t_s: float
    versions: dict[str, int]  # devices running each release
    phases: dict[str, int]  # devices per update phase, or idle, unreachable, powered off
    waves: dict[str, dict[str, int]]  # the rollout's counts per wave, as the control plane says
    checkins_per_s: float
    server_cpu_percent: float  # of one core, all server processes together
    server_rss_mb: float
    links_down: int


@dataclass
class SimReport:
    scenario: Scenario
    outcome: dict[str, Any]
    checks: list[Check]
    samples: list[Sample]
    timeline: list[dict[str, Any]]
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.held for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "passed": self.passed, "outcome": self.outcome,
                "checks": [asdict(c) for c in self.checks], "figures": self.figures, "timeline": self.timeline,
                "samples": [asdict(s) for s in self.samples], "definition": self.scenario.model_dump(mode="json")}


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], marks: Sequence[tuple[float, str]] = (),
               unit: str = "") -> str:
    """Lines over time (seconds on x), a legend with each line's last value, and dashed
    vertical marks for the timeline's events."""
    points = [p for line in series.values() for p in line]
    if not points:
        return (f'<svg class="chart" viewBox="0 0 {WIDTH} 40"><text x="4" y="20">{escape(title)}: '
                "no data</text></svg>")
    x_max = max(max(p[0] for p in points), 1.0)
    y_max = max(max(p[1] for p in points), 1.0)

    def x(t: float) -> float:
        return PAD + t / x_max * (WIDTH - 2 * PAD)

    def y(v: float) -> float:
        return HEIGHT - PAD - v / y_max * (HEIGHT - 2 * PAD)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<text x="{PAD}" y="14" font-size="13" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>',
             f'<text x="2" y="{PAD}" font-size="10">{y_max:g}{escape(unit)}</text>',
             f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 12}" font-size="10" text-anchor="end">{x_max:.0f} s</text>']
    for at, label in marks:
        parts.append(f'<line x1="{x(at):.1f}" y1="{PAD}" x2="{x(at):.1f}" y2="{HEIGHT - PAD}" stroke="#bbb" '
                     f'stroke-dasharray="3,3"><title>t={at:.0f}s {escape(label)}</title></line>')
    for index, (name, line) in enumerate(sorted(series.items())):
        colour = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in line)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}">'
                     f"<title>{escape(name)}</title></polyline>")
        parts.append(f'<text x="{PAD + (index % 5) * 140}" y="{HEIGHT - 18 + (index // 5) * 12}" font-size="11" '
                     f'fill="{colour}">{escape(name)}: {line[-1][1]:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _series(samples: Sequence[Sample], pick: str) -> dict[str, list[tuple[float, float]]]:
    names = sorted({name for s in samples for name in getattr(s, pick)})
    return {name: [(s.t_s, float(getattr(s, pick).get(name, 0))) for s in samples] for name in names}


def charts(report: SimReport) -> list[str]:
    """SVG built from escaped text only: the template shows them as they are."""
    samples = report.samples
    marks = [(float(e["t_s"]), str(e["event"])) for e in report.timeline]
    result = [line_chart("Devices per release", _series(samples, "versions"), marks),
              line_chart("Devices per state", _series(samples, "phases"), marks)]
    waves = sorted({w for s in samples for w in s.waves}, key=lambda w: int(w.split()[-1]))
    for wave in waves:
        states = sorted({k for s in samples for k in s.waves.get(wave, {})})
        result.append(line_chart(f"Rollout {wave}: devices per state", {
            state: [(s.t_s, float(s.waves.get(wave, {}).get(state, 0))) for s in samples] for state in states}, marks))
    result.append(line_chart("Check-ins per second (as devices saw them answered)",
                             {"check-ins/s": [(s.t_s, s.checkins_per_s) for s in samples]}, marks))
    result.append(line_chart("Control plane CPU (all processes, % of one core)",
                             {"cpu %": [(s.t_s, s.server_cpu_percent) for s in samples]}, marks, "%"))
    result.append(line_chart("Control plane memory (all processes, resident)",
                             {"MB": [(s.t_s, s.server_rss_mb) for s in samples]}, marks, " MB"))
    return result


def write_reports(report: SimReport, out_dir: Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.html`` in ``out_dir``, each written whole or not at all."""
    env = Environment(loader=PackageLoader("edgefleet.sim", "templates"), autoescape=select_autoescape(["html"]))
    html = env.get_template("report.html").render(report=report, charts=charts(report),
                                                  outcome=json.dumps(report.outcome, indent=2))
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    atomic_write_bytes(json_path, json.dumps(report.to_json(), indent=1).encode())
    atomic_write_bytes(html_path, html.encode())
    return json_path, html_path

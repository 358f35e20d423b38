"""A CVE's notification report as a readable, printable HTML page (no script, no network):
what ``edgefleet vuln report`` writes beside the JSON, and what the dashboard shows."""

from __future__ import annotations

from collections.abc import Sequence

from jinja2 import Environment, PackageLoader, select_autoescape

from edgefleet.protocol.v1 import AffectedDevice, CveReport

_env = Environment(loader=PackageLoader("edgefleet.vuln", "templates"), autoescape=select_autoescape(["html"]))


def render_html(report: CveReport, devices: Sequence[AffectedDevice] | None = None, *, back: str | None = None,
                device_link: str | None = None) -> str:
    """The page; ``devices`` listed when given, each linked to ``device_link`` + its id."""
    return _env.get_template("cve_report.html").render(r=report, devices=devices, back=back,
                                                        device_link=device_link)

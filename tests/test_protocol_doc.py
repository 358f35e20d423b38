"""docs/protocol.md lists exactly the control plane's routes: none missing, none stale."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.server.app import create_app
from edgefleet.server.local import init_server
from edgefleet.server.settings import ServerSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_the_protocol_reference_names_every_route_and_no_other(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path / "server")
    init_server(settings, datetime.now(UTC))
    served = {(method.upper(), path) for path, operations in create_app(settings).openapi()["paths"].items()
              for method in operations}
    documented = set(re.findall(r"^\| `(GET|POST|PUT|DELETE|HEAD) (/[^`]*)`", DOC.read_text(), re.MULTILINE))
    assert served - documented == set(), "routes missing from docs/protocol.md"
    assert documented - served == set(), "docs/protocol.md names routes the server does not have"

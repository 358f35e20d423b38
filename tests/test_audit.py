"""The audit log: every state-changing admin route writes a row (refused requests too),
enrollment and quarantine are recorded as the services decide them, and ``audit verify``
finds a row altered or deleted behind the server's back."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.credentials import Role
from edgefleet.server.audit import CHANGES
from tests.cli_helpers import server_args
from tests.conftest import Fleet, start_fleet


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("audit"), None)
    yield fleet
    fleet.close()


def entries(plane: Fleet, **params: object) -> list[dict[str, object]]:
    answer = plane.client(role=Role.ADMIN).get("/api/v1/admin/audit", params={"limit": 1000, **params})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, object]] = answer.json()["entries"]
    return found


def test_every_state_changing_admin_route_writes_an_audit_row_refused_or_not(plane: Fleet) -> None:
    paths = plane.client().get("/openapi.json").json()["paths"]
    changing = sorted((method.upper(), path) for path, operations in paths.items() for method in operations
                      if method.upper() in CHANGES and path.startswith("/api/v1/admin/"))
    assert len(changing) >= 18  # every verb of the admin API (a new one is covered by this loop as it comes)
    admin = plane.client(role=Role.ADMIN)
    for method, path in changing:  # placeholders everywhere: most are refused (404, 409, 422), all are recorded
        admin.request(method, re.sub(r"\{[^}]+\}", "x0", path), content=b"{}",
                      headers={"content-type": "application/json"})
    recorded = {str(e["action"]) for e in entries(plane)}
    assert [f"{m} {p}" for m, p in changing if f"{m} {p}" not in recorded] == []
    delete = "DELETE /api/v1/admin/devices/{device_id}"
    one = next(e for e in entries(plane, actor="test-admin") if e["action"] == delete)
    assert (one["subject"], one["outcome"], one["source"]) == ("x0", "refused 404", "127.0.0.1")


def test_a_request_without_a_valid_credential_writes_no_row(plane: Fleet) -> None:
    before = len(entries(plane))
    assert plane.client().post("/api/v1/admin/rollouts", json={}).status_code == 401
    assert len(entries(plane)) == before  # anyone could fill the table otherwise


def test_enrollment_and_a_viewers_refused_action_are_recorded_with_who_and_why(plane: Fleet) -> None:
    device = plane.enroll(site="store-7")
    enrolled = entries(plane, device=device.id)
    assert [(e["actor"], e["action"], e["outcome"]) for e in enrolled] == [("enrollment", "enroll", "ok")]
    assert enrolled[0]["details"]["site"] == "store-7"  # type: ignore[index]
    refused = plane.client(role=Role.VIEWER).delete(f"/api/v1/admin/devices/{device.id}")
    assert refused.status_code == 403
    row = entries(plane, device=device.id)[0]
    assert (row["actor"], row["outcome"]) == ("test-viewer", "refused 403")


def test_audit_list_shows_the_rows_and_only_an_admin_may_read_them(plane: Fleet) -> None:
    assert plane.client(role=Role.OPERATOR).get("/api/v1/admin/audit").status_code == 403
    shown = CliRunner().invoke(app, ["audit", "list", "--actor", "enrollment", *server_args(plane)])
    assert shown.exit_code == 0, shown.output
    assert "enroll" in shown.output


def _database(plane: Fleet) -> Path:
    return Path(plane.settings.effective_database_url.split("///", 1)[1])


def test_verify_finds_an_altered_row_and_a_deleted_one(plane: Fleet) -> None:
    intact = plane.client(role=Role.ADMIN).get("/api/v1/admin/audit/verify").json()
    assert intact["intact"] is True
    assert intact["rows"] >= 18
    shown = CliRunner().invoke(app, ["audit", "verify", *server_args(plane)])
    assert shown.exit_code == 0, shown.output
    with sqlite3.connect(_database(plane)) as db:  # behind the server's back, as an attacker with the file would
        actor = db.execute("SELECT actor FROM audit_log WHERE seq = 3").fetchone()[0]
        db.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
    verdict = plane.client(role=Role.ADMIN).get("/api/v1/admin/audit/verify").json()
    assert (verdict["intact"], verdict["first_bad_seq"], verdict["rows"]) == (False, 3, 2)
    assert "altered" in verdict["reason"]
    with sqlite3.connect(_database(plane)) as db:
        db.execute("UPDATE audit_log SET actor = ? WHERE seq = 3", (actor,))
        db.execute("DELETE FROM audit_log WHERE seq = 5")
    verdict = plane.client(role=Role.ADMIN).get("/api/v1/admin/audit/verify").json()
    assert (verdict["intact"], verdict["first_bad_seq"]) == (False, 5)
    assert "missing" in verdict["reason"]
    shown = CliRunner().invoke(app, ["audit", "verify", *server_args(plane)])
    assert shown.exit_code == 1
    assert "BROKEN at row 5" in shown.output


def test_appends_from_two_processes_at_once_on_postgresql_make_one_unbroken_chain(own_postgres_url: str) -> None:
    """Two server processes sharing a database append together (as enrollments at a busy
    site do): every row lands, numbered without gaps, and the chain verifies."""
    from edgefleet.clock import SystemClock
    from edgefleet.server.audit import AuditLog
    from edgefleet.store import Database

    async def scenario() -> tuple[int, bool, int]:
        first, second = Database(own_postgres_url), Database(own_postgres_url)
        try:
            await first.migrate()
            key = b"k" * 32
            logs = [AuditLog(first, SystemClock(), key), AuditLog(second, SystemClock(), key)]
            await asyncio.gather(*(logs[i % 2].record(f"actor-{i}", "enroll", subject=f"dev-{i}") for i in range(60)))
            verdict = await logs[0].verify()
            return verdict.rows, verdict.intact, verdict.head_seq
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(scenario()) == (60, True, 60)

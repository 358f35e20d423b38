"""Fixtures: a real control plane over loopback HTTPS, on SQLite and on PostgreSQL.

Tests that need PostgreSQL skip with a reason when it is not reachable, unless
EDGEFLEET_REQUIRE_ALL=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from edgefleet.credentials import Role
from edgefleet.pki import make_csr, new_device_key
from edgefleet.server import ServerSettings, ServerThread
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.store import Database

REQUIRE_ALL = os.environ.get("EDGEFLEET_REQUIRE_ALL") == "1"
POSTGRES_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# table -> the column its rows are ordered by
TABLES = {"devices": "id", "bootstrap_tokens": "id", "admin_tokens": "id", "device_changes": "id",
          "director_state": "device_id", "attestation_identities": "device_id", "attestation_nonces": "nonce",
          "attestation_status": "device_id", "update_events": "device_id", "gitops_syncs": "name",
          "gitops_commits": "commit_sha", "alerts": "id", "drift_status": "device_id", "rollouts": "id",
          "rollout_events": "id", "approvals": "fingerprint", "revocations": "id"}


def need(component: str, reason: str) -> None:
    """Skip (or, under EDGEFLEET_REQUIRE_ALL=1, fail) because ``component`` is missing."""
    if REQUIRE_ALL:
        pytest.fail(f"{component} is required in CI but {reason}")
    pytest.skip(f"{component} not available: {reason}")


class FakeClock:
    """The server's wall clock, moved by tests (TLS validity still uses real time)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh_postgres() -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards."""
    name = f"edgefleet_test_{secrets.token_hex(4)}"
    import asyncpg

    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        need("PostgreSQL", f"cannot create a database at {POSTGRES_ADMIN_URL} ({exc.__class__.__name__}: {exc})")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    yield f"{base}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, shared by its tests."""
    yield from fresh_postgres()


@pytest.fixture
def own_postgres_url() -> Iterator[str]:
    """A database of this test alone: for tests whose server processes must be the only
    ones on it (every process on a database takes part in electing the rollout controller)."""
    yield from fresh_postgres()


def database_url(backend: str, request: pytest.FixtureRequest, data_dir: Path) -> str | None:
    if backend == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@dataclass
class Fleet:
    """A running control plane and helpers to act on it as operators and devices."""

    server: ServerThread
    settings: ServerSettings
    clock: FakeClock
    tokens: dict[Role, str]
    tmp: Path
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def tls(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.settings.pki.ca_cert))
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
        return context

    def client(self, *, role: Role | None = None, token: str | None = None, cert: Path | None = None,
               key: Path | None = None) -> httpx.Client:
        headers = {}
        if role is not None:
            headers["authorization"] = f"Bearer {self.tokens[role]}"
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        client = httpx.Client(base_url=self.url, verify=self.tls(cert, key), headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def bootstrap_token(self, site: str = "store-1", labels: dict[str, str] | None = None, ttl: int = 3600,
                        kind: str = "device") -> str:
        response = self.client(role=Role.OPERATOR).post(
            "/api/v1/admin/bootstrap-tokens",
            json={"site": site, "labels": labels or {}, "ttl_seconds": ttl, "kind": kind})
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def enroll_request(self, token: str, *, site: str = "store-1", hardware_id: str | None = None,
                       key_pem: bytes | None = None, labels: dict[str, str] | None = None,
                       hardware_type: str | None = None) -> dict[str, Any]:
        key_pem = key_pem or new_device_key()
        inventory: dict[str, Any] = {"hardware_id": hardware_id or f"hw-{secrets.token_hex(6)}", "site": site,
                                     "labels": labels or {}}
        if hardware_type:
            inventory["hardware_type"] = hardware_type
        return {"token": token, "csr_pem": make_csr(key_pem, "device").decode(), "inventory": inventory}

    def enroll(self, site: str = "store-1", labels: dict[str, str] | None = None,
               hardware_type: str | None = None) -> Device:
        """A device enrolled with a token of ``site`` that carries the operator's ``labels``."""
        key_pem = new_device_key()
        body = self.enroll_request(self.bootstrap_token(site, labels), site=site, key_pem=key_pem,
                                   hardware_type=hardware_type)
        response = self.client().post("/api/v1/enroll", json=body)
        assert response.status_code == 201, response.text
        answer = response.json()
        directory = self.tmp / answer["device_id"]
        directory.mkdir()
        (directory / "key.pem").write_bytes(key_pem)
        (directory / "cert.pem").write_text(answer["certificate_pem"])
        return Device(answer["device_id"], self.client(cert=directory / "cert.pem", key=directory / "key.pem"),
                      directory)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.stop()

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, to prove that a refused request changed nothing.

        ``devices.last_seen_at`` is left out: any authenticated request (even a stale,
        ignored report) legitimately marks the device seen, and the batched presence flush
        may land at any moment.
        """

        async def read() -> dict[str, list[dict[str, Any]]]:
            db = Database(self.settings.effective_database_url)
            try:
                async with db.transaction() as conn:
                    rows = {}
                    for table, key in TABLES.items():
                        query = text(f"SELECT * FROM {table} ORDER BY {key}")  # noqa: S608 - fixed names
                        rows[table] = [
                            {k: v for k, v in r._mapping.items() if k != "last_seen_at"}
                            for r in await conn.execute(query)
                        ]
                    return rows
            finally:
                await db.close()

        return asyncio.run(read())


@dataclass
class Device:
    id: str
    client: httpx.Client
    directory: Path


def start_fleet(tmp: Path, database: str | None, **overrides: Any) -> Fleet:
    # Most test devices have no TPM: the attestation gate is tested where they do.
    overrides.setdefault("attestation_required", False)
    # Test TPMs are swtpm instances without a vendor's EK certificate: trusted on first use,
    # set here as a lab would set it; the approval path is tested on its own.
    overrides.setdefault("ek_trust", "tofu")
    # Test agents check in every 0.1 s; the production limit (2/s) is tested on its own.
    overrides.setdefault("device_rate_per_second", 50.0)
    overrides.setdefault("device_rate_burst", 200)
    settings = ServerSettings(data_dir=tmp / "server", database_url=database, port=0,
                              presence_flush_seconds=0.2, **overrides)
    clock = FakeClock()
    init_server(settings, clock.now())
    tokens = {role: asyncio.run(create_admin_token(settings, name=f"test-{role}", role=role, now=clock.now(),
                                                   ttl=None)) for role in Role}
    server = ServerThread(settings, clock=clock).start()
    devices_dir = tmp / "devices"
    devices_dir.mkdir()
    return Fleet(server, settings, clock, tokens, devices_dir)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One control plane per backend for the whole run; tests make their own devices."""
    tmp = tmp_path_factory.mktemp(f"fleet-{request.param}")
    fleet = start_fleet(tmp, database_url(request.param, request, tmp))
    yield fleet
    fleet.close()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Any]:
    """A real TPM 2.0 (swtpm) for one test: own state directory, always stopped."""
    from edgefleet.agent.hardware import swtpm
    from tests.tpm_world import tpm2_or_skip

    tpm2_or_skip()
    with swtpm.Swtpm(tmp_path / "swtpm") as instance:
        yield instance


REAL_BOOT_FIRST = ("test_real_updates.py", "test_real_updates_power_cuts.py", "test_real_boot.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real-boot modules first, the two longest first. scripts/test runs two xdist
    workers that take a module at a time in this order: each of the two long VM modules
    starts at once on a worker of its own, and the short modules fill both workers behind
    them (a VM module that started last would be the run's tail)."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return REAL_BOOT_FIRST.index(name) if name in REAL_BOOT_FIRST else len(REAL_BOOT_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order


# The real-boot session fixtures (tests/real_boot_fixtures.py).
from tests.real_boot_fixtures import (  # noqa: E402, F401
    module_plane,
    real_golden,
    real_image,
    real_plane,
    real_releases,
    real_spec_file,
)

# Health signals that read the machine the tests run on (its disk may be nearly full, its
# memory short): tests that check what a device reports compare the rest.
HOST_SIGNALS = frozenset({"disk", "memory", "clock"})


def own_findings(findings: list[Any]) -> list[Any]:
    """``findings`` (dicts or HealthFinding) without the host's own signals."""
    return [f for f in findings if (f["name"] if isinstance(f, dict) else f.name) not in HOST_SIGNALS]

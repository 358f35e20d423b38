"""Operations run on the control plane host itself, not over the API: creating the data
dir and PKI, and minting admin tokens (the first one cannot come from the API)."""

from __future__ import annotations

from datetime import datetime, timedelta

from edgefleet.credentials import Role, TokenKind, new_token
from edgefleet.protocol.scope import Scope
from edgefleet.releases.keys import Keystore
from edgefleet.server.nonces import ensure_secret_key
from edgefleet.server.repository import ensure_online_keys
from edgefleet.server.settings import ServerSettings
from edgefleet.server.workload import FIRST_KEY, ensure_workload_key
from edgefleet.store import Database
from edgefleet.store.tokens import insert_admin


def init_server(settings: ServerSettings, now: datetime) -> bool:
    """Create the data dir, fleet CA, server certificate and the online signing keys
    (snapshot, timestamp, director); False if the PKI already existed."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    created = settings.pki.init(settings.fleet_name, settings.server_names, now)
    ensure_online_keys(Keystore(settings.data_dir / "keys"))
    ensure_workload_key(settings.data_dir / "keys" / FIRST_KEY)
    ensure_secret_key(settings.data_dir / "keys" / "nonce.key")
    ensure_secret_key(settings.data_dir / "keys" / "audit.key")
    return created


async def create_admin_token(
    settings: ServerSettings, *, name: str, role: Role, now: datetime, ttl: timedelta | None,
    scope: Scope | None = None,
) -> str:
    """Migrate the database if needed and store a new admin token; returns it (shown once).
    With ``scope``, the token sees and acts on the devices in it only."""
    db = Database(settings.effective_database_url)
    try:
        await db.migrate()
        text, token = new_token(TokenKind.ADMIN)
        async with db.transaction() as conn:
            await insert_admin(conn, token, name=name, role=role, now=now,
                               expires_at=None if ttl is None else now + ttl,
                               scope=None if scope is None else str(scope))
        return text
    finally:
        await db.close()

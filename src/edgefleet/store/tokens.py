"""Bootstrap and admin token queries. Each function runs inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.credentials import ParsedToken, Role, secret_matches
from edgefleet.store.schema import AdminToken, BootstrapToken


@dataclass(frozen=True)
class ClaimedToken:
    site: str
    labels: dict[str, str]
    kind: str = "device"


async def insert_bootstrap(
    conn: AsyncConnection, token: ParsedToken, *, site: str, labels: dict[str, str],
    created_by: str, now: datetime, expires_at: datetime, kind: str = "device",
) -> None:
    await conn.execute(
        insert(BootstrapToken).values(
            id=token.id, secret_hash=token.secret_hash, site=site, labels=labels,
            created_at=now, created_by=created_by, expires_at=expires_at, kind=kind,
        )
    )


async def claim_bootstrap(
    conn: AsyncConnection, token: ParsedToken, device_id: str, now: datetime
) -> ClaimedToken | None:
    """Spend a token. The checks live in the UPDATE's WHERE clause, so two devices racing
    with the same token (on one or several server processes) cannot both win."""
    result = await conn.execute(
        update(BootstrapToken)
        .where(
            BootstrapToken.id == token.id,
            BootstrapToken.secret_hash == token.secret_hash,
            BootstrapToken.used_at.is_(None),
            BootstrapToken.revoked_at.is_(None),
            BootstrapToken.expires_at > now,
        )
        .values(used_at=now, device_id=device_id)
        .returning(BootstrapToken.site, BootstrapToken.labels, BootstrapToken.kind)
    )
    row = result.first()
    return None if row is None else ClaimedToken(row.site, dict(row.labels), row.kind)


async def why_bootstrap_refused(conn: AsyncConnection, token: ParsedToken, now: datetime) -> str:
    """For the operator's log only: which check a refused token failed."""
    row = (await conn.execute(select(BootstrapToken.__table__).where(BootstrapToken.id == token.id))).first()
    if row is None:
        return "unknown token id"
    if not secret_matches(token, row.secret_hash):
        return "wrong secret"
    if row.used_at is not None:
        return f"already used at {row.used_at.isoformat()} by {row.device_id}"
    if row.revoked_at is not None:
        return f"revoked at {row.revoked_at.isoformat()}"
    if row.expires_at <= now:
        return f"expired at {row.expires_at.isoformat()}"
    return "concurrently claimed"


async def insert_admin(
    conn: AsyncConnection, token: ParsedToken, *, name: str, role: Role, now: datetime,
    expires_at: datetime | None, scope: str | None = None,
) -> None:
    await conn.execute(
        insert(AdminToken).values(
            id=token.id, name=name, role=role.value, secret_hash=token.secret_hash,
            created_at=now, expires_at=expires_at, scope=scope,
        )
    )


async def admin_token(conn: AsyncConnection, token_id: str) -> Any:
    return (await conn.execute(select(AdminToken.__table__).where(AdminToken.id == token_id))).first()


async def bootstrap_tokens(conn: AsyncConnection, *, limit: int, offset: int) -> list[Any]:
    """Bootstrap tokens, newest first (never their secrets)."""
    columns = [c for c in BootstrapToken.__table__.c if c.name != "secret_hash"]
    rows = await conn.execute(select(*columns).order_by(BootstrapToken.created_at.desc(), BootstrapToken.id)
                              .limit(limit).offset(offset))
    return list(rows)


async def revoke_bootstrap(conn: AsyncConnection, token_id: str, now: datetime) -> bool:
    """Revoke an unused token; False if there is no such token. Revoking twice keeps the
    first time; a used token stays used (revoke the device instead)."""
    found = await conn.execute(select(BootstrapToken.id).where(BootstrapToken.id == token_id))
    if found.first() is None:
        return False
    await conn.execute(update(BootstrapToken).where(BootstrapToken.id == token_id, BootstrapToken.revoked_at.is_(None),
                                                    BootstrapToken.used_at.is_(None)).values(revoked_at=now))
    return True


async def admin_tokens(conn: AsyncConnection) -> list[Any]:
    """Every admin token, oldest first (never their secrets)."""
    columns = [c for c in AdminToken.__table__.c if c.name != "secret_hash"]
    return list(await conn.execute(select(*columns).order_by(AdminToken.created_at, AdminToken.id)))


async def revoke_admin(conn: AsyncConnection, token_id: str, now: datetime) -> bool:
    """Revoke an admin token (every server process refuses it from its next request: admin
    tokens are read from the database on each one); False if there is no such token."""
    found = await conn.execute(select(AdminToken.id).where(AdminToken.id == token_id))
    if found.first() is None:
        return False
    await conn.execute(update(AdminToken).where(AdminToken.id == token_id, AdminToken.revoked_at.is_(None))
                       .values(revoked_at=now))
    return True

"""Advisory and VEX queries. Each function runs inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import AdvisoryPackage, AdvisoryRow, VexStatement
from edgefleet.vuln.osv import Advisory, Affected, base_ecosystem
from edgefleet.vuln.vex import Statement


async def modified_of(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, datetime]:
    """When each of these advisories, if stored, was last modified."""
    rows = await conn.execute(select(AdvisoryRow.id, AdvisoryRow.modified).where(AdvisoryRow.id.in_(list(ids))))
    return {ident: modified for ident, modified in rows}


async def save_advisory(conn: AsyncConnection, advisory: Advisory, now: datetime) -> None:
    """Store (or replace) an advisory and the packages it names."""
    await conn.execute(delete(AdvisoryPackage).where(AdvisoryPackage.advisory_id == advisory.id))
    await conn.execute(delete(AdvisoryRow).where(AdvisoryRow.id == advisory.id))
    await conn.execute(insert(AdvisoryRow).values(
        id=advisory.id, modified=advisory.modified, severity=advisory.severity, summary=advisory.summary,
        aliases=list(advisory.aliases), affected=[a.to_json() for a in advisory.affected], imported_at=now))
    names = sorted({(base_ecosystem(a.ecosystem), a.name) for a in advisory.affected})
    if names:
        await conn.execute(insert(AdvisoryPackage), [
            {"ecosystem": ecosystem, "name": name, "advisory_id": advisory.id} for ecosystem, name in names])


async def advisories_naming(conn: AsyncConnection, ecosystem: str, names: Iterable[str]) -> list[Advisory]:
    """Every advisory that names one of ``names`` in ``ecosystem`` (without its release)."""
    wanted = sorted(set(names))
    found: dict[str, Advisory] = {}
    for start in range(0, len(wanted), 500):  # bounded IN lists
        rows = await conn.execute(
            select(AdvisoryRow.__table__).join(AdvisoryPackage, AdvisoryPackage.advisory_id == AdvisoryRow.id)
            .where(AdvisoryPackage.ecosystem == ecosystem, AdvisoryPackage.name.in_(wanted[start:start + 500])))
        for row in rows:
            found[row.id] = Advisory(row.id, row.modified, tuple(row.aliases), row.summary, row.severity,
                                     tuple(Affected.from_json(a) for a in row.affected))
    return [found[key] for key in sorted(found)]


async def advisory_count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(AdvisoryRow))).scalar_one())


async def save_statements(conn: AsyncConnection, statements: Iterable[Statement], now: datetime) -> int:
    """Store VEX statements (a newer statement for a vulnerability and product replaces the
    older one); how many were stored."""
    count = 0
    for statement in statements:
        await conn.execute(delete(VexStatement).where(VexStatement.vulnerability == statement.vulnerability,
                                                      VexStatement.product == statement.product))
        await conn.execute(insert(VexStatement).values(
            vulnerability=statement.vulnerability, product=statement.product, status=statement.status,
            justification=statement.justification, imported_at=now))
        count += 1
    return count


async def statements(conn: AsyncConnection) -> dict[tuple[str, str], tuple[str, str]]:
    """(vulnerability, product) -> (status, justification)."""
    rows = await conn.execute(select(VexStatement.vulnerability, VexStatement.product, VexStatement.status,
                                     VexStatement.justification))
    return {(v, p): (s, j) for v, p, s, j in rows}

"""Advisory and VEX queries. Each function runs inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import AdvisoryPackage, AdvisoryRow, KnownExploited, VexStatement
from edgefleet.vuln.osv import Advisory, Affected, base_ecosystem
from edgefleet.vuln.vex import Statement

IN_LIST = 500  # ids per IN list


@dataclass(frozen=True)
class KnownExploitedEntry:
    cve: str
    date_added: str
    alerted_at: datetime | None


def _in_batches(values: Iterable[str]) -> Iterator[list[str]]:
    """``values`` in bounded IN lists."""
    listed = list(values)
    for start in range(0, len(listed), IN_LIST):
        yield listed[start:start + IN_LIST]


async def modified_of(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, tuple[datetime, datetime]]:
    """When each of these advisories, if stored, was last modified and first imported."""
    found = {}
    for batch in _in_batches(ids):
        rows = await conn.execute(select(AdvisoryRow.id, AdvisoryRow.modified, AdvisoryRow.imported_at)
                                  .where(AdvisoryRow.id.in_(batch)))
        found.update({ident: (modified, imported) for ident, modified, imported in rows})
    return found


async def advisory_dates(conn: AsyncConnection, ids: Iterable[str]) -> tuple[datetime | None, datetime | None]:
    """The earliest first import and the earliest publication among these advisories."""
    imported: list[datetime] = []
    published: list[datetime] = []
    for batch in _in_batches(ids):
        for first, when in await conn.execute(select(AdvisoryRow.imported_at, AdvisoryRow.published)
                                              .where(AdvisoryRow.id.in_(batch))):
            imported.append(first)
            published += [when] if when is not None else []
    return min(imported, default=None), min(published, default=None)


async def save_advisories(conn: AsyncConnection, advisories: Sequence[tuple[Advisory, datetime | None]],
                          now: datetime) -> None:
    """Store (or replace) advisories and the packages they name, in a few statements.
    Each comes with when the advisory it replaces was first imported (None: a new one),
    which is kept: it is when the fleet learned of it."""
    for batch in _in_batches(advisory.id for advisory, first in advisories if first is not None):
        await conn.execute(delete(AdvisoryPackage).where(AdvisoryPackage.advisory_id.in_(batch)))
        await conn.execute(delete(AdvisoryRow).where(AdvisoryRow.id.in_(batch)))
    if not advisories:
        return
    await conn.execute(insert(AdvisoryRow), [
        {"id": a.id, "modified": a.modified, "severity": a.severity, "summary": a.summary, "aliases": list(a.aliases),
         "affected": [x.to_json() for x in a.affected], "imported_at": first or now, "published": a.published,
         "stored_at": now} for a, first in advisories])
    names = [{"ecosystem": ecosystem, "name": name, "advisory_id": a.id} for a, _ in advisories
             for ecosystem, name in sorted({(base_ecosystem(x.ecosystem), x.name) for x in a.affected})]
    if names:
        await conn.execute(insert(AdvisoryPackage), names)


async def advisories_naming(conn: AsyncConnection, ecosystem: str, names: Iterable[str]) -> list[Advisory]:
    """Every advisory that names one of ``names`` in ``ecosystem`` (without its release)."""
    found: dict[str, Advisory] = {}
    for batch in _in_batches(sorted(set(names))):
        rows = await conn.execute(
            select(AdvisoryRow.__table__).join(AdvisoryPackage, AdvisoryPackage.advisory_id == AdvisoryRow.id)
            .where(AdvisoryPackage.ecosystem == ecosystem, AdvisoryPackage.name.in_(batch)))
        for row in rows:
            found[row.id] = _advisory(row)
    return [found[key] for key in sorted(found)]


def _advisory(row: Any) -> Advisory:
    return Advisory(row.id, row.modified, tuple(row.aliases), row.summary, row.severity,
                    tuple(Affected.from_json(a) for a in row.affected), row.published)


async def save_exploited(conn: AsyncConnection, entries: Iterable[tuple[str, str, str]], now: datetime) -> int:
    """Store (cve, date added, note) entries of a KEV catalogue; how many were new."""
    known = {cve for (cve,) in await conn.execute(select(KnownExploited.cve))}
    fresh = [{"cve": cve, "date_added": added, "note": note, "imported_at": now, "alerted_at": None}
             for cve, added, note in entries if cve not in known]
    if fresh:
        await conn.execute(insert(KnownExploited), fresh)
    return len(fresh)


async def exploited(conn: AsyncConnection) -> dict[str, KnownExploitedEntry]:
    rows = await conn.execute(select(KnownExploited.cve, KnownExploited.date_added, KnownExploited.alerted_at))
    return {cve: KnownExploitedEntry(cve, added, alerted) for cve, added, alerted in rows}


async def mark_alerted(conn: AsyncConnection, cve: str, now: datetime) -> bool:
    """Mark ``cve``'s alert raised; False when another server did first."""
    done = await conn.execute(update(KnownExploited).where(KnownExploited.cve == cve,
                                                           KnownExploited.alerted_at.is_(None))
                              .values(alerted_at=now))
    return bool(done.rowcount)


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

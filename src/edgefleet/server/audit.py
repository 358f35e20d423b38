"""The audit log: every state-changing admin action and every security decision, as an
append-only, hash-chained row: who (the token's name, or the service that decided), what
(the route or decision), to what (device, rollout, token), from where (the client's
address), when, and what came of it (``ok`` or ``refused <status>``).

Each row's digest is an HMAC-SHA256, under the fleet's audit key
(``<data-dir>/keys/audit.key``, never in the database), of the previous row's digest and
this row's fields; rows are numbered without gaps. Whoever can write the database but not
read the key cannot alter, insert or delete a row without ``verify`` finding the first
broken link. (Removing the newest rows is seen only against a head kept elsewhere: the
verdict gives the head, for an operator to note.)

Admin requests are recorded by ``AuditTrail`` (an ASGI middleware: every POST, PUT,
PATCH and DELETE under /api/v1/admin and /ui, refused ones included, except those with no
valid credential at all, which are counted and logged but would let anyone fill the
table); services record their own decisions (enrollment, quarantine).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection
from starlette.types import ASGIApp, Receive, Scope, Send

from edgefleet.clock import Clock
from edgefleet.errors import StoreError
from edgefleet.protocol.v1 import AuditVerdict
from edgefleet.server.middleware import ResponseStatus
from edgefleet.store import Database
from edgefleet.store.audit import GENESIS, chain_page, insert_row, last_link

log = logging.getLogger("edgefleet.server.audit")

FIELDS = ("seq", "at", "actor", "source", "action", "subject", "outcome", "details", "prev")
AUDITED_PREFIXES = ("/api/v1/admin/", "/ui/")
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AuditLog:
    def __init__(self, db: Database, clock: Clock, key: bytes) -> None:
        self.db, self.clock, self.key = db, clock, key

    async def record(self, actor: str, action: str, *, subject: str | None = None, source: str | None = None,
                     outcome: str = "ok", details: Mapping[str, Any] | None = None) -> None:
        """Append one row after the newest. When the database fails the row is lost and an
        error is logged, naming it: an action already done is not undone for want of its
        row, and no caller has anything better to do."""
        fields = {"at": self.clock.now(), "actor": actor[:128], "source": source, "action": action[:128],
                  "subject": None if subject is None else subject[:256], "outcome": outcome[:32],
                  "details": json.loads(json.dumps(dict(details or {}), default=str))}
        for attempt in range(20):
            try:
                await self.db.write(self._append, fields)
                return
            except StoreError as exc:  # another process took the same seq first: chain after it
                if exc.code != "integrity_error" or attempt == 19:
                    log.error("audit row not written (%s %s on %s by %s): %s", action, outcome, subject, actor,
                              exc.message)
                    return

    def _append(self, conn: Connection, fields: dict[str, Any]) -> None:
        seq, prev = last_link(conn)
        values = {**fields, "seq": seq + 1, "prev": prev}
        values["digest"] = self.digest(values)
        insert_row(conn, values)

    def digest(self, values: Mapping[str, Any]) -> str:
        at = values["at"]
        body = {name: values[name] for name in FIELDS}
        body["at"] = at.astimezone(UTC).isoformat(timespec="microseconds") if isinstance(at, datetime) else at
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    async def verify(self, page: int = 1000) -> AuditVerdict:
        """Walk the whole chain: the first row deleted (a gap, or a ``prev`` that names
        another digest) or altered (its digest does not match its fields)."""
        expected_seq, prev, checked = 1, GENESIS, 0
        while True:
            async with self.db.transaction(readonly=True) as conn:
                rows = await chain_page(conn, expected_seq - 1, page)
            for row in rows:
                values = dict(row._mapping)
                problem = None
                if row.seq != expected_seq:
                    problem = f"rows {expected_seq} to {row.seq - 1} are missing"
                elif row.prev != prev:
                    problem = "its link to the previous row is broken (a row before it was removed or replaced)"
                elif not hmac.compare_digest(self.digest(values), row.digest):
                    problem = "its fields do not match its digest (altered)"
                if problem is not None:
                    return AuditVerdict(intact=False, rows=checked, first_bad_seq=expected_seq, reason=problem,
                                        head_seq=checked, head_digest=prev)
                checked, expected_seq, prev = checked + 1, row.seq + 1, row.digest
            if len(rows) < page:
                return AuditVerdict(intact=True, rows=checked, head_seq=checked, head_digest=prev)


class AuditTrail:
    """Records every state-changing admin request with its outcome (pure ASGI)."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app, self.audit = app, audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in CHANGES
                or not str(scope["path"]).startswith(AUDITED_PREFIXES)):
            await self.app(scope, receive, send)
            return
        status = ResponseStatus(send)
        try:
            await self.app(scope, receive, status)
        finally:
            await self._record(scope, status.code)

    async def _record(self, scope: Scope, status: int) -> None:
        principal = scope.get("state", {}).get("principal")
        if principal is None and status == 401:
            return  # no valid credential: logged and counted by the error handler, not stored
        route = scope.get("route")
        params = scope.get("path_params") or {}
        subject = (str(next(iter(params.values()))) if len(params) == 1
                   else ",".join(f"{k}={v}" for k, v in sorted(params.items())) or None)
        client = scope.get("client")
        await self.audit.record(
            getattr(principal, "name", "anonymous"), f"{scope['method']} {getattr(route, 'path', scope['path'])}",
            subject=subject, source=client[0] if client else None,
            outcome="ok" if status < 400 else f"refused {status}",
            details={"status": status, "token_id": getattr(principal, "token_id", None),
                     "role": str(getattr(principal, "role", "")) or None})

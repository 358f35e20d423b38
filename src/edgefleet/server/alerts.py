"""Alerts: a row in the database (so nothing is lost across restarts), a Prometheus
counter, and a JSON POST to every configured webhook, signed with HMAC-SHA256
(``X-Edgefleet-Signature: sha256=<hex>`` over the exact body), retried with exponential
backoff until the receiver answers 2xx (at most ``MAX_ATTEMPTS`` times)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.clock import Clock
from edgefleet.errors import StoreError
from edgefleet.server.metrics import Metrics
from edgefleet.server.settings import ServerSettings
from edgefleet.store import Database
from edgefleet.store.gitops import add_alert, due_alerts, mark_alert
from edgefleet.store.schema import Alert

log = logging.getLogger("edgefleet.server.alerts")
MAX_ATTEMPTS = 20
SIGNATURE_HEADER = "X-Edgefleet-Signature"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def alert_body(alert: Alert) -> bytes:
    return json.dumps({"id": alert.id, "kind": alert.kind, "subject": alert.subject, "message": alert.message,
                       "details": alert.details, "created_at": alert.created_at.isoformat()},
                      sort_keys=True).encode()


class Alerts:
    def __init__(self, settings: ServerSettings, db: Database, clock: Clock, metrics: Metrics) -> None:
        self.settings, self.db, self.clock, self.metrics = settings, db, clock, metrics
        self._wake = asyncio.Event()

    async def raise_alert(self, conn: AsyncConnection, kind: str, subject: str, message: str,
                          details: dict[str, Any]) -> None:
        """Record an alert in the caller's transaction; the caller calls ``wake`` after it
        commits, and delivery starts at once."""
        await add_alert(conn, kind, subject, message, details, self.clock.now())
        self.metrics.alerts.labels(kind).inc()
        log.warning("alert %s for %s: %s", kind, subject, message)

    def wake(self) -> None:
        self._wake.set()

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """One pass over undelivered alerts; returns how many were delivered."""
        async with self.db.transaction() as conn:
            alerts = await due_alerts(conn, self.clock.now())
        delivered = 0
        for alert in alerts:
            ok = await self._post(client, alert)
            attempts = alert.attempts + 1
            now = self.clock.now()
            backoff = timedelta(seconds=min(2 ** attempts, 3600))
            give_up = not ok and attempts >= MAX_ATTEMPTS
            async with self.db.transaction() as conn:
                await mark_alert(conn, alert.id, delivered=now if ok or give_up else None, attempts=attempts,
                                 next_attempt=now + backoff)
            if give_up:
                log.error("alert %d was not delivered after %d attempts; it stays in the database", alert.id,
                          attempts)
            delivered += ok
        return delivered

    async def _post(self, client: httpx.AsyncClient, alert: Alert) -> bool:
        if not self.settings.alert_webhooks:
            return True  # recorded and counted: nothing else to do
        body = alert_body(alert)
        headers = {"content-type": "application/json"}
        if self.settings.alert_webhook_secret:
            headers[SIGNATURE_HEADER] = signature(self.settings.alert_webhook_secret, body)
        ok = True
        for url in self.settings.alert_webhooks:
            try:
                response = await client.post(url, content=body, headers=headers)
                ok = ok and response.is_success
            except httpx.HTTPError as exc:
                log.warning("alert webhook %s failed: %s", url, exc)
                ok = False
        self.metrics.alert_deliveries.labels("ok" if ok else "failed").inc()
        return ok

    async def run(self, poll_seconds: float = 5.0) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                try:
                    await self.deliver_due(client)
                except StoreError as exc:
                    log.warning("alert delivery pass failed, will retry: %s", exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll_seconds)

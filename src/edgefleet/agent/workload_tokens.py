"""Workload tokens on the device: each workload's declared tokens (JWT-SVIDs, one per
audience), kept in ``<data>/<workload>/tokens/<path>`` for the workload to read.

A token is renewed at half its lifetime, as the server stated the lifetime (this device's
clock may be wrong), measured from before the request, so a slow answer only makes it
earlier. Renewing needs no new quote while the device's attestation is fresh. A token that
could not be renewed is removed when it expires, and every token is removed when the
device fails attestation or the server refuses it one: a workload reads a valid token or
none, never a stale one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import InvalidRequest, PersistError, ServerRefused, TransportError
from edgefleet.protocol.workloads import WorkloadSpec
from edgefleet.util.aio import pause
from edgefleet.util.atomic import atomic_write_bytes
from edgefleet.util.backoff import Backoff
from edgefleet.util.paths import contained
from edgefleet.web.device_client import DeviceTransport

log = logging.getLogger("edgefleet.agent")

IDLE_SECONDS = 3600.0  # nothing to renew: look again this late (or when woken)


@dataclass(frozen=True, order=True)
class WantedToken:
    workload: str
    path: str
    audience: str


@dataclass(frozen=True)
class _Held:
    renew_at: float  # monotonic
    expires_at: float  # monotonic


def wanted_tokens(specs: Iterable[WorkloadSpec]) -> set[WantedToken]:
    return {WantedToken(spec.name, token.path, token.audience)
            for spec in specs for token in getattr(spec, "tokens", [])}


class TokenKeeper:
    def __init__(self, data_dir: Path, monotonic: Callable[[], float], rng: random.Random,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0) -> None:
        self.data_dir = data_dir
        self._monotonic = monotonic
        self._wanted: set[WantedToken] = set()
        self._held: dict[WantedToken, _Held] = {}
        self._backoff = Backoff(backoff_initial, backoff_max, rng)
        self._retry_at = 0.0
        self.wake = asyncio.Event()  # the wanted tokens or the attestation changed

    def file(self, token: WantedToken) -> Path:
        return contained(self.data_dir, token.workload, "tokens", token.path)

    def want(self, tokens: set[WantedToken]) -> None:
        for gone in set(self._held) - tokens:
            self._drop(gone)
        for new in tokens - self._wanted - set(self._held):
            self._drop(new)  # a file left by an earlier run is of unknown age: none until renewed
        if tokens != self._wanted:
            self._wanted = tokens
            self._retry_at = 0.0
            self.wake.set()

    def drop_all(self) -> None:
        for token in list(self._held):
            self._drop(token)

    async def tick(self, transport: DeviceTransport, device_id: str, attested: bool | None) -> float:
        """One round: remove what expired, renew what is due; seconds until the next round."""
        now = self._monotonic()
        for token, held in list(self._held.items()):
            if held.expires_at <= now:
                log.warning("workload %s: token for %s expired unrenewed, removed", token.workload, token.audience)
                self._drop(token)
        if attested is False:
            self.drop_all()  # a device that failed its quote holds no token
        elif attested is True and now >= self._retry_at:
            try:
                failed = False
                for token in sorted(self._wanted):
                    current = self._held.get(token)
                    if current is None or self._monotonic() >= current.renew_at:
                        failed |= not await self._renew(transport, device_id, token)
                if failed:
                    self._retry_at = self._monotonic() + self._backoff.next_delay()
                else:
                    self._backoff.reset()
            except ServerRefused as exc:
                log.error("workload tokens refused, all removed: %s", exc)
                self.drop_all()
                self._retry_at = self._monotonic() + self._backoff.next_delay()
            except TransportError as exc:
                log.warning("workload tokens not renewed now: %s", exc)
                self._retry_at = self._monotonic() + self._backoff.next_delay()
        return self._next_round(renewing=attested is True)

    async def _renew(self, transport: DeviceTransport, device_id: str, token: WantedToken) -> bool:
        """Fetch and write one token; False if it cannot be kept here (an unsafe or full disk)."""
        asked = self._monotonic()
        issued = await transport.workload_token(device_id, token.workload, token.audience)
        lifetime = issued.expires_in_seconds
        try:
            await asyncio.to_thread(atomic_write_bytes, self.file(token), issued.token.encode(), mode=0o640)
        except (InvalidRequest, PersistError) as exc:
            log.error("workload %s: token not written: %s", token.workload, exc)
            self._drop(token)
            return False
        self._held[token] = _Held(asked + lifetime / 2, asked + lifetime)
        return True

    def _drop(self, token: WantedToken) -> None:
        self._held.pop(token, None)
        with contextlib.suppress(InvalidRequest, OSError):
            self.file(token).unlink(missing_ok=True)

    def _next_round(self, *, renewing: bool) -> float:
        now = self._monotonic()
        times = [held.expires_at for held in self._held.values()]
        if renewing and self._retry_at > now:
            times.append(self._retry_at)
        elif renewing:
            times += [held.renew_at for held in self._held.values()]
            if any(token not in self._held for token in self._wanted):
                times.append(now)
        return max(0.0, min(times, default=now + IDLE_SECONDS) - now)

    async def run(self, transport: DeviceTransport, device_id: str, attested: Callable[[], bool | None]) -> None:
        """Keep the tokens until cancelled."""
        while True:
            self.wake.clear()
            delay = await self.tick(transport, device_id, attested())
            await pause(self.wake, delay)

"""Remote sessions: the gate, the offers devices hear of in their check-ins, and the
pairing of the operator's WebSocket with the device's.

A session opens only to a device whose last quote passed and is fresh (whatever the
fleet's ``attestation_required``: a shell is more than configuration), that is not
quarantined, for an operator whose role and scope cover it. A quarantined device gets a
read-only logs session when the operator asks for one explicitly (forensics), and
nothing else. The device has the last word: its site's policy file can refuse a verb.
Every refusal, start and end is an audit row; shell sessions are recorded (asciicast v2)
whatever the operator asks.

Offers live in this process (``docs/architecture.md``: with several servers, the device's
check-in must reach the server the operator reached; see "Remote sessions")."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Gauge
from pydantic import ValidationError
from starlette.websockets import WebSocket

from edgefleet.clock import Clock
from edgefleet.errors import Forbidden, InvalidRequest, NotFound
from edgefleet.protocol.sessions import (
    CONNECT_SECONDS,
    CONTROL,
    LOOPBACK,
    MAX_OFFERS,
    Ended,
    Ready,
    Refused,
    SessionOffer,
    SessionOpened,
    SessionRequest,
)
from edgefleet.server.attestation import AttestationService
from edgefleet.server.audit import AuditLog
from edgefleet.server.longpoll import LongPolls
from edgefleet.server.recording import Recording, RecordingFailed, recording_path
from edgefleet.server.session_relay import Outcome, close_both, relay
from edgefleet.store import Database
from edgefleet.store.devices import device_auth, get_device

if TYPE_CHECKING:  # auth imports the server state, which holds these sessions
    from edgefleet.server.auth import AdminPrincipal

log = logging.getLogger("edgefleet.server.sessions")
REOFFER_SECONDS = 5.0  # an offer the device heard of but did not take is offered again after this


@dataclass
class Session:
    id: str
    device_id: str
    offer: SessionOffer
    operator: AdminPrincipal
    started_at: datetime
    connected: asyncio.Future[WebSocket] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    waiting: bool = False  # the operator is attached and waits for the device
    offered_at: float | None = None  # monotonic: when a check-in carried it
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def opened(self, attach_prefix: str) -> SessionOpened:
        """What the operator is answered: where to attach (``/api/v1/admin`` or the dashboard's ``/ui``)."""
        return SessionOpened(id=self.id, device_id=self.device_id, verb=self.offer.verb,
                             attach=f"{attach_prefix}/sessions/{self.id}/attach", recorded=self.offer.verb == "shell")


def _refused(code: str, reason: str) -> Forbidden:
    return Forbidden(reason, code=code)


class RemoteSessions:
    def __init__(self, db: Database, clock: Clock, attestation: AttestationService, long_polls: LongPolls,
                 audit: AuditLog, recordings: Path, bytes_per_second: float, relaying: Gauge) -> None:
        self.db, self.clock, self.attestation, self.long_polls = db, clock, attestation, long_polls
        self.audit, self.recordings, self.bytes_per_second = audit, recordings, bytes_per_second
        self._sessions: dict[str, Session] = {}
        self.relaying = relaying  # sessions relaying now

    async def open(self, who: AdminPrincipal, device_id: str, request: SessionRequest,
                   source: str | None) -> Session:
        """Gate a session; the session the operator may now attach to.

        Raises NotFound (no such device, or outside the operator's scope) or Forbidden
        (quarantined, attestation missing or stale, a forensic session that is not logs);
        each refusal is an audit row with its reason."""
        try:
            read_only = await self._gate(who, device_id, request)
        except (Forbidden, NotFound, InvalidRequest) as exc:
            await self.audit.record(who.name, f"session {request.verb}", subject=device_id, source=source,
                                    outcome="refused", details={"code": exc.code, "reason": exc.message})
            raise
        session_id = secrets.token_urlsafe(18)
        offer = SessionOffer(id=session_id, **request.model_dump(exclude={"forensic"}), read_only=read_only)
        session = Session(session_id, device_id, offer, who, self.clock.now())
        self._sessions[session.id] = session
        await self.audit.record(who.name, f"session {request.verb}", subject=device_id, source=source,
                                outcome="opened", details={"session": session.id, "read_only": read_only,
                                                           "recorded": request.verb == "shell",
                                                           **_details(request)})
        asyncio.get_running_loop().call_later(CONNECT_SECONDS * 2, self._expire, session.id)
        return session

    async def _gate(self, who: AdminPrincipal, device_id: str, request: SessionRequest) -> bool:
        """Whether the session must be read-only; raises what ``open`` documents."""
        if request.verb == "copy" and (request.path is None or request.direction is None
                                       or (request.direction == "put" and request.size is None)):
            raise InvalidRequest("a copy names the device's path, its direction and, to the device, its size",
                                 code="incomplete_copy")
        if request.verb == "forward" and (request.port is None or request.host not in LOOPBACK):
            raise _refused("not_loopback", f"a port-forward reaches a port on the device's loopback only "
                                           f"({', '.join(LOOPBACK)}), not {request.host}:{request.port}")
        async with self.db.transaction(readonly=True) as conn:
            row = await get_device(conn, device_id)
        if row is None or not who.sees(row.site, row.labels or {}):
            raise NotFound(f"device {device_id} not found")
        auth = await self.db.read(device_auth, device_id)
        if auth is None:
            raise NotFound(f"device {device_id} not found")
        if auth.quarantined:
            if request.verb == "logs" and request.forensic:
                return True
            what = "its logs, read-only, with --forensic" if request.verb == "logs" else (
                "only a read-only logs session (--forensic)")
            raise _refused("quarantined", f"{device_id} is quarantined after a failed attestation: "
                                          f"a {request.verb} session is refused; you may ask for {what}")
        if request.forensic:
            raise _refused("not_quarantined", "--forensic is for a quarantined device's logs only")
        if auth.attested_at is None:
            raise _refused("not_attested", f"{device_id} has never passed attestation: a remote session needs a "
                                           "fresh passing quote")
        if not self.attestation.fresh(auth):
            age = (self.clock.now() - auth.attested_at).total_seconds()
            raise _refused("attestation_stale", f"{device_id}'s last passing quote is {age:.0f} s old (limit "
                                                f"{self.attestation.settings.attestation_max_age_seconds:.0f} s): "
                                                "a remote session needs a fresh one")
        if auth.attested_release is None:
            raise _refused("unknown_release", f"{device_id} attested against no known release")
        return False

    def _expire(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None and not session.waiting and not session.connected.done():
            del self._sessions[session_id]  # opened and never attached

    def offers(self, device_id: str, *, read_only: bool = False) -> list[SessionOffer]:
        """The sessions the device should open now (a check-in's answer carries them);
        ``read_only``: only forensic ones (the check-in of a quarantined device)."""
        now = time.monotonic()
        found = []
        for session in self._sessions.values():
            if (session.device_id == device_id and session.waiting and not session.connected.done()
                    and (session.offer.read_only or not read_only)
                    and (session.offered_at is None or now - session.offered_at >= REOFFER_SECONDS)):
                session.offered_at = now
                found.append(session.offer)
                if len(found) == MAX_OFFERS:
                    break  # the rest wake the device's next check-in (they are pending)
        return found

    def pending(self, device_id: str) -> bool:
        """Whether a waiting check-in should answer now, to carry an offer."""
        return any(s.device_id == device_id and s.waiting and s.offered_at is None and not s.connected.done()
                   for s in self._sessions.values())

    async def attach_operator(self, session_id: str, who: AdminPrincipal, operator: WebSocket,
                              source: str | None) -> None:
        """Carry the session for its operator (the socket is accepted); returns when it ends."""
        session = self._sessions.get(session_id)
        if session is None or session.operator.token_id != who.token_id or session.waiting:
            await operator.close(4404, "no such session waiting for you")
            return
        session.waiting = True
        self.long_polls.notify(session.device_id)
        outcome = Outcome()
        try:
            try:
                device = await asyncio.wait_for(asyncio.shield(session.connected), CONNECT_SECONDS)
            except TimeoutError:
                outcome.ended_by = f"the device did not answer within {CONNECT_SECONDS:.0f} s (offline, or busy)"
                await operator.close(4408, outcome.ended_by[:120])
                return
            await self._carry(session, operator, device, outcome)
        finally:
            self._sessions.pop(session_id, None)
            session.done.set()
            await self.audit.record(who.name, f"session {session.offer.verb} ended", subject=session.device_id,
                                    source=source, outcome="refused" if outcome.refused else "ok",
                                    details=self._summary(session, outcome))

    async def _carry(self, session: Session, operator: WebSocket, device: WebSocket, outcome: Outcome) -> None:
        control = await _first_control(device)
        if isinstance(control, Refused):  # the site's policy, or the device cannot (a copy's file)
            outcome.refused, outcome.ended_by = control, f"the device refused: {control.reason}"
            await operator.send_text(control.model_dump_json())
            await close_both(operator, device, 1000, "refused by the device")
            return
        if control is None:
            outcome.ended_by = "the device's link dropped, or it did not begin the session as the protocol says"
            await close_both(operator, device, 1011, outcome.ended_by)
            return
        try:
            recording = self._recording(session)
        except RecordingFailed as exc:  # no shell goes unrecorded
            log.error("shell session %s on %s refused: %s", session.id, session.device_id, exc.message)
            outcome.ended_by = exc.message
            await operator.send_text(Ended(reason=exc.message).model_dump_json())
            await close_both(operator, device, 1011, "not recorded, so not opened")
            return
        await operator.send_text(control.model_dump_json())
        self.relaying.inc()
        try:
            found = await relay(operator, device, read_only=session.offer.read_only, recording=recording,
                                bytes_per_second=self.bytes_per_second)
        finally:
            self.relaying.dec()
        outcome.__dict__.update(found.__dict__)

    def _recording(self, session: Session) -> Recording | None:
        """A shell session's recording, made before the session begins. Raises RecordingFailed."""
        if session.offer.verb != "shell":
            return None
        return Recording(recording_path(self.recordings, session.id), cols=session.offer.cols,
                         rows=session.offer.rows, started=session.started_at,
                         title=f"{session.device_id}: {' '.join(session.offer.command) or 'shell'}")

    async def attach_device(self, device_id: str, session_id: str, device: WebSocket) -> None:
        """The device's side of a session it was offered (the socket is accepted)."""
        session = self._sessions.get(session_id)
        if session is None or session.device_id != device_id or not session.waiting or session.connected.done():
            await device.close(4404, "no such session offered to you")
            return
        session.connected.set_result(device)
        await session.done.wait()  # the operator's side relays; this socket lives until it ends

    def _summary(self, session: Session, outcome: Outcome) -> dict[str, Any]:
        ended = self.clock.now()
        return {"session": session.id, "verb": session.offer.verb, "started": session.started_at.isoformat(),
                "ended": ended.isoformat(), "seconds": round((ended - session.started_at).total_seconds(), 3),
                "bytes_in": outcome.bytes_in, "bytes_out": outcome.bytes_out, "exit_code": outcome.exit_code,
                "ended_by": outcome.ended_by, "read_only": session.offer.read_only,
                "refused": None if outcome.refused is None else outcome.refused.reason,
                "recorded": session.offer.verb == "shell" and outcome.refused is None}


def _details(request: SessionRequest) -> dict[str, Any]:
    wanted = {"shell": ("command",), "logs": ("unit", "since", "follow", "lines"), "forward": ("host", "port"),
              "copy": ("path", "direction", "size")}
    return {name: getattr(request, name) for name in wanted[request.verb]}


async def _first_control(device: WebSocket) -> Ready | Refused | None:
    """How the device begins a session: ready, or its refusal (None: anything else)."""
    first = await device.receive()
    text = first.get("text")
    if first["type"] == "websocket.disconnect" or text is None:
        return None
    try:
        control = CONTROL.validate_json(text)
    except ValidationError:
        return None
    return control if isinstance(control, Ready | Refused) else None

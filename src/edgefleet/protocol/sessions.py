"""Remote sessions (shell, logs, port-forward): what an operator asks for, what a device is
offered in its check-in, and the control messages of the channel.

The channel is a WebSocket the device opens outward, on its own mTLS identity, when its
check-in carries an offer; the server pairs it with the operator's. Binary frames carry
the stream (keystrokes or a forwarded connection's bytes one way, output the other); text
frames carry one JSON control message each (``Control``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, TypeAdapter

from edgefleet.protocol.base import Strict

Verb = Literal["shell", "logs", "forward", "copy"]
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
Word = Annotated[str, StringConstraints(max_length=4096)]
UnitName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9@._:-]{1,128}$")]
Since = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 :+._-]{1,40}$")]
DevicePath = Annotated[str, StringConstraints(max_length=4096, pattern=r"^/[^\x00]*$")]  # absolute, no NUL
Cols = Annotated[int, Field(ge=1, le=1000)]
Rows = Annotated[int, Field(ge=1, le=1000)]

# The device's local policy file (in the image): which verbs its site allows at all.
POLICY_FILE = "remote-access.json"
LOOPBACK = ("127.0.0.1", "::1", "localhost")  # where a port-forward may lead
MAX_COPY_BYTES = 64 * 1024 * 1024  # one file up or down (``edgefleet devices cp``)
MAX_FRAME_BYTES = 64 * 1024  # a stream frame; larger frames end the session
MAX_OFFERS = 16  # sessions one check-in answer offers (the rest in the next one, at once)
# A session whose device has not connected within this long is refused as unanswered.
CONNECT_SECONDS = 30.0


class SessionRequest(Strict):
    """What an operator asks for (``POST /api/v1/admin/devices/{id}/sessions``)."""

    verb: Verb
    command: Annotated[list[Word], Field(max_length=256)] = []  # shell: run this instead of a login shell
    cols: Cols = 80
    rows: Rows = 24
    unit: UnitName | None = None  # logs: one systemd unit
    since: Since | None = None  # logs: journalctl's --since
    follow: bool = False  # logs: keep streaming
    lines: Annotated[int, Field(ge=0, le=100_000)] = 200  # logs: how many lines back
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # forward: a port on the device's loopback
    host: Annotated[str, StringConstraints(max_length=253)] = "127.0.0.1"  # forward: loopback only
    path: DevicePath | None = None  # copy: the file on the device
    direction: Literal["get", "put"] | None = None  # copy: from the device, or to it
    size: Annotated[int, Field(ge=0, le=MAX_COPY_BYTES)] | None = None  # copy put: the bytes to come
    forensic: bool = False  # logs of a quarantined device, asked for explicitly


class SessionOffer(Strict):
    """A session the device is asked to open (in its check-in answer)."""

    id: SessionId
    verb: Verb
    command: list[Word] = []
    cols: Cols = 80
    rows: Rows = 24
    unit: UnitName | None = None
    since: Since | None = None
    follow: bool = False
    lines: int = 200
    port: int | None = None
    host: str = "127.0.0.1"
    path: str | None = None
    direction: Literal["get", "put"] | None = None
    size: int | None = None
    read_only: bool = False  # forensic: nothing the operator sends reaches the device


class SessionOpened(Strict):
    id: SessionId
    device_id: str
    verb: Verb
    attach: str  # the operator's WebSocket path
    recorded: bool


class Ready(Strict):
    type: Literal["ready"] = "ready"


class Refused(Strict):
    type: Literal["refused"] = "refused"
    code: Annotated[str, StringConstraints(max_length=64)]
    reason: Annotated[str, StringConstraints(max_length=1000)]


class Resize(Strict):
    type: Literal["resize"] = "resize"
    cols: Cols
    rows: Rows


class Eof(Strict):
    """The sender has nothing more to send (a forwarded connection's half-close)."""

    type: Literal["eof"] = "eof"


class Exit(Strict):
    type: Literal["exit"] = "exit"
    code: int


class Ended(Strict):
    """The server ends a session, saying why (the device's link dropped, a frame too large)."""

    type: Literal["ended"] = "ended"
    reason: Annotated[str, StringConstraints(max_length=1000)]


Control = Annotated[Ready | Refused | Resize | Eof | Exit | Ended, Field(discriminator="type")]
CONTROL: TypeAdapter[Ready | Refused | Resize | Eof | Exit | Ended] = TypeAdapter(Control)

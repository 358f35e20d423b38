"""The exceptions edgefleet raises, in two roots as in python-tuf.

    EdgefleetError
    ├── PeerError               the peer sent something we refuse (bad data or credentials)
    │   ├── InvalidRequest      malformed, wrongly typed or semantically invalid input
    │   ├── PayloadTooLarge     a body over the configured bound
    │   ├── Unauthenticated     no credentials, or credentials we do not accept
    │   ├── Forbidden           valid credentials, but not for this record or action
    │   ├── NotFound            the addressed record does not exist
    │   ├── Conflict            the change would violate uniqueness or current state
    │   ├── RateLimited         the caller exceeds its request rate (retry_after says when to come back)
    │   ├── ServerRefused       (agent side) the control plane answered 4xx
    │   └── UpdateRefused       (agent side) an update failed verification (TUF, Uptane checks)
    │       └── DeltaRefused    a delta, content index or piece is corrupt, truncated or for another base
    ├── TransportError          could not talk to the peer (network, TLS, timeout, 5xx)
    │   ├── Throttled           (agent side) the server asked to slow down (429, 503 with Retry-After)
    │   └── BadAnswer           the peer answered with a malformed or truncated body (retry, as for a 5xx)
    ├── StoreError              the database failed (SQLAlchemy errors are translated at the adapter)
    ├── PersistError            local durable state could not be written (full disk, permissions)
    ├── InstallError            (agent side) an image could not be written to a slot, or does not verify there
    ├── BuildError              an OS image could not be built (a builder tool is missing or failed)
    └── ConfigError             settings or on-disk key material are missing or invalid

Every error carries a stable machine-readable ``code``. How an error is shown (HTTP status,
CLI exit) is decided by the layer that shows it, never here. Messages for authentication
failures are deliberately vague; the operator's log carries the exact reason.
"""

from __future__ import annotations

import json

__all__ = [
    "BadAnswer",
    "BuildError",
    "ConfigError",
    "Conflict",
    "DeltaRefused",
    "EdgefleetError",
    "Forbidden",
    "InstallError",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PeerError",
    "PersistError",
    "RateLimited",
    "ServerRefused",
    "StoreError",
    "Throttled",
    "TransportError",
    "Unauthenticated",
    "UpdateRefused",
]


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class PeerError(EdgefleetError):
    """The peer sent data or credentials that we refuse."""

    code = "bad_request"


class InvalidRequest(PeerError):
    code = "invalid_request"


class PayloadTooLarge(PeerError):
    code = "payload_too_large"


class Unauthenticated(PeerError):
    code = "unauthenticated"


class Forbidden(PeerError):
    code = "forbidden"


class NotFound(PeerError):
    code = "not_found"


class Conflict(PeerError):
    code = "conflict"


class RateLimited(PeerError):
    """The caller sends more requests than its limit allows; ``retry_after`` seconds from
    now one more is admitted."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerRefused(PeerError):
    """The control plane answered a device or CLI request with a 4xx."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server refused ({status} {code}): {message}", code=code)
        self.status = status

    @classmethod
    def from_body(cls, status: int, body: bytes) -> ServerRefused:
        """Read the server's ``{"error": {"code", "message"}}`` body, or quote it if it is not one."""
        try:
            error = json.loads(body)["error"]
            message = str(error["message"])
            details = [f"{'.'.join(str(part) for part in d.get('loc', ()))}: {d.get('msg', '')}"
                       for d in error.get("details") or [] if isinstance(d, dict)]
            if details:  # which field, and why (a validation refusal)
                more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
                message += ": " + "; ".join(details[:5]) + more
            return cls(status, str(error["code"]), message)
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(status, "http_error", body[:200].decode("utf-8", "replace"))


class UpdateRefused(PeerError):
    """The repository, the director or a mirror sent something that does not verify; the
    device keeps what it runs and reports this code to the server."""

    code = "update_refused"


class DeltaRefused(UpdateRefused):
    """A delta, content index or piece does not apply: corrupt, truncated, over its bounds,
    or made for another base. The device falls back to the next way of getting the image."""

    code = "delta_refused"


class TransportError(EdgefleetError):
    """Could not talk to the peer: connection, TLS, timeout, or a 5xx answer."""

    code = "transport_error"


class Throttled(TransportError):
    """The server asked us to slow down (429, or 503 with Retry-After): retry, but not
    before ``retry_after`` seconds."""

    code = "throttled"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadAnswer(TransportError):
    """The peer answered, but with nothing we can understand (a malformed, truncated or
    unexpected body): a proxy's error page, a half-written reply. Retry after a backoff, as
    for a 5xx; it is the peer's fault, not a refusal of ours."""

    code = "bad_response"


class StoreError(EdgefleetError):
    code = "store_error"


class PersistError(EdgefleetError):
    code = "persist_error"


class InstallError(EdgefleetError):
    """Writing an image into the inactive slot failed, or the slot does not hash to it."""

    code = "install_failed"


class BuildError(EdgefleetError):
    """An OS image could not be built: a builder tool is missing, failed, or produced
    something that does not check out."""

    code = "build_failed"


class ConfigError(EdgefleetError):
    code = "config_error"

"""Bearer secrets: bootstrap tokens (single-use device enrollment) and admin tokens (roles).

A token reads ``<prefix>_<id>_<secret>``: the id finds the row, the secret is only ever
stored as its SHA-256 (it has 256 bits of entropy, so a slow hash adds nothing).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from edgefleet.errors import Unauthenticated

__all__ = ["ParsedToken", "Role", "TokenKind", "authorization_url", "new_token", "parse_token", "pkce_challenge",
           "secret_matches"]


class TokenKind(enum.StrEnum):
    BOOTSTRAP = "efb"
    ADMIN = "efa"


class Role(enum.StrEnum):
    """Admin roles, each including the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_TOKEN = re.compile(r"^(efb|efa)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ParsedToken:
    kind: TokenKind
    id: str
    secret: str

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(kind: TokenKind) -> tuple[str, ParsedToken]:
    """A fresh token string and its parts."""
    parsed = ParsedToken(kind, secrets.token_hex(8), secrets.token_urlsafe(32))
    return f"{kind.value}_{parsed.id}_{parsed.secret}", parsed


def parse_token(kind: TokenKind, token: str) -> ParsedToken:
    """Raises Unauthenticated for anything that is not a well-formed token of ``kind``."""
    match = _TOKEN.match(token)
    if match is None or match.group(1) != kind.value:
        raise Unauthenticated("malformed token", code="invalid_token")
    return ParsedToken(kind, match.group(2), match.group(3))


def secret_matches(parsed: ParsedToken, stored_hash: str) -> bool:
    return hmac.compare_digest(parsed.secret_hash, stored_hash)


def pkce_challenge(verifier: str) -> str:
    """The PKCE S256 code challenge of ``verifier`` (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorization_url(endpoint: str, *, client_id: str, redirect_uri: str, scope: str, state: str, nonce: str,
                      verifier: str) -> str:
    """An OpenID Connect authorization request: the code flow with PKCE (S256), ``state``
    binding the answer to this browser and ``nonce`` binding the ID token to this sign-in."""
    from urllib.parse import urlencode

    return endpoint + "?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
        "state": state, "nonce": nonce, "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"})

"""Operator sign-in through an OpenID Connect provider (``settings.oidc``).

The dashboard runs the authorization code flow with PKCE (S256), a ``state`` bound to the
browser and a ``nonce`` bound to the ID token; the CLI runs the same flow from a loopback
redirect (RFC 8252) and hands the ID token to the control plane (an RFC 8693 token
exchange). Either way the ID token is verified here (the provider's keys from its
discovery document, issuer, audience, expiry, nonce where one was sent), the groups it
carries are mapped to a role and perhaps a scope, and the operator gets a short-lived
admin token of that role: from then on they are an operator like any other (listed,
revocable, audited).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import jwt

from edgefleet.credentials import Role, TokenKind, authorization_url, new_token
from edgefleet.errors import Forbidden, TransportError, Unauthenticated
from edgefleet.protocol.scope import Scope, parse_scope
from edgefleet.server.settings import OidcSettings
from edgefleet.store import Database
from edgefleet.store.tokens import insert_admin
from edgefleet.web.tls import tls_context

log = logging.getLogger("edgefleet.server.oidc")

DISCOVERY_SECONDS = 3600.0
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_SECONDS = 30
MAX_ID_TOKEN = 16 * 1024


@dataclass(frozen=True)
class Pending:
    """What the browser holds between leaving for the provider and coming back."""

    state: str
    nonce: str
    verifier: str

    def encode(self) -> str:
        return ".".join((self.state, self.nonce, self.verifier))

    @classmethod
    def decode(cls, text: str) -> Pending | None:
        parts = text.split(".")
        return cls(*parts) if len(parts) == 3 and all(0 < len(p) <= 128 for p in parts) else None


@dataclass(frozen=True)
class Grant:
    """Who signed in, and as what."""

    name: str
    role: Role
    scope: Scope | None
    group: str


def _refused(message: str) -> Unauthenticated:
    return Unauthenticated(message, code="oidc_refused")


class OidcSignIn:
    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._configuration: tuple[float, dict[str, Any]] | None = None
        self._keys: dict[str, jwt.PyJWK] = {}

    def _client(self) -> httpx.AsyncClient:
        ca_file = self.settings.ca_file
        return httpx.AsyncClient(timeout=10.0, verify=True if ca_file is None else tls_context(ca_file))

    async def configuration(self) -> dict[str, Any]:
        """The provider's discovery document (kept an hour), checked to name our issuer."""
        kept = self._configuration
        if kept is not None and time.monotonic() - kept[0] < DISCOVERY_SECONDS:
            return kept[1]
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        if document.get("issuer") != self.settings.issuer:
            raise _refused(f"the provider at {url} names issuer {document.get('issuer')!r}, "
                           f"not {self.settings.issuer!r}")
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(field), str):
                raise _refused(f"the provider's discovery document has no {field}")
        self._configuration = (time.monotonic(), document)
        return document

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request to the provider. Raises TransportError when it cannot be reached."""
        try:
            async with self._client() as client:
                return await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise TransportError(f"OIDC provider {url}: {exc}") from exc

    async def _get_json(self, url: str) -> dict[str, Any]:
        answer = await self._send("GET", url)
        if answer.status_code != 200:
            raise _refused(f"OIDC provider {url} answered {answer.status_code}")
        try:
            document = answer.json()
        except ValueError as exc:
            raise _refused(f"OIDC provider {url} answered with something that is not JSON") from exc
        if not isinstance(document, dict):
            raise _refused(f"OIDC provider {url} answered with something that is not a JSON object")
        return document

    async def start(self, redirect_uri: str) -> tuple[str, Pending]:
        """Where to send the browser, and what it must bring back."""
        configuration = await self.configuration()
        pending = Pending(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48))
        return authorization_url(configuration["authorization_endpoint"], client_id=self.settings.client_id,
                                 redirect_uri=redirect_uri, scope=self.settings.request_scope, state=pending.state,
                                 nonce=pending.nonce, verifier=pending.verifier), pending

    async def finish(self, pending: Pending, state: str, code: str, redirect_uri: str) -> Grant:
        """The browser came back with ``code``: redeem it, verify the ID token, map it."""
        if not hmac.compare_digest(pending.state.encode(), state.encode()):
            raise _refused("the sign-in's state does not match this browser's (started elsewhere, or replayed)")
        configuration = await self.configuration()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": pending.verifier, "client_id": self.settings.client_id}
        secret = self.settings.client_secret
        # A public client has no secret: PKCE alone binds the code to this sign-in.
        auth = {} if secret is None else {"auth": httpx.BasicAuth(self.settings.client_id, secret)}
        answer = await self._send("POST", configuration["token_endpoint"], data=form, **auth)
        if answer.status_code != 200:
            raise _refused(f"the provider refused the code ({answer.status_code}: {answer.text[:200]})")
        try:
            body = answer.json()
        except ValueError:
            body = None
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str):
            raise _refused("the provider's token answer carries no ID token")
        claims = await self.verify_id_token(id_token, self.settings.client_id, nonce=pending.nonce)
        return self.grant(claims)

    async def verify_id_token(self, token: str, audience: str, *, nonce: str | None = None) -> dict[str, Any]:
        """The claims of an ID token this provider signed for ``audience``, unexpired (and
        carrying ``nonce`` when one was sent). Raises Unauthenticated (``oidc_refused``)."""
        if len(token) > MAX_ID_TOKEN:
            raise _refused(f"an ID token of {len(token)} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _refused(f"not an ID token: {exc}") from exc
        if header.get("alg") not in ALGORITHMS:
            raise _refused(f"ID token algorithm {header.get('alg')!r} is not accepted")
        key = await self._key(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[str(header["alg"])], audience=audience, issuer=self.settings.issuer,
                leeway=LEEWAY_SECONDS, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            raise _refused(f"ID token refused: {exc}") from exc
        if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise _refused("the ID token's nonce is not this sign-in's")
        return claims

    async def _key(self, kid: str) -> jwt.PyJWK:
        """The provider's signing key ``kid`` (its key set is read again once for a kid it
        does not know yet: keys rotate)."""
        if kid not in self._keys:
            document = await self._get_json((await self.configuration())["jwks_uri"])
            try:
                keys = jwt.PyJWKSet.from_dict(document).keys
            except jwt.PyJWTError as exc:
                raise _refused(f"the provider's key set cannot be read: {exc}") from exc
            self._keys = {str(k.key_id): k for k in keys if k.key_id}
        found = self._keys.get(kid)
        if found is None:
            raise _refused(f"the provider has no key {kid!r}")
        return found

    def grant(self, claims: dict[str, Any]) -> Grant:
        """The role (and scope) the ID token's groups map to: the highest role, a group of
        the whole fleet before a scoped one. Raises Forbidden (``oidc_no_role``)."""
        groups = claims.get(self.settings.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        who = str(claims.get("email") or claims["sub"])
        mapped = sorted((-Role(self.settings.roles[g]).rank, g in self.settings.scopes, g)
                        for g in groups if isinstance(g, str) and g in self.settings.roles)
        if not mapped:
            raise Forbidden(f"{who} signed in, but none of their groups {groups} has a role here", code="oidc_no_role")
        group = mapped[0][2]
        scope = self.settings.scopes.get(group)
        return Grant(f"oidc:{who}", Role(self.settings.roles[group]), None if scope is None else parse_scope(scope),
                     group)

    async def mint(self, db: Database, grant: Grant, now: datetime) -> tuple[str, datetime]:
        """An admin token for this sign-in (shown once): (token, when it expires)."""
        text, token = new_token(TokenKind.ADMIN)
        expires_at = now + timedelta(hours=self.settings.session_hours)
        async with db.transaction() as conn:
            await insert_admin(conn, token, name=grant.name, role=grant.role, now=now, expires_at=expires_at,
                               scope=None if grant.scope is None else str(grant.scope))
        log.info("%s signed in through %s as %s%s (group %s)", grant.name, self.settings.issuer, grant.role,
                 f" within {grant.scope}" if grant.scope else "", grant.group)
        return text, expires_at

"""``edgefleet login --oidc``: sign in at the control plane's OpenID Connect provider from
the command line (RFC 8252: the authorization code flow with PKCE, the browser sent back
to a loopback port this process listens on), then exchange the ID token at the control
plane for an admin token (RFC 8693)."""

from __future__ import annotations

import http.server
import secrets
import sys
import threading
import webbrowser
from typing import Any, cast
from urllib.parse import parse_qs, urlparse

import httpx

from edgefleet.client import AdminClient
from edgefleet.credentials import authorization_url
from edgefleet.errors import TransportError, Unauthenticated
from edgefleet.protocol.v1 import TokenExchanged


class _Loopback(http.server.HTTPServer):
    """Listens on a loopback port for the one redirect the provider sends the browser to."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Callback)
        self.received: dict[str, str] = {}
        self.arrived = threading.Event()


class _Callback(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path != "/callback":
            self.send_error(404)
            return
        loopback = cast(_Loopback, self.server)
        loopback.received.update({k: v[0] for k, v in parse_qs(url.query).items()})
        body = b"<!doctype html><title>edgefleet</title><p>Signed in: you can close this window."
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        loopback.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def sign_in(client: AdminClient, *, open_browser: bool, timeout: float = 300.0) -> TokenExchanged:
    """Raises Unauthenticated (``oidc_refused``: the provider refused, or answered for
    another sign-in), ServerRefused (the control plane refused), TransportError."""
    info = client.oidc_info()
    try:
        configuration = httpx.get(info.issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TransportError(f"cannot read the OpenID Connect provider {info.issuer}: {exc}") from exc
    server = _Loopback()
    redirect_uri = f"http://127.0.0.1:{server.server_port}/callback"
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    url = authorization_url(str(configuration["authorization_endpoint"]), client_id=info.client_id,
                            redirect_uri=redirect_uri, scope=info.scope, state=state, nonce=nonce, verifier=verifier)
    thread = threading.Thread(target=server.serve_forever, name="oidc-callback", daemon=True)
    thread.start()
    try:
        print(f"sign in at: {url}", file=sys.stderr, flush=True)
        if open_browser:
            webbrowser.open(url)
        if not server.arrived.wait(timeout):
            raise TransportError(f"no sign-in came back within {timeout:.0f} s")
    finally:
        server.shutdown()
        server.server_close()
    received = server.received
    if "error" in received:
        raise _refused(f"the provider refused the sign-in: {received['error']}")
    if received.get("state") != state or "code" not in received:
        raise _refused("the provider's answer does not belong to this sign-in")
    try:
        answer = httpx.post(str(configuration["token_endpoint"]), timeout=10, data={
            "grant_type": "authorization_code", "code": received["code"], "redirect_uri": redirect_uri,
            "code_verifier": verifier, "client_id": info.client_id})
        body = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        raise TransportError(f"the provider's token endpoint: {exc}") from exc
    id_token = body.get("id_token") if isinstance(body, dict) else None
    if not isinstance(id_token, str):
        raise _refused(f"the provider gave no ID token ({answer.status_code})")
    # The nonce is checked here and the token's signature and audience at the control plane.
    claims = _unverified_claims(id_token)
    if claims.get("nonce") != nonce:
        raise _refused("the ID token's nonce is not this sign-in's")
    return client.exchange_id_token(id_token)


def _refused(message: str) -> Unauthenticated:
    return Unauthenticated(message, code="oidc_refused")


def _unverified_claims(token: str) -> dict[str, Any]:
    import jwt

    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _refused(f"the provider's ID token cannot be read: {exc}") from exc
    return claims

"""How edgefleet's HTTP clients (agent transport, admin client) read a response status."""

from __future__ import annotations

import httpx

from edgefleet.errors import ServerRefused, TransportError


def checked(response: httpx.Response, method: str, path: str) -> httpx.Response:
    """Return ``response`` if it succeeded.

    Raises:
        TransportError: 5xx, the server failed (worth retrying).
        ServerRefused: 4xx, the server refused the request (retrying will not help).
    """
    if response.status_code >= 500:
        raise TransportError(f"{method} {path}: server error {response.status_code}")
    if response.status_code >= 400:
        raise ServerRefused.from_body(response.status_code, response.content)
    return response

"""How edgefleet's HTTP clients (device client, admin client) read a response status."""

from __future__ import annotations

import httpx

from edgefleet.errors import ServerRefused, Throttled, TransportError


def retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (the delta form), None when absent or a date."""
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def checked(response: httpx.Response, method: str, path: str) -> httpx.Response:
    """Return ``response`` if it succeeded.

    Raises:
        Throttled: 429, or 503 with Retry-After: retry, after the delay the server asked for.
        TransportError: 5xx, the server failed (worth retrying).
        ServerRefused: 4xx, the server refused the request (retrying will not help).
    """
    wait = retry_after(response)
    if response.status_code == 429 or (response.status_code == 503 and wait is not None):
        raise Throttled(f"{method} {path}: server asks to slow down ({response.status_code})",
                        retry_after=wait if wait is not None else 1.0)
    if response.status_code >= 500:
        raise TransportError(f"{method} {path}: server error {response.status_code}")
    if response.status_code >= 400:
        raise ServerRefused.from_body(response.status_code, response.content)
    return response

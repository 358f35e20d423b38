"""A Python client for the admin API (used by the CLI and the demo)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from edgefleet.errors import InvalidRequest, ServerRefused, TransportError
from edgefleet.protocol.v1 import BootstrapTokenCreated, DesiredState, DeviceList, DeviceView

__all__ = ["AdminClient"]


class AdminClient:
    """Raises TransportError (cannot reach the server, 5xx) or ServerRefused (4xx)."""

    def __init__(self, server_url: str, token: str, ca_file: Path, *, timeout: float = 10.0) -> None:
        self._client = httpx.Client(
            base_url=server_url.rstrip("/"),
            verify=ssl.create_default_context(cafile=str(ca_file)),
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def _call(self, method: str, path: str, model: type[Any] | None = None, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach {self._client.base_url}: {exc}") from exc
        if response.status_code >= 500:
            raise TransportError(f"{method} {path}: server error {response.status_code}")
        if response.status_code >= 400:
            raise ServerRefused.from_body(response.status_code, response.content)
        if model is None:
            return None
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise InvalidRequest(f"unexpected answer from server: {exc}", code="bad_response") from exc

    def devices(self, *, site: str | None = None, limit: int = 1000, offset: int = 0) -> DeviceList:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if site:
            params["site"] = site
        result: DeviceList = self._call("GET", "/api/v1/admin/devices", DeviceList, params=params)
        return result

    def device(self, device_id: str) -> DeviceView:
        result: DeviceView = self._call("GET", f"/api/v1/admin/devices/{device_id}", DeviceView)
        return result

    def set_desired(self, device_id: str, document: dict[str, Any]) -> DesiredState:
        result: DesiredState = self._call(
            "PUT", f"/api/v1/admin/devices/{device_id}/desired", DesiredState, json={"document": document}
        )
        return result

    def decommission(self, device_id: str) -> None:
        self._call("DELETE", f"/api/v1/admin/devices/{device_id}")

    def create_bootstrap_token(self, site: str, labels: dict[str, str], ttl_seconds: int) -> BootstrapTokenCreated:
        result: BootstrapTokenCreated = self._call(
            "POST", "/api/v1/admin/bootstrap-tokens", BootstrapTokenCreated,
            json={"site": site, "labels": labels, "ttl_seconds": ttl_seconds},
        )
        return result

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A Python client for the admin API (used by the CLI and the demo)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from pydantic import RootModel, ValidationError

from edgefleet.errors import BadAnswer, ServerRefused, TransportError
from edgefleet.protocol.sessions import SessionOpened, SessionRequest
from edgefleet.protocol.v1 import (
    ID_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    AdminTokenList,
    AdvisoryImport,
    ApprovalList,
    ApprovalView,
    AssignmentView,
    BootstrapTokenCreated,
    BootstrapTokenList,
    CveReport,
    DesiredState,
    DeviceList,
    DeviceView,
    ExploitedImport,
    OidcInfo,
    RevokeResult,
    TokenExchanged,
    UpdateHistory,
    VexImport,
    VulnerabilityReport,
    VulnerabilitySummary,
)
from edgefleet.util.http import checked
from edgefleet.web.tls import tls_context

__all__ = ["AdminClient"]


class _Json(RootModel[dict[str, Any]]):
    """An untyped JSON object answer."""


def _chunks(handle: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


class AdminClient:
    """Raises TransportError (cannot reach the server, 5xx) or ServerRefused (4xx)."""

    def __init__(self, server_url: str, token: str, ca_file: Path, *, timeout: float = 10.0) -> None:
        self._client = httpx.Client(
            base_url=server_url.rstrip("/"),
            verify=tls_context(ca_file),
            headers={"authorization": f"Bearer {token}"} if token else {},  # none: the sign-in routes
            timeout=timeout,
        )

    def _response(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach {self._client.base_url}: {exc}") from exc
        return checked(response, method, path)

    def _call(self, method: str, path: str, model: type[Any] | None = None, **kwargs: Any) -> Any:
        response = self._response(method, path, **kwargs)
        if model is None:
            return None
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise BadAnswer(f"unexpected answer from server: {exc}") from exc

    def oidc_info(self) -> OidcInfo:
        """Where operators of this control plane sign in (no token needed)."""
        info: OidcInfo = self._call("GET", "/api/v1/auth/oidc", OidcInfo)
        return info

    def exchange_id_token(self, id_token: str) -> TokenExchanged:
        """An admin token for the operator an ID token of the provider names (no token needed)."""
        exchanged: TokenExchanged = self._call("POST", "/api/v1/auth/oidc/token", TokenExchanged, data={
            "grant_type": TOKEN_EXCHANGE, "subject_token": id_token, "subject_token_type": ID_TOKEN_TYPE})
        return exchanged

    def devices(self, *, site: str | None = None, limit: int = 1000, offset: int = 0, kind: str = "device",
                selector: str | None = None, search: str | None = None) -> DeviceList:
        params: dict[str, Any] = {"limit": limit, "offset": offset, "kind": kind}
        if selector:
            params["selector"] = selector
        if search:
            params["q"] = search
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

    def approvals(self, state: str = "pending") -> ApprovalList:
        result: ApprovalList = self._call("GET", "/api/v1/admin/approvals", ApprovalList,
                                            params={"state": state})
        return result

    def decide_approval(self, device_id: str, *, approve: bool, fingerprint: str | None = None) -> ApprovalView:
        verb = "approve" if approve else "reject"
        result: ApprovalView = self._call("POST", f"/api/v1/admin/devices/{device_id}/{verb}", ApprovalView,
                                            json={"fingerprint": fingerprint})
        return result

    def revoke(self, device_id: str, reason: str) -> RevokeResult:
        result: RevokeResult = self._call("POST", f"/api/v1/admin/devices/{device_id}/revoke", RevokeResult,
                                          json={"reason": reason})
        return result

    def open_session(self, device_id: str, request: SessionRequest) -> SessionOpened:
        """A remote session the gate let through (attach to its channel next)."""
        opened: SessionOpened = self._call("POST", f"/api/v1/admin/devices/{device_id}/sessions", SessionOpened,
                                           json=request.model_dump(mode="json"))
        return opened

    def session_recording(self, session_id: str) -> bytes:
        """A shell session's asciicast v2 recording."""
        return self._response("GET", f"/api/v1/admin/sessions/{session_id}/recording").content

    def release_quarantine(self, device_id: str) -> None:
        self._call("POST", f"/api/v1/admin/devices/{device_id}/release-quarantine")

    def create_bootstrap_token(self, site: str, labels: dict[str, str], ttl_seconds: int, *,
                               kind: str = "device") -> BootstrapTokenCreated:
        result: BootstrapTokenCreated = self._call(
            "POST", "/api/v1/admin/bootstrap-tokens", BootstrapTokenCreated,
            json={"site": site, "labels": labels, "ttl_seconds": ttl_seconds, "kind": kind},
        )
        return result

    def bootstrap_tokens(self, *, limit: int = 1000, offset: int = 0) -> BootstrapTokenList:
        result: BootstrapTokenList = self._call("GET", "/api/v1/admin/bootstrap-tokens", BootstrapTokenList,
                                                params={"limit": limit, "offset": offset})
        return result

    def revoke_bootstrap_token(self, token_id: str) -> None:
        self._call("DELETE", f"/api/v1/admin/bootstrap-tokens/{token_id}")

    def admin_tokens(self) -> AdminTokenList:
        result: AdminTokenList = self._call("GET", "/api/v1/admin/admin-tokens", AdminTokenList)
        return result

    def revoke_admin_token(self, token_id: str) -> None:
        self._call("DELETE", f"/api/v1/admin/admin-tokens/{token_id}")

    # signed releases
    def put_root(self, which: str, data: bytes) -> int:
        result = self._call("PUT", f"/api/v1/admin/repository/roots/{which}", _Json, content=data)
        return int(result.root["version"])

    def has_blob(self, sha256: str) -> bool:
        try:
            response = self._client.head(f"/api/v1/admin/repository/blobs/{sha256}")
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach {self._client.base_url}: {exc}") from exc
        if response.status_code in (200, 404):
            return response.status_code == 200
        raise ServerRefused(response.status_code, "http_error", f"HEAD blob answered {response.status_code}")

    def put_blob(self, sha256: str, path: Path) -> None:
        with open(path, "rb") as handle:
            self._call("PUT", f"/api/v1/admin/repository/blobs/{sha256}", content=_chunks(handle),
                       timeout=httpx.Timeout(30, read=600))

    def missing_pieces(self, namespace: str, ids: list[str]) -> tuple[list[str], bool]:
        """The pieces of ``ids`` the server lacks, and whether it has the namespace's dictionary."""
        result = self._call("POST", f"/api/v1/admin/repository/pieces/{namespace}/missing", _Json,
                            json={"ids": ids})
        return [str(i) for i in result.root["missing"]], bool(result.root["dictionary"])

    def put_dictionary(self, namespace: str, data: bytes) -> None:
        self._call("PUT", f"/api/v1/admin/repository/pieces/{namespace}/dictionary", _Json, content=data)

    def put_pieces(self, namespace: str, records: Iterable[bytes]) -> int:
        result = self._call("PUT", f"/api/v1/admin/repository/pieces/{namespace}", _Json, content=iter(records),
                            timeout=httpx.Timeout(30, read=600))
        return int(result.root["stored"])

    def put_targets(self, data: bytes) -> int:
        result = self._call("PUT", "/api/v1/admin/repository/targets", _Json, content=data)
        return int(result.root["snapshot_version"])

    def import_advisories(self, batch: bytes) -> AdvisoryImport:
        """``batch``: a JSON list of OSV advisories, already encoded."""
        result: AdvisoryImport = self._call("POST", "/api/v1/admin/vulnerabilities/advisories", AdvisoryImport,
                                            content=batch, headers={"content-type": "application/json"})
        return result

    def import_vex(self, document: bytes) -> VexImport:
        result: VexImport = self._call("POST", "/api/v1/admin/vulnerabilities/vex", VexImport, content=document,
                                       headers={"content-type": "application/json"})
        return result

    def import_exploited(self, catalogue: bytes) -> ExploitedImport:
        """A KEV catalogue (JSON), already encoded."""
        result: ExploitedImport = self._call("POST", "/api/v1/admin/vulnerabilities/exploited", ExploitedImport,
                                             content=catalogue, headers={"content-type": "application/json"})
        return result

    def vulnerability_summary(self) -> VulnerabilitySummary:
        result: VulnerabilitySummary = self._call("GET", "/api/v1/admin/vulnerabilities/summary",
                                                  VulnerabilitySummary, params={"limit": 10_000})
        return result

    def cve_report(self, cve: str) -> CveReport:
        result: CveReport = self._call("GET", "/api/v1/admin/vulnerabilities/report", CveReport,
                                       params={"cve": cve})
        return result

    def vulnerabilities(self, **query: str) -> VulnerabilityReport:
        """``release=``, ``device=`` or ``cve=`` (exactly one)."""
        result: VulnerabilityReport = self._call("GET", "/api/v1/admin/vulnerabilities", VulnerabilityReport,
                                                 params={**query, "limit": 10_000})
        return result

    def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """An admin API call whose answer is shown as it is (the CLI's GitOps views)."""
        result: _Json = self._call(method, path, _Json, **kwargs)
        return result.root

    def update_history(self, device_id: str, limit: int = 100) -> UpdateHistory:
        result: UpdateHistory = self._call("GET", f"/api/v1/admin/devices/{device_id}/updates", UpdateHistory,
                                           params={"limit": limit})
        return result

    def assign(self, device_id: str, release: str, *, force_reboot: bool = False,
               retry_failed: bool = False) -> AssignmentView:
        result: AssignmentView = self._call("PUT", f"/api/v1/admin/devices/{device_id}/assignment", AssignmentView,
                                            json={"release": release, "force_reboot": force_reboot,
                                                  "retry_failed": retry_failed})
        return result

    def releases(self) -> dict[str, Any]:
        result: _Json = self._call("GET", "/api/v1/admin/repository/releases", _Json)
        return result.root

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

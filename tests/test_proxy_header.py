"""A TLS-terminating reverse proxy may forward the client certificate in a header, but
only when it connects from an address the operator configured as trusted."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from edgefleet.pki import create_ca, issue_device_certificate, make_csr, new_device_key
from tests.conftest import Fleet, start_fleet


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("proxied"), None, trusted_proxies=["127.0.0.1"])
    yield fleet
    fleet.close()


def _header(fleet: Fleet, directory) -> dict[str, str]:
    pem = (directory / "cert.pem").read_text()
    return {fleet.settings.client_cert_header: urllib.parse.quote(pem)}


def test_trusted_proxy_header_authenticates_the_device(proxied: Fleet) -> None:
    device = proxied.enroll()
    response = proxied.client().get(f"/api/v1/devices/{device.id}/desired", headers=_header(proxied, device.directory))
    assert response.status_code == 200


def test_forged_header_certificate_from_another_ca_is_refused(proxied: Fleet) -> None:
    device = proxied.enroll()
    rogue = create_ca("rogue", datetime.now(UTC))
    cert, _ = issue_device_certificate(rogue, make_csr(new_device_key(), "x").decode(), device.id,
                                       datetime.now(UTC), 30)
    response = proxied.client().get(f"/api/v1/devices/{device.id}/desired",
                                    headers={proxied.settings.client_cert_header: urllib.parse.quote(cert.decode())})
    assert response.status_code == 401


def test_header_from_an_untrusted_address_is_ignored(fleet: Fleet) -> None:
    device = fleet.enroll()  # the shared fleet trusts no proxy
    response = fleet.client().get(f"/api/v1/devices/{device.id}/desired", headers=_header(fleet, device.directory))
    assert response.status_code == 401

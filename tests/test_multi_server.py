"""Two control plane instances on one database: a change made through one reaches
devices checking in at the other within the change-feed interval (device cache coherence)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from edgefleet.credentials import Role
from edgefleet.server import ServerThread
from edgefleet.server.local import create_admin_token
from tests.conftest import Fleet


@pytest.fixture
def second(fleet: Fleet) -> Iterator[ServerThread]:
    other = ServerThread(fleet.settings, clock=fleet.clock).start()
    yield other
    other.stop()


def _client_at(fleet: Fleet, server: ServerThread, **kwargs: object) -> httpx.Client:
    client = fleet.client(**kwargs)  # type: ignore[arg-type]
    client.base_url = httpx.URL(server.url)
    return client


def _eventually(check, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def test_desired_state_set_on_one_instance_reaches_a_device_cached_on_the_other(
    fleet: Fleet, second: ServerThread
) -> None:
    device = fleet.enroll()
    url = f"/api/v1/devices/{device.id}/desired"
    assert device.client.get(url, params={"known": 0}).status_code == 204  # now cached on the first
    _client_at(fleet, second, role=Role.OPERATOR).put(
        f"/api/v1/admin/devices/{device.id}/desired", json={"document": {"release": "via-second"}}
    )
    assert _eventually(lambda: device.client.get(url, params={"known": 0}).status_code == 200)


def test_device_decommissioned_on_one_instance_is_refused_by_the_other(fleet: Fleet, second: ServerThread) -> None:
    device = fleet.enroll()
    url = f"/api/v1/devices/{device.id}/desired"
    assert device.client.get(url).status_code == 200  # cached on the first
    assert _client_at(fleet, second, role=Role.ADMIN).delete(f"/api/v1/admin/devices/{device.id}").status_code == 204
    assert _eventually(lambda: device.client.get(url).status_code == 401)


def test_device_revoked_on_one_instance_is_refused_by_the_other(fleet: Fleet, second: ServerThread) -> None:
    device = fleet.enroll()
    url = f"/api/v1/devices/{device.id}/desired"
    assert device.client.get(url).status_code == 200  # cached on the first
    revoked = _client_at(fleet, second, role=Role.ADMIN).post(f"/api/v1/admin/devices/{device.id}/revoke", json={})
    assert revoked.status_code == 200
    assert _eventually(lambda: device.client.get(url).status_code == 401)


def test_long_poll_on_one_instance_wakes_for_a_change_made_on_the_other(fleet: Fleet, second: ServerThread) -> None:
    device = fleet.enroll()
    result: dict[str, httpx.Response] = {}
    poller = threading.Thread(target=lambda: result.setdefault("r", device.client.get(
        f"/api/v1/devices/{device.id}/desired", params={"known": 0, "wait": 30})))
    poller.start()
    time.sleep(0.3)
    _client_at(fleet, second, role=Role.OPERATOR).put(
        f"/api/v1/admin/devices/{device.id}/desired", json={"document": {"release": "x"}}
    )
    poller.join(10)
    assert not poller.is_alive()
    assert result["r"].status_code == 200


def test_an_admin_token_revoked_on_one_instance_is_refused_by_the_other_within_a_second(
    fleet: Fleet, second: ServerThread
) -> None:
    token = asyncio.run(create_admin_token(fleet.settings, name="on-both", role=Role.VIEWER, now=fleet.clock.now(),
                                           ttl=None))
    at_second = _client_at(fleet, second, token=token)
    assert at_second.get("/api/v1/admin/devices").status_code == 200
    revoked = fleet.client(role=Role.ADMIN).delete(f"/api/v1/admin/admin-tokens/{token.split('_')[1]}")
    assert revoked.status_code == 204
    assert _eventually(lambda: at_second.get("/api/v1/admin/devices").status_code == 401, seconds=1.0)

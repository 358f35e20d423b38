"""Per-device rate limits: by device certificate, never by address (a whole store sits
behind one NAT address); the agent waits as long as the server's Retry-After asks."""

from __future__ import annotations

import httpx
import pytest

from edgefleet.errors import RateLimited, Throttled
from edgefleet.server.ratelimit import DeviceRateLimiter
from edgefleet.util.http import checked
from tests.conftest import Fleet


def test_a_device_over_its_limit_gets_429_while_its_neighbour_behind_the_same_address_is_served(fleet: Fleet) -> None:
    noisy, neighbour = fleet.enroll(), fleet.enroll()
    url = f"/api/v1/devices/{noisy.id}/desired"
    # the burst, then more than the bucket refills meanwhile (about 2 ms per request here)
    answers = [noisy.client.get(url, params={"known": 0})
               for _ in range(fleet.settings.device_rate_burst + int(fleet.settings.device_rate_per_second) * 2)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, "a burst beyond the bucket must be refused"
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert int(limited[0].headers["retry-after"]) == 1  # a token is back within a second
    # the same source address (127.0.0.1), another device certificate: its own bucket
    assert neighbour.client.get(f"/api/v1/devices/{neighbour.id}/desired").status_code == 200


def test_re_enrollment_requests_for_one_device_are_limited_before_anything_is_verified(fleet: Fleet) -> None:
    # Re-enrollment has no client certificate (the device's ended): the limit is the guard.
    device = fleet.enroll()
    body = {"certificate_pem": "not a certificate", "csr_pem": "not a request", "signature": "AAAA"}
    client = fleet.client()
    answers = [client.post(f"/api/v1/devices/{device.id}/reenroll", json=body).status_code
               for _ in range(fleet.settings.device_rate_burst + int(fleet.settings.device_rate_per_second) * 2)]
    assert set(answers) == {401, 429}
    assert answers[0] == 401


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bucket_refills_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = _Clock()
    limiter = DeviceRateLimiter(rate=2.0, burst=3, monotonic=clock)
    for _ in range(3):
        limiter.charge("d")
    with pytest.raises(RateLimited) as refused:
        limiter.charge("d")
    assert refused.value.retry_after == pytest.approx(0.5)
    clock.t = 0.5
    limiter.charge("d")  # one token back after 1/rate
    clock.t = 100.0
    for _ in range(3):
        limiter.charge("d")
    with pytest.raises(RateLimited):
        limiter.charge("d")  # a long quiet spell refills the burst, no more


def test_a_disabled_limit_and_an_evicted_bucket_admit_everything() -> None:
    off = DeviceRateLimiter(rate=0, burst=1)
    for _ in range(100):
        off.charge("d")
    small = DeviceRateLimiter(rate=1, burst=1, entries=2, monotonic=_Clock())
    small.charge("a")
    small.charge("b")
    small.charge("c")  # "a" is evicted: its next request starts a full bucket
    small.charge("a")


@pytest.mark.parametrize(("status", "headers", "wait"), [(429, {"retry-after": "7"}, 7.0), (429, {}, 1.0),
                                                         (503, {"retry-after": "3"}, 3.0)])
def test_the_agent_reads_throttling_as_retry_later_with_the_servers_delay(status: int, headers: dict[str, str],
                                                                          wait: float) -> None:
    response = httpx.Response(status, headers=headers, json={"error": {"code": "rate_limited", "message": "slow"}})
    with pytest.raises(Throttled) as throttled:
        checked(response, "GET", "/x")
    assert throttled.value.retry_after == wait

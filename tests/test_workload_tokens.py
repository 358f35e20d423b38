"""Workload tokens as JWT-SVIDs: one per workload and audience, verified by services with
the JWKS and ``audience=``; kept fresh on the device at half their lifetime while it is
attested, never left stale; the signing key rotates with an overlap."""

from __future__ import annotations

import asyncio
import random
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from edgefleet.agent.hardware.swtpm import Swtpm
from edgefleet.agent.workload_tokens import TokenKeeper, WantedToken, wanted_tokens
from edgefleet.attestation import eventlog
from edgefleet.errors import TransportError
from edgefleet.protocol.workloads import NativeWorkload, TokenFile
from edgefleet.web.device_client import HttpsTransport
from tests.cli_helpers import cli
from tests.conftest import Fleet
from tests.test_attestation_flow import attesting_plane, boot
from tests.tpm_world import boot_events

BILLING, LEDGER = "https://billing.example", "spiffe://edgefleet.local/ledger"


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = attesting_plane(tmp_path, None)
    yield fleet
    fleet.close()


def token_for(plane: Fleet, emulator: Swtpm) -> tuple[Any, Any]:
    """An attested device, and a function that asks for a token as it."""
    dev, log = boot(plane, emulator)
    dev.enroll_identity()
    assert dev.attest(log).json() == {"passed": True}

    def ask(workload: str, audience: str) -> Any:
        return dev.device.client.get(f"/api/v1/devices/{dev.device.id}/workload-token",
                                     params={"workload": workload, "audience": audience})

    return dev, ask


def verify(plane: Fleet, token: str, audience: str) -> dict[str, Any]:
    """As a service verifies it: the public JWKS, ES256, its own audience."""
    keys = jwt.PyJWKSet.from_dict(plane.client().get("/.well-known/jwks.json").json())
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(token, keys[kid].key, algorithms=["ES256"], audience=audience,
                                        # the server's clock is moved in tests: times are checked against it
                                        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
    return claims


def test_a_token_minted_for_one_audience_is_refused_by_a_verifier_of_another(plane: Fleet, emulator: Swtpm) -> None:
    dev, ask = token_for(plane, emulator)
    answer = ask("meter", BILLING).json()
    claims = verify(plane, answer["token"], BILLING)
    assert claims["aud"] == [BILLING]
    assert claims["sub"] == answer["spiffe_id"] == \
        f"spiffe://edgefleet.local/site/store-1/device/{dev.device.id}/workload/meter"
    assert answer["expires_in_seconds"] == 300
    with pytest.raises(jwt.InvalidAudienceError):
        verify(plane, answer["token"], LEDGER)
    with pytest.raises(jwt.InvalidAudienceError):
        verify(plane, ask("meter", LEDGER).json()["token"], BILLING)
    other = ask("cashier", BILLING).json()  # another workload of the same device: another identity
    assert verify(plane, other["token"], BILLING)["sub"].endswith("/workload/cashier")


def test_a_workloads_token_is_always_valid_while_its_device_is_attested(
        plane: Fleet, emulator: Swtpm, tmp_path: Path) -> None:
    """30 minutes of injected time in 5-second steps, the device's keeper driven by the
    same time: every read of the token file finds a token valid at that moment. Then the
    attestation goes stale: the server refuses and the file is gone."""
    dev, _ = token_for(plane, emulator)
    now = [0.0]
    keeper = TokenKeeper(tmp_path / "data", lambda: now[0], random.Random(7))
    meter = NativeWorkload(name="meter", kind="native", command=["/bin/true"],
                           tokens=[TokenFile(path="billing.jwt", audience=BILLING)])
    keeper.want(wanted_tokens([meter]))
    token_file = tmp_path / "data" / "meter" / "tokens" / "billing.jwt"
    transport = HttpsTransport(plane.url, plane.settings.pki.ca_cert, cert_file=dev.device.directory / "cert.pem",
                               key_file=dev.device.directory / "key.pem", timeout=30)
    reads, renewals, seen = 0, 0, set()

    async def scenario() -> None:
        try:
            await steps()
        finally:
            await transport.aclose()

    async def steps() -> None:
        nonlocal reads, renewals
        due = 0.0
        for step in range(0, 1800 + 1, 5):
            plane.clock.offset = timedelta(seconds=step)
            now[0] = float(step)
            if now[0] >= due:
                due = now[0] + await keeper.tick(transport, dev.device.id, True)
            claims = verify(plane, token_file.read_text(), BILLING)
            at = plane.clock.now().timestamp()  # the server's time, as a service reading it now sees it
            assert claims["nbf"] <= at, (step, claims)
            assert at < claims["exp"], (step, claims)
            reads += 1
            if claims["jti"] not in seen:
                seen.add(claims["jti"])
                renewals += 1
        # The device then fails a quote (another kernel's log): at its next renewal the
        # server refuses, and the keeper removes the token although it has not expired.
        assert await asyncio.to_thread(lambda: dev.attest(eventlog.encode(boot_events(b"implant"))).json()) == \
            {"passed": False}
        now[0] = due
        await keeper.tick(transport, dev.device.id, True)

    asyncio.run(scenario())
    assert reads == 361
    assert 12 <= renewals <= 13  # at half of 300 s: every 150 s, not on every step
    assert not token_file.exists()  # refused (quarantined): no token, never a stale one


def test_a_rotated_key_is_published_ahead_of_its_use_and_the_old_one_kept_while_its_tokens_live(
        plane: Fleet, emulator: Swtpm) -> None:
    _, ask = token_for(plane, emulator)

    def kids() -> list[str]:
        return [key["kid"] for key in plane.client().get("/.well-known/jwks.json").json()["keys"]]

    def signer() -> str:
        return str(jwt.get_unverified_header(ask("meter", BILLING).json()["token"])["kid"])

    [old] = kids()
    assert signer() == old
    cli("server", "rotate-workload-key", "--data-dir", str(plane.settings.data_dir))
    [_, new] = kids()  # published at once
    assert signer() == old  # and signs only one token lifetime (300 s) later
    plane.clock.advance(301)
    assert signer() == new
    assert kids() == [old, new]  # tokens the old key signed still verify
    plane.clock.advance(300)
    assert kids() == [new]
    assert signer() == new


class Unreachable:
    """A transport whose server answers once, then never again (an outage)."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    async def workload_token(self, device_id: str, workload: str, audience: str) -> Any:
        self.calls += 1
        if self.calls > 1:
            raise TransportError("link down")
        return await self.real.workload_token(device_id, workload, audience)


def test_a_token_that_cannot_be_renewed_is_removed_when_it_expires_and_nothing_is_asked_before_attestation(
        plane: Fleet, emulator: Swtpm, tmp_path: Path) -> None:
    dev, _ = token_for(plane, emulator)
    now = [0.0]
    keeper = TokenKeeper(tmp_path / "data", lambda: now[0], random.Random(7), backoff_initial=5, backoff_max=20)
    keeper.want({WantedToken("meter", "billing.jwt", BILLING)})
    token_file = tmp_path / "data" / "meter" / "tokens" / "billing.jwt"
    real = HttpsTransport(plane.url, plane.settings.pki.ca_cert, cert_file=dev.device.directory / "cert.pem",
                          key_file=dev.device.directory / "key.pem", timeout=30)
    transport = Unreachable(real)

    async def scenario() -> list[float]:
        try:
            delays = [await keeper.tick(transport, dev.device.id, None)]  # not attested yet: nothing asked
            assert transport.calls == 0
            delays.append(await keeper.tick(transport, dev.device.id, True))
            assert token_file.exists()
            while now[0] < 300:
                now[0] += delays[-1]
                delays.append(await keeper.tick(transport, dev.device.id, True))
            return delays
        finally:
            await real.aclose()

    delays = asyncio.run(scenario())
    assert delays[0] > 0  # it waits to be woken, it does not spin
    assert delays[1] == 150  # renewed at half of its 300 s
    assert all(d > 0 for d in delays[2:])  # retries back off, never spin
    assert transport.calls >= 3
    assert not token_file.exists()  # expired unrenewed: gone


def test_the_documented_declaration_of_a_workloads_token_is_valid() -> None:
    text = (Path(__file__).parent.parent / "docs" / "attestation.md").read_text()
    block = text.split("# apps/stores/services.yaml\n", 1)[1].split("```", 1)[0]
    [entry] = yaml.safe_load(textwrap.dedent(block))
    service = NativeWorkload.model_validate({**entry, "kind": "native"})
    assert wanted_tokens([service]) == {WantedToken("meter", "billing.jwt", "https://billing.example")}

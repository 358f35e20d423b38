"""The agent's quote on a challenge a status report brought: quoted once, and when the
server refuses it (it expired on a slow link), the agent asks for a nonce and quotes again.
An in-memory transport beside the real ones of test_ab_updates and test_attestation_flow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.attestor import Attestor
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.errors import ServerRefused
from edgefleet.protocol.v1 import AttestationResult, NonceIssuedView, QuoteSubmission


def challenge(nonce: bytes) -> NonceIssuedView:
    return NonceIssuedView(nonce=nonce.hex(), pcrs=[0, 4], bank="sha256", expires_in_seconds=60)


class Verifier:
    """Accepts quotes on the nonces it lists, refuses the rest as the server does."""

    def __init__(self, *accepted: bytes) -> None:
        self.accepted = set(accepted)
        self.calls: list[str] = []

    async def attestation_nonce(self, device_id: str) -> NonceIssuedView:
        self.calls.append("nonce")
        return challenge(b"\x02" * 32)

    async def submit_quote(self, device_id: str, quote: QuoteSubmission) -> AttestationResult:
        self.calls.append(f"quote {quote.nonce[:2]}")
        if bytes.fromhex(quote.nonce) not in self.accepted:
            raise ServerRefused(409, "nonce_refused", "nonce refused (not issued to it, or expired)")
        return AttestationResult(passed=True)


def attest(attestor: Attestor, verifier: Verifier) -> bool:
    transport: Any = verifier
    return asyncio.run(attestor.attest(transport, "dev-1"))


@pytest.fixture
def attestor(tmp_path: Path) -> Attestor:
    (tmp_path / "log").write_bytes(b"")
    return Attestor(InsecureSoftwareTpm(tmp_path / "tpm"), tmp_path / "log")


def test_an_offered_challenge_is_quoted_without_asking_for_a_nonce_and_only_once(attestor: Attestor) -> None:
    verifier = Verifier(b"\x01" * 32, b"\x02" * 32)
    attestor.offer(challenge(b"\x01" * 32))
    assert attest(attestor, verifier)
    assert attest(attestor, verifier)  # the offer was spent: this one asks
    assert verifier.calls == ["quote 01", "nonce", "quote 02"]


def test_a_refused_challenge_is_replaced_by_a_nonce_the_agent_asks_for(attestor: Attestor) -> None:
    verifier = Verifier(b"\x02" * 32)
    attestor.offer(challenge(b"\x01" * 32))
    assert attest(attestor, verifier)
    assert verifier.calls == ["quote 01", "nonce", "quote 02"]


def test_a_report_without_a_challenge_withdraws_the_last_offer(attestor: Attestor) -> None:
    verifier = Verifier(b"\x01" * 32, b"\x02" * 32)
    attestor.offer(challenge(b"\x01" * 32))
    attestor.offer(None)
    assert attest(attestor, verifier)
    assert verifier.calls == ["nonce", "quote 02"]


def test_another_refusal_of_the_quote_is_not_retried(attestor: Attestor) -> None:
    class Quarantined(Verifier):
        async def submit_quote(self, device_id: str, quote: QuoteSubmission) -> AttestationResult:
            self.calls.append("quote")
            raise ServerRefused(403, "quarantined", "device is quarantined")

    verifier = Quarantined()
    attestor.offer(challenge(b"\x01" * 32))
    with pytest.raises(ServerRefused):
        attest(attestor, verifier)
    assert verifier.calls == ["quote"]

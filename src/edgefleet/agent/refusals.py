"""How a failed check-in round is told: what the reader of the agent's log can do about it,
and how loud it is."""

from __future__ import annotations

import logging

from edgefleet.errors import EdgefleetError, ServerRefused


def refusal_hint(exc: EdgefleetError, *, has_tpm: bool) -> str:
    """What the person reading the agent's log can do about a refusal ("" when nothing)."""
    code = exc.code if isinstance(exc, ServerRefused) else ""
    if code == "quarantined":
        return " (an operator releases it: edgefleet devices release-quarantine)"
    if code == "ek_pending_approval":
        return " (it attests once an operator approves its TPM: edgefleet devices pending, edgefleet devices approve)"
    if code == "attestation_required" and not has_tpm:
        return (" (the server requires attestation and this agent has no TPM: set tpm to its TCTI in the agent's "
                "settings, e.g. tpm = \"device:/dev/tpmrm0\")")
    return ""


def log_level(exc: EdgefleetError, *, has_tpm: bool) -> int:
    """A refusal is an error, a lost link a warning; a refusal the agent expects or heals
    by itself (quarantine; attestation that lapsed, on a device with a TPM) a warning too."""
    if not isinstance(exc, ServerRefused):
        return logging.WARNING
    heals = exc.code == "quarantined" or (exc.code == "attestation_required" and has_tpm)
    return logging.WARNING if heals else logging.ERROR

"""What a device's TPM and firmware report (its PCRs and the TCG boot event log), as one
JSON line: for bringing an image up on new hardware, where it is compared with the
image's predicted reference values. ``python -m edgefleet.agent.evidence`` prints it."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from edgefleet.errors import ConfigError

EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
PREFIX = "EDGEFLEET-EVIDENCE "


def collect(tcti: str, event_log: Path = EVENT_LOG, bank: str = "sha256") -> dict[str, object]:
    """PCRs 0-15 of ``bank`` from the TPM and the event log (base64).

    Raises ConfigError when tpm2-pytss, the TPM or the event log cannot be read.
    """
    try:
        from edgefleet.agent.hardware.tpm import Tpm2
    except ImportError as exc:
        raise ConfigError(f"reading the TPM needs tpm2-pytss: {exc}") from exc
    try:
        log = event_log.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the event log {event_log}: {exc}") from exc
    values = Tpm2(tcti).read_pcrs(bank, list(range(16)))
    return {"bank": bank, "pcrs": {str(i): v.hex() for i, v in sorted(values.items())},
            "event_log": base64.b64encode(log).decode()}


def find(console: str) -> dict[str, object] | None:
    """The last evidence line in a console log, or None."""
    found = None
    for line in console.splitlines():
        at = line.find(PREFIX)
        if at >= 0:
            try:
                value = json.loads(line[at + len(PREFIX):])
            except ValueError:
                continue
            if isinstance(value, dict):
                found = value
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgefleet.agent.evidence", description=__doc__)
    parser.add_argument("--tcti", default="device:/dev/tpmrm0")
    parser.add_argument("--event-log", type=Path, default=EVENT_LOG)
    parser.add_argument("--prefix", default=PREFIX)
    args = parser.parse_args(argv)
    try:
        document = collect(args.tcti, args.event_log)
    except ConfigError as exc:
        print(f"evidence: {exc.message}", file=sys.stderr)
        return 2
    print(args.prefix + json.dumps(document, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

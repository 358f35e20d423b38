"""Quote verification throughput on quotes made by a real TPM (swtpm), for RSA-2048 and
ECC P-256 attestation keys, one core:

- bare signature check (the floor: cryptography verifying the signature over the quote),
- Keylime's pure-Python ``keylime.tpm.tpm_util.checkquote`` (signature, nonce, PCR digest),
- our quote check (``check_quote``: key attributes, strict parsing, signature, nonce,
  selection, PCR digest, counters),
- our full verification (``verify_quote``: the above plus replaying the TCG event log and
  comparing it event by event with reference values), warm (a fleet whose devices share
  releases and firmware send byte-identical logs: every log's outcome is remembered, hit
  ratio 100 %) and cold (the memo emptied before every quote: a fleet of all-different
  logs),

for two logs: a synthetic 100-event log over PCRs 0-7, and the real log of the test image
booting under OVMF in QEMU (tests/data/eventlogs, captured from the VM of
tests/test_real_boot.py) quoted over the PCRs the real-boot tests quote, against the
release's predicted reference values and the firmware PCRs recorded from that boot, as
the server's policy for that release would hold them.

Each figure is the median of ``--runs`` runs (default 3), so noise shows in the spread.

The quotes are made with tpm2-tools (``tpm2_quote``), whose output Keylime reads natively.
Keylime runs in its own virtualenv (it pins its own dependencies); set
EDGEFLEET_KEYLIME_PYTHON to its python, or the bench creates ``bench/.keylime-venv``.

    python bench/attest.py [--seconds 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edgefleet.agent.hardware.swtpm import Swtpm
from edgefleet.agent.hardware.tpm import Tpm2
from edgefleet.attestation import eventlog, reference, verifier
from edgefleet.attestation.structures import parse_public
from edgefleet.attestation.verifier import (
    Evidence,
    Policy,
    QuoteRequest,
    _signature_ok,
    check_quote,
    verify_quote,
)

SYNTHETIC_PCRS = (0, 1, 2, 3, 4, 5, 6, 7)
REAL_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12)  # tests/real_boot.py QUOTED_PCRS
REAL_LOGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "eventlogs"
FIRMWARE_PCRS = (0, 1, 2, 3, 6)  # recorded from a golden boot (image/predict.py GOLDEN_PCRS)
KEYLIME_LOOP = """
import sys, time
from keylime.tpm import tpm_util
d = sys.argv[1]; seconds = float(sys.argv[2])
read = lambda n: open(f"{d}/{n}", "rb").read()
args = (read("ak.pem"), read("nonce").decode(), read("quote.sig"), read("quote.msg"), read("quote.pcrs"), "sha256")
tpm_util.checkquote(*args)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    for _ in range(100):
        tpm_util.checkquote(*args)
    n += 100
print(n / (time.perf_counter() - start))
"""


def keylime_python() -> str | None:
    configured = os.environ.get("EDGEFLEET_KEYLIME_PYTHON")
    if configured:
        return configured
    venv = Path(__file__).parent / ".keylime-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print("creating bench/.keylime-venv with keylime (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # keylime's own metadata does not always pull these in
        installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "keylime", "cryptography", "pyyaml"],
                                   check=False)
        if installed.returncode != 0:
            return None
    return str(python)


def rate(check: Callable[[], object], seconds: float) -> float:
    check()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            check()
        n += 50
    return n / (time.perf_counter() - start)


def tools(directory: Path, tcti: str, *args: str) -> None:
    subprocess.run([shutil.which(args[0]) or args[0], *args[1:]], cwd=directory, check=True, capture_output=True,
                   env={**os.environ, "TPM2TOOLS_TCTI": tcti})


def synthetic_log(count: int) -> tuple[bytes, tuple[int, ...], Policy]:
    events = [eventlog.measure(i % 8, eventlog.EV_POST_CODE, f"component {i}".encode()) for i in range(count)]
    log = eventlog.encode(events)
    expected = reference.from_log(eventlog.parse(log), SYNTHETIC_PCRS, source="synthetic")
    return log, SYNTHETIC_PCRS, Policy(expected.values(), expected)


def real_log() -> tuple[bytes, tuple[int, ...], Policy]:
    log = (REAL_LOGS / "qemu-q35-ovmf-uki.bin").read_bytes()
    release = reference.loads((REAL_LOGS / "qemu-q35-ovmf-uki.reference-values.json").read_bytes())
    events = release.merged(reference.from_log(eventlog.parse(log), FIRMWARE_PCRS))
    return log, REAL_PCRS, Policy(events.values(), events)


def boot(tpm: Tpm2, log: bytes) -> None:
    """Extend what the log records into the TPM, as the firmware did."""
    for event in eventlog.parse(log).events:
        if event.event_type != eventlog.EV_NO_ACTION:
            tpm.extend_pcr(event.pcr, "sha256", event.digests[eventlog.ALG_SHA256])


def bench(key: str, scheme: str, directory: Path, seconds: float, keylime: str | None,
          case: tuple[bytes, tuple[int, ...], Policy]) -> dict[str, float]:
    log, pcrs, policy = case
    with Swtpm(directory / "swtpm") as emulator:
        tpm = Tpm2(emulator.tcti)
        boot(tpm, log)
        tcti = emulator.tcti
        tools(directory, tcti, "tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
        tools(directory, tcti, "tpm2_flushcontext", "-t")
        tools(directory, tcti, "tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", key, "-g", "sha256", "-s",
              scheme, "-u", "ak.pub", "-f", "tss", "-n", "ak.name")
        tools(directory, tcti, "tpm2_flushcontext", "-t")
        nonce = os.urandom(16).hex()
        (directory / "nonce").write_text(nonce)
        tools(directory, tcti, "tpm2_quote", "-c", "ak.ctx", "-l", "sha256:" + ",".join(map(str, pcrs)), "-q",
              nonce.encode().hex(), "-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs", "-g", "sha256")
        values = tpm.read_pcrs("sha256", list(pcrs))
    ak = parse_public((directory / "ak.pub").read_bytes())
    (directory / "ak.pem").write_bytes(ak.key.public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    attest, signature = (directory / "quote.msg").read_bytes(), (directory / "quote.sig").read_bytes()
    request = QuoteRequest(nonce.encode(), pcrs)
    evidence = Evidence(attest, signature, values, log)
    verdict = verify_quote(ak, request, evidence, policy)
    assert verdict.passed, verdict.failures

    # Every memo the verifier keeps (found by kind, so that this bench also measures an
    # older verifier: PYTHONPATH=<old checkout>/src python bench/attest.py).
    memos = [memo for memo in vars(verifier).values() if type(memo).__name__.endswith("Memo")]

    def cold() -> object:
        for memo in memos:
            memo.clear()
        return verify_quote(ak, request, evidence, policy)

    figures = {
        "bare_signature_per_s": rate(lambda: _signature_ok(ak, attest, signature), seconds),
        "our_quote_check_per_s": rate(lambda: check_quote(ak, request, evidence), seconds),
        "our_full_verification_per_s": rate(lambda: verify_quote(ak, request, evidence, policy), seconds),
        "our_full_verification_cold_per_s": rate(cold, seconds),
    }
    if keylime:
        result = subprocess.run([keylime, "-c", KEYLIME_LOOP, str(directory), str(seconds)], capture_output=True,
                                text=True, check=False, env={**os.environ, "KEYLIME_LOGGING_CONFIG": "/dev/null"})
        if result.returncode == 0:
            figures["keylime_checkquote_per_s"] = float(result.stdout.strip())
        else:
            print(f"keylime checkquote failed: {result.stderr.strip()[-300:]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    keylime = keylime_python()
    cases = {"synthetic": synthetic_log(100), "ovmf": real_log()}
    print(f"edgefleet attestation bench: quotes from swtpm, one core, median of {args.runs} runs; logs: "
          f"synthetic ({len(cases['synthetic'][0])} bytes, 100 events, PCRs 0-7), ovmf (the test image's real "
          f"OVMF boot, {len(cases['ovmf'][0])} bytes, {len(eventlog.parse(cases['ovmf'][0]).events)} events, "
          f"PCRs {','.join(map(str, REAL_PCRS))}), each against its reference values event by event")
    all_figures: dict[str, float] = {}
    for key, scheme in (("rsa", "rsassa"), ("ecc", "ecdsa")):
        for log_name, case in cases.items():
            runs = []
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix=f"edgefleet-attest-{key}-") as tmp:
                    runs.append(bench(key, scheme, Path(tmp), args.seconds, keylime, case))
            figures = {name: statistics.median(run[name] for run in runs)
                       for name in runs[0] if all(name in run for run in runs)}
            bare = figures["bare_signature_per_s"]
            label = f"{'RSA-2048' if key == 'rsa' else 'ECC P-256'} {log_name}"
            keylime_rate = figures.get("keylime_checkquote_per_s", float("nan"))
            ours, warm = figures["our_quote_check_per_s"], figures["our_full_verification_per_s"]
            cold = figures["our_full_verification_cold_per_s"]
            mixed = 1 / (0.95 / warm + 0.05 / cold)
            print(f"{label:>19}: bare signature {bare:8,.0f}/s | keylime checkquote {keylime_rate:8,.0f}/s | our "
                  f"quote check {ours:8,.0f}/s ({ours / keylime_rate:.2f}x keylime) | full verification warm "
                  f"{warm:8,.0f}/s ({warm / bare:.0%} of bare), cold {cold:8,.0f}/s ({cold / bare:.0%}); at a 95% "
                  f"hit ratio (derived) {mixed:8,.0f}/s ({mixed / bare:.0%})")
            spread = {name: [round(run[name]) for run in runs] for name in figures}
            print(f"{'':>19}  runs: {spread}")
            prefix = f"{key}_{log_name}"
            all_figures.update({f"{prefix}_{name}": round(value, 1) for name, value in figures.items()})
            all_figures[f"{prefix}_quote_check_vs_keylime_x"] = round(ours / keylime_rate, 2)
            all_figures[f"{prefix}_full_warm_share_of_bare_pct"] = round(100 * warm / bare, 1)
            all_figures[f"{prefix}_full_cold_share_of_bare_pct"] = round(100 * cold / bare, 1)
    all_figures["warm_hit_ratio_pct"] = 100.0
    print(json.dumps(all_figures))


if __name__ == "__main__":
    main()

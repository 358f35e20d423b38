"""Real power cuts during an A/B update: a VM (QEMU q35 + OVMF + swtpm, TCG) boots release
A, is assigned release B, and at a random moment of the update QEMU is killed with
SIGKILL, as pulling the plug would. The VM is powered on again with the same disk, the
same firmware variables and the same TPM state, and must come back on a bootable slot,
attest, and converge to B (committed on B).

Each round draws the phase to cut in (downloading, installing, rebooting, trial_boot,
health_checking, attesting: whichever the device reports first at or after the drawn
one) and a delay inside it from a seeded generator; the seed of every round is printed,
so a failing round can be run again alone (``--seed N --rounds 1``).

    python bench/powercut_vm.py [--rounds 100] [--seed 1] [--deadline 900]

Per round: bricked (no slot mounted after the cut), both_slots_bad (the initramfs refused
both), converged (committed on B and a passed quote on B). Needs root and the image
builder's and VM tools; says which one is missing instead of failing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/real_boot.py: the control plane's side

from tests import real_boot
from tests.conftest import Fleet

from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.image.build import BuiltImage, build_image
from edgefleet.image.spec import load_spec
from edgefleet.vm import Machine, MachineConfig

PHASES = ("downloading", "installing", "rebooting", "trial_boot", "health_checking", "attesting")
SPEC = """
name = "edgefleet-bench"
version = "{version}"
release_counter = {counter}
hardware_id = "qemu-q35"
"""
A, B = "2026.12.30", "2026.12.31"


def one_round(fleet: Fleet, image: BuiltImage, work: Path, seed: int, deadline: float) -> dict[str, object]:
    """Boot A from ``image``, assign B, cut the power where ``seed`` says, power on, converge."""
    rng = random.Random(seed)
    phase = rng.choice(PHASES)
    delay = rng.uniform(0.0, 8.0)
    viewer = fleet.client(role=Role.VIEWER)
    known = {str(d["id"]) for d in viewer.get("/api/v1/admin/devices").json()["devices"]}
    machine = Machine(real_boot.provisioned_vm(fleet, image, work))
    result: dict[str, object] = {"seed": seed, "phase": phase, "delay_s": round(delay, 1)}
    try:
        machine.start()
        device_id = real_boot.enrolled_device(fleet, machine, exclude=known)

        def record() -> dict[str, object]:
            value: dict[str, object] = viewer.get(f"/api/v1/admin/devices/{device_id}").json()
            return value

        def phases() -> list[str]:
            events = viewer.get(f"/api/v1/admin/devices/{device_id}/updates").json()["events"]
            return [str(e["phase"]) for e in events if e["release"] == B]

        real_boot.wait_until(lambda: record().get("attestation"), "attestation on A", machine, deadline)
        with AdminClient(fleet.url, fleet.tokens[Role.ADMIN], fleet.settings.pki.ca_cert) as admin:
            admin.assign(device_id, B, force_reboot=True)
        later = set(PHASES[PHASES.index(phase):]) | {"committed"}
        real_boot.wait_until(lambda: later & set(phases()), f"phase {phase}", machine, deadline, every=0.2)
        time.sleep(delay)
        result["cut_after"] = phases()[0] if phases() else None
        machine.cut_power()
        machine.start()
        real_boot.wait_until(lambda: "verified and mounted" in machine.console_text()
                             or "refused slot a and slot b" in machine.console_text(), "a slot mounted", machine,
                             deadline)
        result["bricked"] = False
        result["both_slots_bad"] = "refused slot a and slot b" in machine.console_text()
        real_boot.wait_until(lambda: record()["update_state"] == "committed" and record()["running_version"] == B
                             and (record().get("attestation") or {}).get("release") == B, "convergence on B",
                             machine, deadline, every=1.0)
        result["converged"] = bool((record().get("attestation") or {}).get("passed"))
    except (AssertionError, OSError) as exc:
        result.setdefault("bricked", "verified and mounted" not in machine.console_text())
        result.setdefault("both_slots_bad", "refused slot a and slot b" in machine.console_text())
        result["converged"] = False
        result["error"] = str(exc).splitlines()[0][:200]
    finally:
        machine.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="the first round's seed; round i uses seed + i")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for each wait inside a round")
    args = parser.parse_args()
    missing = real_boot.missing_for_real_boots()
    if missing is not None:
        print(f"bench/powercut_vm.py needs {missing}")
        return 0
    started = time.monotonic()
    rounds: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-powercut-") as tmp:
        root = Path(tmp)
        (root / "golden").mkdir()
        golden_spec = root / "golden" / "edge.toml"
        golden_spec.write_text(SPEC.format(version="2026.12.29", counter=29))
        spec, spec_dir = load_spec(golden_spec)
        golden_image = build_image(spec, spec_dir)
        with Machine(MachineConfig(disk=golden_image.disk, directory=root / "golden-vm",
                                   fw_cfg={"opt/io.edgefleet/print-evidence": b"1"})) as machine:
            evidence = real_boot.wait_for_evidence(machine, args.deadline)
        (root / "plane").mkdir()
        plane = real_boot.attesting_plane(real_boot.booted_log(evidence), root / "plane")
        try:
            releases = real_boot.Releases(plane, root / "releases")
            images: dict[str, BuiltImage] = {}
            for name, version, counter in (("a", A, 30), ("b", B, 31)):
                (root / name).mkdir()
                images[name] = real_boot.published_fleet_image(
                    plane, SPEC.format(version=version, counter=counter), root / name, releases, trusted=True)
            for i in range(args.rounds):
                result = one_round(plane, images["a"], root / f"vm-{i}", args.seed + i, args.deadline)
                rounds.append(result)
                print(f"round {i + 1} (seed {result['seed']}): cut in {result['phase']} +{result['delay_s']} s "
                      f"(device at {result.get('cut_after')}): "
                      + ("converged on B" if result["converged"] else f"NOT converged: {result.get('error')}")
                      + (", BRICKED" if result["bricked"] else "") + (", BOTH SLOTS BAD" if result["both_slots_bad"]
                                                                       else ""), flush=True)
        finally:
            plane.close()
    hours = (time.monotonic() - started) / 3600
    failing = [r["seed"] for r in rounds if not r["converged"] or r["bricked"] or r["both_slots_bad"]]
    summary = {
        "rounds": len(rounds), "bricked": sum(bool(r["bricked"]) for r in rounds),
        "both_slots_bad": sum(bool(r["both_slots_bad"]) for r in rounds),
        "converged": sum(bool(r["converged"]) for r in rounds),
        "rounds_per_hour": round(len(rounds) / hours, 1) if hours else 0.0, "failing_seeds": failing,
    }
    print(f"{summary['rounds']} rounds: {summary['converged']} converged on B, {summary['bricked']} bricked, "
          f"{summary['both_slots_bad']} with both slots bad; {summary['rounds_per_hour']} rounds per hour"
          + (f"; failing seeds {failing}" if failing else ""))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real power cuts during A/B updates, the long loop: one VM (QEMU q35 + OVMF + swtpm, TCG)
boots the first release and is taken through one update after another; during each, QEMU
is killed with SIGKILL at moments drawn from a seeded generator and powered on again with
the same disk, firmware variables and TPM state (tests/power_cuts.py says how moments are
drawn and what a round must show; CI runs ten of them, test_real_updates_power_cuts.py).

    python bench/powercut_vm.py [--rounds 100] [--per-update 10] [--seed 1] [--deadline 900]
                                [--max-hours H] [--vms N]

``--vms N`` runs N such VMs at once (one process each, the rounds shared out, VM k's seeds
starting at seed + 100000 k, each with a build cache of its own so that one VM's builds
never evict the image another VM boots from), and prints the figures of all of them.

Per round: bricked (no slot mounted after the cut), both_slots_bad (the initramfs refused
both), attested_after_cut (a passed quote after the cut on the release its slot holds);
per update: converged (committed on the assigned release and attested on its values).
Prints every round with its seed (``--seed N --rounds 1`` replays one), then the figures:
its last line is one JSON object. Needs root and the image builder's and VM tools; says
which one is missing instead of failing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the control plane's side

from tests import power_cuts, real_boot
from tests.conftest import Fleet

from edgefleet.credentials import Role
from edgefleet.image.build import BuiltImage, build_image
from edgefleet.image.spec import load_spec
from edgefleet.vm import Machine, MachineConfig

SEED_STRIDE = 100_000  # VM k of --vms draws its seeds from seed + SEED_STRIDE * k

SPEC = """
name = "edgefleet-bench"
version = "{version}"
release_counter = {counter}
hardware_id = "qemu-q35"
"""


def release(plane: Fleet, releases: real_boot.Releases, root: Path, counter: int) -> tuple[str, BuiltImage]:
    version = f"2027.1.{counter}"
    (root / version).mkdir()
    built = real_boot.published_fleet_image(plane, SPEC.format(version=version, counter=counter), root / version,
                                            releases, trusted=True)
    return version, built


def run(args: argparse.Namespace, root: Path) -> list[power_cuts.Update]:
    (root / "golden").mkdir()
    (root / "golden" / "edge.toml").write_text(SPEC.format(version="2027.1.0", counter=1))
    spec, spec_dir = load_spec(root / "golden" / "edge.toml")
    golden = build_image(spec, spec_dir)
    with Machine(MachineConfig(disk=golden.disk, directory=root / "golden-vm",
                               fw_cfg={"opt/io.edgefleet/print-evidence": b"1"})) as machine:
        evidence = real_boot.wait_for_evidence(machine, args.deadline)
    (root / "plane").mkdir()
    plane = real_boot.attesting_plane(real_boot.booted_log(evidence), root / "plane")
    updates: list[power_cuts.Update] = []
    try:
        releases = real_boot.Releases(plane, root / "releases")
        first, image = release(plane, releases, root, 2)
        viewer = plane.client(role=Role.VIEWER)
        known = {str(d["id"]) for d in viewer.get("/api/v1/admin/devices").json()["devices"]}
        with Machine(real_boot.provisioned_vm(plane, image, root / "vm")) as machine:
            device = real_boot.VmDevice(machine, real_boot.enrolled_device(plane, machine, exclude=known), plane)
            device.wait("attestation on the first release", lambda: (a := device.record().get("attestation"))
                        and a["passed"] and a["release"] == first, args.deadline)
            cuts = power_cuts.PowerCuts(device, args.deadline)
            done, counter = 0, 3
            stop_at = time.monotonic() + args.max_hours * 3600 if args.max_hours else None
            while done < args.rounds and (stop_at is None or time.monotonic() < stop_at):
                rounds = min(args.per_update, args.rounds - done)
                version, _ = release(plane, releases, root, counter)
                print(f"update {len(updates) + 1}: to {version}, {rounds} cuts", flush=True)
                update = cuts.update(version, power_cuts.plan_rounds(args.seed + done, rounds))
                updates.append(update)
                print(f"  {'converged' if update.converged else 'NOT converged: ' + str(update.error)} "
                      f"[{update.seconds:.0f} s]", flush=True)
                done += rounds
                counter += 1
                if not update.converged:
                    break  # the device is not where the next update expects it: stop, with the seeds printed
    finally:
        plane.close()
    return updates


def run_vms(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """``args.vms`` copies of this script at once; their output is passed on, prefixed with
    the VM's number, and their figures (each one's last line) are added up."""
    children: list[subprocess.Popen[str]] = []
    for k in range(args.vms):
        rounds = args.rounds // args.vms + (k < args.rounds % args.vms)
        command = [sys.executable, __file__, "--rounds", str(rounds), "--per-update", str(args.per_update),
                   "--seed", str(args.seed + SEED_STRIDE * k), "--deadline", str(args.deadline)]
        if args.max_hours:
            command += ["--max-hours", str(args.max_hours)]
        env = {**os.environ, "EDGEFLEET_CACHE": str(root / f"cache-{k}")}
        children.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    last: list[str] = [""] * args.vms

    def relay(k: int) -> None:
        stream = children[k].stdout
        assert stream is not None
        for line in stream:
            print(f"[vm {k}] {line}", end="", flush=True)
            last[k] = line
    relays = [threading.Thread(target=relay, args=(k,)) for k in range(args.vms)]
    for thread in relays:
        thread.start()
    for thread in relays:
        thread.join()
    summaries = []
    for k, child in enumerate(children):
        child.wait()
        try:
            summaries.append(json.loads(last[k]))
        except json.JSONDecodeError:
            print(f"[vm {k}] ended (exit {child.returncode}) without its figures")
            summaries.append({"rounds": 0, "bricked": 0, "both_slots_bad": 0, "attested_after_cut": 0,
                              "updates": 0, "converged": 0, "failing_seeds": [], "crashed": 1})
    return {key: sum(s.get(key, 0) for s in summaries)
            for key in ("rounds", "bricked", "both_slots_bad", "attested_after_cut", "updates", "converged")} | {
        "vms": args.vms, "vms_crashed": sum(s.get("crashed", 0) for s in summaries),
        "failing_seeds": [seed for s in summaries for seed in s["failing_seeds"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--per-update", type=int, default=10, help="cuts during each update")
    parser.add_argument("--seed", type=int, default=1, help="the first round's seed; round i uses seed + i")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for each wait inside a round")
    parser.add_argument("--max-hours", type=float, default=None,
                        help="start no update after this long (the figures say how many rounds ran)")
    parser.add_argument("--vms", type=int, default=1, help="VMs at once (at most one per core is useful under TCG)")
    args = parser.parse_args()
    missing = real_boot.missing_for_real_boots()
    if missing is not None:
        print(f"bench/powercut_vm.py needs {missing}")
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgefleet-powercut-") as tmp:
        if args.vms > 1:
            summary = run_vms(args, Path(tmp))
            hours = (time.monotonic() - started) / 3600
            summary["rounds_per_hour"] = round(summary["rounds"] / hours, 1)
        else:
            updates = run(args, Path(tmp))
            summary = power_cuts.figures(updates, (time.monotonic() - started) / 3600)
    print(f"{summary['rounds']} rounds in {summary['updates']} updates: {summary['bricked']} bricked, "
          f"{summary['both_slots_bad']} with both slots bad, {summary['attested_after_cut']} attested after the cut; "
          f"{summary['converged']} of {summary['updates']} updates converged; {summary['rounds_per_hour']} rounds "
          "per hour" + (f"; failing seeds {summary['failing_seeds']}" if summary["failing_seeds"] else ""))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

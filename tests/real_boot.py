"""Real boots for tests: the image builder's tools, OVMF, QEMU and swtpm, or a skip (a
failure under EDGEFLEET_REQUIRE_ALL=1) that names what is missing."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.agent.evidence import find
from edgefleet.attestation import eventlog, reference
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.image import _tools, predict
from edgefleet.image.build import REFERENCE_VALUES, TOOLS, BuiltImage, build_image
from edgefleet.image.spec import load_spec
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.vm import Machine, MachineConfig
from edgefleet.vm.qemu import GUEST_HOST
from tests.conftest import Fleet, need, start_fleet

VM_TOOLS = ("qemu-system-x86_64", "qemu-img", "qemu-io", "swtpm", "swtpm_setup")
BOOT_DEADLINE = 900.0  # seconds: generous, TCG on a loaded 2-core machine


def missing_for_real_boots() -> str | None:
    """What this machine lacks to build images and boot them (None: nothing); the tests
    skip with it, the benches print it."""
    if os.geteuid() != 0:
        return "root (the image builder, mmdebstrap --mode=root, runs as root)"
    absent = _tools.missing([*TOOLS, *VM_TOOLS])
    if absent:
        return f"{', '.join(absent)} (Debian packages: see scripts/test)"
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        return "OVMF (Debian's ovmf)"
    return None


def real_boot_or_skip() -> None:
    missing = missing_for_real_boots()
    if missing is not None:
        need("image builder and VM tools", f"missing {missing}")


def wait_for_evidence(machine: Machine, deadline: float = BOOT_DEADLINE) -> dict[str, object]:
    """The evidence the guest prints on its second serial port (see agent/evidence.py)."""

    def printed() -> dict[str, object] | None:
        try:
            return find(machine.evidence_port.read_text(errors="replace"))
        except OSError:
            return None

    found: dict[str, object] = wait_until(printed, "evidence", machine, deadline)  # type: ignore[assignment]
    return found


def wait_until(condition: Callable[[], object], what: str, machine: Machine, deadline: float = BOOT_DEADLINE,
               every: float = 1.0) -> object:
    """``condition()`` once it is true; fails with the console's tail if the VM stops or
    the (generous) deadline passes first."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        assert machine.running, f"the VM stopped while waiting for {what}:\n" + machine.console_text()[-3000:]
        time.sleep(every)
    raise AssertionError(f"no {what} within the deadline; console tail:\n" + machine.console_text()[-3000:])


# -- a control plane for a VM device ------------------------------------------------------

FLEET_HOST = "fleet.edgefleet.test"
SITE = "store-vm"
QUOTED_PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12]
FLEET_PART = f"""
[fleet]
server_url = "https://{FLEET_HOST}:8443"
ca_file = "fleet-ca.pem"
hosts = {{ "{FLEET_HOST}" = "{GUEST_HOST}" }}
agent = {{ checkin_interval_seconds = 5.0, long_poll_seconds = 20.0, backoff_max_seconds = 10.0, \
attestation_interval_seconds = 30.0, update_check_seconds = 30.0 }}
"""


def attesting_plane(golden_log: eventlog.EventLog, directory: Path) -> Fleet:
    """A control plane that requires attestation over the image's PCRs, with the hardware
    model's firmware PCRs recorded from a golden boot."""
    baseline = directory / "qemu-q35.json"
    recorded = reference.from_log(golden_log, predict.GOLDEN_PCRS)
    baseline.write_text(json.dumps(recorded.to_document()))
    return start_fleet(directory, None, attestation_required=True, attestation_pcrs=QUOTED_PCRS,
                       server_names=["localhost", "127.0.0.1", FLEET_HOST],
                       attestation_reference_files={"qemu-q35": baseline})


class Releases:
    """One release workspace for a control plane: its roots can be baked into images
    (``trust_dir``), and every image built against it is published as a release."""

    def __init__(self, plane: Fleet, directory: Path) -> None:
        self.plane = plane
        self.keys, self.workspace = Keystore(directory / "keys"), Workspace(directory / "ws")
        self.workspace.init(self.keys, load_online_keys(plane.settings.data_dir / "keys" / "online-keys.json"),
                            datetime.now(UTC))

    def trust_dir(self, into: Path) -> Path:
        """The TUF roots a device of this fleet ships (image-root.json, director-root.json)."""
        into.mkdir(parents=True, exist_ok=True)
        for name, repo in (("image-root.json", self.workspace.image), ("director-root.json", self.workspace.director)):
            shutil.copyfile(repo.metadata_dir / "1.root.json", into / name)
        return into

    def publish(self, built: BuiltImage) -> None:
        """``built``'s slot as a release, with its predicted reference values."""
        manifest = built.manifest
        values = reference.loads(built.path(REFERENCE_VALUES).read_bytes())
        now = datetime.now(UTC)
        self.workspace.create_release(built.path("root.erofs"), ReleaseInfo(
            str(manifest["version"]), int(str(manifest["release_counter"])), (str(manifest["hardware_id"]),),
            {str(p): v.hex() for p, v in values.values().items()}, values.to_document()), now)
        self.workspace.sign_targets(self.keys.signer("targets-1"))
        with AdminClient(self.plane.url, self.plane.tokens[Role.ADMIN], self.plane.settings.pki.ca_cert) as admin:
            publish_workspace(self.workspace, admin)


def published_fleet_image(plane: Fleet, spec_text: str, directory: Path, releases: Releases | None = None,
                          *, trusted: bool = False) -> BuiltImage:
    """``spec_text`` with the fleet's CA and server baked in (and with ``trusted``, the
    release workspace's TUF roots, so that the device installs signed updates), built, and
    published as a release with its predicted reference values."""
    releases = releases or Releases(plane, directory)
    shutil.copyfile(plane.settings.pki.ca_cert, directory / "fleet-ca.pem")
    fleet = FLEET_PART
    if trusted:
        releases.trust_dir(directory / "trust")
        fleet = fleet.replace('ca_file = "fleet-ca.pem"', 'ca_file = "fleet-ca.pem"\ntrust_dir = "trust"')
    (directory / "edge.toml").write_text(spec_text + fleet)
    spec, spec_dir = load_spec(directory / "edge.toml")
    built = build_image(spec, spec_dir)
    releases.publish(built)
    return built


def provisioned_vm(plane: Fleet, image: BuiltImage, directory: Path,
                   labels: dict[str, str] | None = None) -> MachineConfig:
    """A VM of ``image`` with a bootstrap token for SITE (and ``labels``) and the server forwarded."""
    token = plane.bootstrap_token(SITE, labels)
    provisioning = f"EDGEFLEET_AGENT_SITE={SITE}\nEDGEFLEET_AGENT_BOOTSTRAP_TOKEN={token}\n".encode()
    return MachineConfig(disk=image.disk, directory=directory, forwards={8443: plane.server.port},
                         fw_cfg={"opt/io.edgefleet/agent.env": provisioning})


def enrolled_device(plane: Fleet, machine: Machine, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """The id of the device the VM enrolled as (the first at SITE not in ``exclude``)."""
    viewer = plane.client(role=Role.VIEWER)

    def listed() -> list[dict[str, object]]:
        devices: list[dict[str, object]] = viewer.get("/api/v1/admin/devices", params={"site": SITE}).json()["devices"]
        return [d for d in devices if str(d["id"]) not in exclude]

    found = wait_until(listed, "enrolled device", machine)
    return str(found[0]["id"])  # type: ignore[index]


@dataclass
class VmDevice:
    """A VM enrolled at ``plane`` as device ``id``, seen through the admin API."""

    machine: Machine
    id: str
    plane: Fleet

    def record(self) -> dict[str, Any]:
        value: dict[str, Any] = self.plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{self.id}").json()
        return value

    def assign(self, release: str) -> None:
        with AdminClient(self.plane.url, self.plane.tokens[Role.ADMIN], self.plane.settings.pki.ca_cert) as admin:
            admin.assign(self.id, release, force_reboot=True)

    def history(self) -> list[dict[str, Any]]:
        """The device's update events, newest first."""
        events: list[dict[str, Any]] = self.plane.client(role=Role.VIEWER).get(
            f"/api/v1/admin/devices/{self.id}/updates").json()["events"]
        return events

    def wait(self, what: str, condition: Callable[[], Any], deadline: float = BOOT_DEADLINE,
             every: float = 2.0) -> Any:
        return wait_until(condition, what, self.machine, deadline, every)


GOLDEN_SPEC = """
name = "edgefleet-test"
version = "2026.12.0"
release_counter = 3
hardware_id = "qemu-q35"
"""


def booted_log(evidence: dict[str, object]) -> eventlog.EventLog:
    return eventlog.parse(base64.b64decode(str(evidence["event_log"])))

"""The README's first real agent, as written. The operator's commands of "Running it for
real" set up a control plane and a bootstrap token for store-042; the release owner's
"Signed releases" line makes the keys and workspace whose TUF roots the device carries;
the golden device's baseline is recorded and named in the server's settings as the README
shows; the device's ``agent.toml`` is the README's TOML block; the agent runs as the
README's command says, as its own process. Only the host's specifics are replaced: server
address and port, file paths, the TPM (a real TPM 2.0 emulator, swtpm, instead of
``/dev/tpmrm0``), the technician page's address, and two settings that point the agent
away from this host's own ``/sys`` (the boot event log: a real OVMF boot's, with the TPM's
PCRs extended by exactly what it records, the firmware's part, which this host lacks)
and ``/var/lib``. Its TPM waits for the operator's approval (``devices pending``,
``approve``); then it attests, passes, and applies the configuration an operator sets."""

from __future__ import annotations

import json
import os
import shlex
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent.hardware import swtpm
from edgefleet.attestation import eventlog
from tests.conftest import need
from tests.test_readme_operator import README, wait_until_ready
from tests.test_telemetry_hub import free_port

OVMF_LOG = Path(__file__).parent / "data" / "eventlogs" / "qemu-q35-ovmf-uki.bin"
CLOUD_INIT = "#cloud-config\nhostname: store-042\n"
NO_ACTION, SHA256 = 0x3, 0x000B  # EV_NO_ACTION events are not extended; TPM_ALG_SHA256


def blocks(text: str, fence: str) -> list[str]:
    return [part.split("```", 1)[0] for part in text.split(f"```{fence}\n")[1:]]


def device_section() -> tuple[str, list[str], list[str], str]:
    """The device's agent.toml, the command that runs the agent, the golden device's
    commands and the server's settings that name its baseline."""
    section = README.read_text().split("## Running it for real\n", 1)[1].split("On the device", 1)[1]
    (agent_toml, server_toml, *_), (run, golden, *_) = blocks(section, "toml"), blocks(section, "sh")

    def lines(block: str) -> list[str]:
        return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    return agent_toml, lines(run), lines(golden), server_toml


def test_the_readmes_agent_enrolls_is_approved_attests_and_applies_configuration(tmp_path: Path) -> None:
    if not swtpm.available():
        need("swtpm", "swtpm and swtpm_ioctl are not installed")
    try:
        from edgefleet.agent.hardware.tpm import Tpm2  # noqa: F401
    except ImportError:
        need("tpm2-pytss", "the tpm2-pytss package is not installed")
    agent_toml, run, golden, server_toml = device_section()
    port, ui_port = free_port(), free_port()
    data, etc, state = tmp_path / "data", tmp_path / "etc", tmp_path / "agent-state"
    etc.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    tpm = swtpm.Swtpm(tmp_path / "swtpm").start()
    boot_log = tmp_path / "binary_bios_measurements"
    boot_log.write_bytes(OVMF_LOG.read_bytes())
    measure(tpm.tcti, boot_log)

    def concrete(text: str) -> str:
        return (text.replace("https://fleet.example.com:8443", f"https://localhost:{port}")
                .replace("/var/lib/edgefleet-agent", str(state)).replace("/var/lib/edgefleet", str(data))
                .replace("/etc/edgefleet/", f"{etc}/").replace("device:/dev/tpmrm0", tpm.tcti)
                .replace("0.0.0.0:8088", f"127.0.0.1:{ui_port}"))

    def edgefleet(*words: str) -> str:
        done = subprocess.run([sys.executable, "-m", "edgefleet", *words], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{words}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        return done.stdout

    server = agent = None
    try:
        edgefleet("server", "init", "--data-dir", str(data), "--server-name", "localhost")
        admin = edgefleet("tokens", "create-admin", "--data-dir", str(data), "--name", "alice", "--role",
                          "admin").strip()
        # The golden device's evidence and the model's baseline, as the README records them.
        evidence_line, baseline_line = golden
        command = [*shlex.split(evidence_line.split(">", 1)[0]), "--tcti", tpm.tcti, "--event-log", str(boot_log)]
        assert command[:3] == ["python3", "-m", "edgefleet.agent.evidence"], evidence_line
        collected = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=60,
                                   env=env, cwd=tmp_path)
        assert collected.returncode == 0, collected.stderr
        (tmp_path / "evidence.json").write_text(collected.stdout)
        words = shlex.split(concrete(baseline_line).split("  #", 1)[0])
        assert words[:3] == ["edgefleet", "image", "baseline"], baseline_line
        subprocess.run([sys.executable, "-m", "edgefleet", *words[1:]], env=env, cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)
        (etc / "server.toml").write_text(concrete(server_toml))

        with (tmp_path / "server.log").open("wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "edgefleet", "server", "--config",
                                       str(etc / "server.toml"), "--data-dir", str(data), "--host", "127.0.0.1",
                                       "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_ready(server, port, tmp_path)
        env.update(EDGEFLEET_SERVER_URL=f"https://localhost:{port}", EDGEFLEET_CA_FILE=str(data / "pki" / "ca.pem"),
                   EDGEFLEET_ADMIN_TOKEN=admin)
        bootstrap = edgefleet("tokens", "create", "--site", "store-042", "--labels", "ring=canary").strip()
        releases = tmp_path / "releases"  # the release owner's keys and workspace ("Signed releases")
        edgefleet("keys", "init", "--keys-dir", str(tmp_path / "offline-keys"), "--workspace", str(releases),
                  "--online-keys", str(data / "keys" / "online-keys.json"))
        edgefleet("release", "publish", "-w", str(releases))

        # The device, as the README provisions it.
        (etc / "fleet-ca.pem").write_bytes((data / "pki" / "ca.pem").read_bytes())
        (etc / "bootstrap-token").write_text(bootstrap + "\n")
        (etc / "technician-credential").write_text("store-042-technician\n")
        (etc / "trust").mkdir()
        for name in ("image", "director"):
            root = releases / name / "metadata" / "1.root.json"
            (etc / "trust" / f"{name}-root.json").write_bytes(root.read_bytes())
        written = concrete(agent_toml) + (f'event_log = "{boot_log}"\n'  # not this host's own /sys and /var/lib
                                          f'os_config_dir = "{tmp_path / "os-config"}"\n')
        (etc / "agent.toml").write_text(written)
        assert tpm.tcti in written
        (line,) = run
        words = shlex.split(concrete(line))
        assert words[:2] == ["edgefleet", "agent"], line
        with (tmp_path / "agent.log").open("wb") as log:
            agent = subprocess.Popen([sys.executable, "-m", "edgefleet", *words[1:]], env=env, stdout=log,
                                     stderr=subprocess.STDOUT)

        def shown(device_id: str) -> dict[str, Any]:
            value: dict[str, Any] = json.loads(edgefleet("devices", "show", device_id, "-o", "json"))
            return value

        def pending() -> str | None:
            listed = json.loads(edgefleet("devices", "pending", "-o", "json"))["approvals"]
            return str(listed[0]["device_id"]) if listed else None

        device_id = wait_for(pending, "the device's TPM waiting for approval", agent, tmp_path)
        edgefleet("devices", "approve", device_id)
        wait_for(lambda: (shown(device_id).get("attestation") or {}).get("passed") is True,
                 "a passed attestation", agent, tmp_path)

        with httpx.Client(verify=ssl.create_default_context(cafile=str(data / "pki" / "ca.pem")), timeout=30,
                          headers={"authorization": f"Bearer {admin}"}) as client:
            answer = client.put(f"https://localhost:{port}/api/v1/admin/devices/{device_id}/desired",
                                json={"document": {"config": {"group": "stores", "os": {"cloud_init": CLOUD_INIT}}}})
            assert answer.status_code == 200, answer.text
            version = answer.json()["version"]
        wait_for(lambda: shown(device_id).get("desired_version_applied") == version, "the configuration applied",
                 agent, tmp_path)
        assert (tmp_path / "os-config" / "nocloud" / "user-data").read_text() == CLOUD_INIT
        log_text = (tmp_path / "agent.log").read_text()
        assert "Traceback" not in log_text
        assert "esys" not in log_text  # no TSS error lines for what a TPM may lack (an EK certificate)
    finally:
        for process in (agent, server):
            if process is not None:
                process.terminate()
                process.wait(30)
        tpm.stop()


def measure(tcti: str, boot_log: Path) -> None:
    """The firmware's part: the TPM's PCRs extended with exactly what the log records."""
    from edgefleet.agent.hardware.tpm import Tpm2

    tpm = Tpm2(tcti)
    for event in eventlog.parse(boot_log.read_bytes()).events:
        if event.event_type != NO_ACTION:
            tpm.extend_pcr(event.pcr, "sha256", event.digests[SHA256])


def wait_for(check: Callable[[], Any], what: str, agent: subprocess.Popen[bytes], tmp: Path,
             timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert agent.poll() is None, (tmp / "agent.log").read_text()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{(tmp / 'agent.log').read_text()[-4000:]}\n"
                        f"{(tmp / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    return found

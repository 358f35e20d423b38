"""The README's "Running it for real" operator commands, run as written: each line of its
first shell block is executed in order as a real `edgefleet` process (the server in the
background), with only the host's specifics replaced (data directory, host name, port,
the token the second line printed, the device id a device enrolled with got)."""

from __future__ import annotations

import os
import shlex
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from edgefleet.pki import make_csr, new_device_key
from tests.test_telemetry_hub import free_port

README = Path(__file__).resolve().parent.parent / "README.md"


def operator_block() -> list[str]:
    section = README.read_text().split("## Running it for real\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readmes_operator_commands_run_as_written(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    found: dict[str, str] = {}

    def concrete(line: str) -> str:
        line = line.split("  #", 1)[0].strip()  # a trailing comment
        line = (line.replace("/var/lib/edgefleet", str(tmp_path / "data")).replace("fleet.example.com", "localhost")
                .replace("8443", str(port)).replace("--host 0.0.0.0", "--host 127.0.0.1"))
        for placeholder, value in found.items():
            line = line.replace(placeholder, value)
        return line

    server: subprocess.Popen[bytes] | None = None
    try:
        for line in operator_block():
            words = shlex.split(concrete(line))
            if words[0] == "export":
                env.update(word.split("=", 1) for word in words[1:])
                continue
            assert words[0] == "edgefleet", line
            command = [sys.executable, "-m", "edgefleet", *words[1:]]
            if words[1] == "server" and words[2].startswith("--"):
                with (tmp_path / "server.log").open("wb") as log:
                    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                wait_until_ready(server, port, tmp_path)
                continue
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                                  input="y\n")  # the operator answers yes where asked
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr
            if words[1:3] == ["tokens", "create-admin"]:
                found.setdefault("efa_...", done.stdout.strip())  # the first: the whole fleet's admin
            elif words[1:3] == ["tokens", "create"] and "--hub" not in words:
                found["dev-..."] = enroll(port, tmp_path, done.stdout.strip())
            elif words[1:3] == ["devices", "show"]:
                assert found["dev-..."] in done.stdout
                assert '"revoked": null' in done.stdout
            elif words[1:3] == ["devices", "revoke"]:
                assert "revoked" in done.stderr
        assert server is not None
        assert {"efa_...", "dev-..."} <= found.keys()
        shown = subprocess.run([sys.executable, "-m", "edgefleet", "devices", "show", found["dev-..."]], env=env,
                               capture_output=True, text=True, timeout=120)
        assert '"reason": "stolen from the store"' in shown.stdout
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)


def wait_until_ready(server: subprocess.Popen[bytes], port: int, tmp: Path) -> None:
    log, deadline = tmp / "server.log", time.monotonic() + 60
    ca = ssl.create_default_context(cafile=str(tmp / "data" / "pki" / "ca.pem"))
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"https://localhost:{port}/readyz", verify=ca, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not get ready\n" + log.read_text()
        time.sleep(0.2)


def enroll(port: int, tmp: Path, token: str) -> str:
    """What the device does with the bootstrap token the operator made: enroll."""
    body = {"token": token, "csr_pem": make_csr(new_device_key(), "device").decode(),
            "inventory": {"hardware_id": "hw-readme-1", "site": "store-042", "labels": {}}}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tmp / "data" / "pki" / "ca.pem")),
                      timeout=30) as client:
        answer = client.post(f"https://localhost:{port}/api/v1/enroll", json=body)
    assert answer.status_code == 201, answer.text
    device_id: str = answer.json()["device_id"]
    return device_id

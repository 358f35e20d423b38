"""Remote sessions end to end: a real control plane, emulated devices with real agents that
attest (software TPMs, a release with reference measurements), and the operator's side as
the CLI runs it. A shell is a real PTY on the device; the gate refuses stale attestation,
quarantine (a forensic logs session aside), an operator outside the device's scope and a
site whose policy refuses shells, each with its reason and an audit row; a port-forward
reaches a service on the device's loopback and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent.emulated import EmulatedDevice
from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.pty_session import set_size
from edgefleet.credentials import Role
from edgefleet.errors import ServerRefused
from edgefleet.hub.app import HubThread
from edgefleet.protocol.sessions import MAX_FRAME_BYTES, MAX_OFFERS, Ended, Exit, Resize, SessionRequest
from edgefleet.remote_client import (
    Operator,
    SessionRefused,
    cast_events,
    copy_from_device,
    copy_to_device,
    forward_port,
    stream,
)
from edgefleet.web.channel import Channel
from tests.ab_world import RUNNING, SLOT_BYTES, AbWorld, eventually
from tests.cli_helpers import cli, server_args
from tests.conftest import Fleet, need, start_fleet
from tests.test_dashboard_browser import SCREENSHOTS, signed_in_page
from tests.test_scoped_roles import scoped_token
from tests.test_telemetry_exports import start_hub
from tests.test_telemetry_hub import free_port

TECHNICIAN = "open-sesame-42"


def technician_page(device: EmulatedDevice) -> str:
    """The device's local page, as the store's technician sees it."""
    assert device.agent is not None
    address = device.agent.settings.local_ui
    return httpx.get(f"http://{address}/", cookies={"edgefleet_local": TECHNICIAN}, timeout=30).text


class Devices:
    """Emulated devices running on a loop of their own for the whole module."""

    def __init__(self, devices: list[EmulatedDevice]) -> None:
        self.devices = devices
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        await asyncio.gather(*(d.run(self.stop) for d in self.devices))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("remote-plane"), None)
    yield fleet
    fleet.close()


@pytest.fixture(scope="module")
def hub(plane: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubThread]:
    hub = start_hub(plane, tmp_path_factory.mktemp("remote-hub") / "hub", relay_port=0)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def world(plane: Fleet, hub: HubThread, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[AbWorld, dict[str, EmulatedDevice]]]:
    tmp = tmp_path_factory.mktemp("remote")
    world = AbWorld(plane, tmp / "releases")
    factory = world.tmp / "factory.img"
    factory.write_bytes(vimage.build(RUNNING, 1, size=SLOT_BYTES))
    pcrs = reference_pcrs(factory)
    world.publish(RUNNING, 1, image=factory, measurements={0: pcrs[0].hex(), 4: pcrs[4].hex()})
    tampered = world.tmp / "tampered.img"
    tampered.write_bytes(vimage.build(RUNNING, 1, size=SLOT_BYTES, filler=b"tampered"))
    assert reference_pcrs(tampered)[4] != pcrs[4]
    policy = world.tmp / "no-shell.json"
    policy.write_text(json.dumps({"shell": False}))
    relay = f"https://127.0.0.1:{eventually(lambda: hub.hub.relay_port, 'the hub relays')}"
    (tmp / "technician").write_text(TECHNICIAN + "\n")
    devices = {
        "term": world.device("term", tpm=InsecureSoftwareTpm(tmp / "tpm-term"), slot_a=factory,
                             labels={"ring": "remote"}, local_ui=f"127.0.0.1:{free_port()}",
                             local_ui_token_file=tmp / "technician"),
        "nosh": world.device("nosh", tpm=InsecureSoftwareTpm(tmp / "tpm-nosh"), slot_a=factory,
                             remote_access_policy=policy),
        "bad": world.device("bad", tpm=InsecureSoftwareTpm(tmp / "tpm-bad"), slot_a=tampered),
        # A device that reaches the world only through its site's hub.
        "behind": world.device("behind", tpm=InsecureSoftwareTpm(tmp / "tpm-behind"), slot_a=factory,
                               server_url=relay),
    }
    running = Devices(list(devices.values()))
    try:
        for name, device in devices.items():
            eventually(lambda d=device: d.agent is not None and d.agent.attested is not None, f"{name} attested", 60)
        yield world, devices
    finally:
        running.close()


def operator(plane: Fleet, role: Role = Role.OPERATOR, token: str | None = None) -> Operator:
    return Operator(plane.url, token or plane.tokens[role], plane.settings.pki.ca_cert)


def device_id(device: EmulatedDevice) -> str:
    return AbWorld.device_id(device)


async def collect(channel: Channel, until: bytes, timeout: float = 30) -> bytes:
    """Output until ``until`` appears."""
    seen = b""
    deadline = time.monotonic() + timeout
    while until not in seen:
        frame = await asyncio.wait_for(channel.receive(), max(0.1, deadline - time.monotonic()))
        assert frame is not None, f"channel closed before {until!r}; got {seen!r}"
        if isinstance(frame, bytes):
            seen += frame
    return seen


async def exit_code(channel: Channel, timeout: float = 30) -> tuple[int, bytes]:
    seen = b""
    while True:
        frame = await asyncio.wait_for(channel.receive(), timeout)
        assert frame is not None, f"channel closed without an exit code; output {seen!r}"
        if isinstance(frame, bytes):
            seen += frame
        elif isinstance(frame, Exit):
            return frame.code, seen


def audit_rows(plane: Fleet, subject: str) -> list[dict[str, Any]]:
    rows = plane.client(role=Role.ADMIN).get("/api/v1/admin/audit", params={"device": subject}).json()["entries"]
    return [r for r in rows if r["action"].startswith("session ")]


def session_processes(session_id: str) -> list[int]:
    """Processes on this machine (the emulated device's host) that a session started."""
    marker = f"EDGEFLEET_SESSION={session_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def test_a_command_on_a_real_pty_prints_its_output_and_returns_its_exit_code_and_the_recording_replays_it(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]
    request = SessionRequest(verb="shell", command=["printf 'tty=%s\\n' \"$(tty)\"; echo hello-$((6*7)); exit 3"])

    async def run() -> tuple[int, bytes]:
        async with await operator(plane).session(device_id(term), request) as shell:
            return await exit_code(shell)

    code, output = asyncio.run(run())
    assert code == 3
    assert b"hello-42" in output
    assert b"tty=/dev/pts/" in output
    ended = audit_rows(plane, device_id(term))[0]
    assert (ended["action"], ended["outcome"], ended["actor"]) == ("session shell ended", "ok", "test-operator")
    details = ended["details"]
    assert (details["exit_code"], details["recorded"], details["bytes_out"] >= len(b"hello-42")) == (3, True, True)
    assert details["started"] < details["ended"]
    recording = plane.client(role=Role.ADMIN).get(f"/api/v1/admin/sessions/{details['session']}/recording")
    header, events = cast_events(recording.content)
    assert header["width"] == 80
    assert "hello-42" in "".join(text for _, code_, text in events if code_ == "o")
    replayed = cli("audit", "replay", details["session"], "--speed", "0", *server_args(plane))
    assert "hello-42" in replayed
    # The recording cannot be read by an operator, nor its path be tricked.
    assert plane.client(role=Role.OPERATOR).get(f"/api/v1/admin/sessions/{details['session']}/recording"
                                                ).status_code == 403
    assert plane.client(role=Role.ADMIN).get("/api/v1/admin/sessions/..%2F..%2Fkeys%2Faudit.key/recording"
                                             ).status_code in (400, 404)


def test_a_session_reaches_a_device_that_reaches_the_world_only_through_its_hub(
        world: tuple[AbWorld, dict[str, EmulatedDevice]], hub: HubThread) -> None:
    plane, behind = world[0].plane, world[1]["behind"]
    assert hub.hub.relay is not None
    before = hub.hub.relay.relayed
    assert behind.agent is not None
    assert behind.agent.settings.server_url != plane.url  # its every connection goes through the hub

    async def run() -> tuple[int, bytes]:
        request = SessionRequest(verb="shell", command=["echo through-the-$((1+1))-hubs; exit 5"])
        async with await operator(plane).session(device_id(behind), request) as shell:
            return await exit_code(shell)

    code, output = asyncio.run(run())
    assert (code, b"through-the-2-hubs" in output) == (5, True)
    assert hub.hub.relay.relayed > before  # the session's channel went through the hub's relay


def test_an_interactive_program_is_driven_by_keystrokes_and_follows_a_resize(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]

    async def run() -> None:
        async with await operator(plane).session(device_id(term), SessionRequest(verb="shell", cols=80,
                                                                                 rows=24)) as shell:
            await drive(shell)

    async def drive(shell: Channel) -> None:
        await shell.send(b"stty size\r")
        assert b"24 80" in await collect(shell, b"24 80")
        # The store's technician sees that a session is open on the device; the server counts it.
        assert 'id="remote-session-banner"' in await asyncio.to_thread(technician_page, term)
        metrics = (await asyncio.to_thread(plane.client().get, "/metrics")).text
        assert any(line.startswith("edgefleet_remote_sessions ") and float(line.split()[1]) >= 1
                   for line in metrics.splitlines()), metrics
        await shell.control(Resize(cols=132, rows=43))
        await shell.send(b"stty size\r")
        assert b"43 132" in await collect(shell, b"43 132")
        await shell.send(b"python3 -q\r")
        await collect(shell, b">>> ")
        await shell.send(b"print(6 * 7, 'from', 'python')\r")
        assert b"42 from python" in await collect(shell, b"42 from python")
        await shell.send(b"import time; time.sleep(600)\r")
        await asyncio.sleep(0.5)
        await shell.send(b"\x03")  # Ctrl-C reaches the foreground job through the terminal
        assert b"KeyboardInterrupt" in await collect(shell, b"KeyboardInterrupt")
        await shell.send(b"exit()\r")
        await shell.send(b"exit 7\r")
        code, _ = await exit_code(shell)
        assert code == 7

    asyncio.run(run())


def test_a_dropped_link_ends_the_session_and_kills_every_process_it_started(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]
    found: list[int] = []

    async def run() -> str:
        opened = await asyncio.to_thread(operator(plane).open, device_id(term), SessionRequest(verb="shell"))
        shell = await operator(plane).attach(opened)
        await shell.send(b"sleep 1001 & sleep 1002 & echo started-$((1+1))\r")
        await collect(shell, b"started-2")
        found.extend(session_processes(opened.id))
        shell._ws.transport.abort()  # the operator's link drops: no close handshake
        return opened.id

    session_id = asyncio.run(run())
    assert len(found) >= 3, found  # the shell and both sleeps
    eventually(lambda: not session_processes(session_id), "every process of the session killed", 30)
    eventually(lambda: "remote-session-banner" not in technician_page(term), "the device's banner gone", 30)
    ended = eventually(lambda: [r for r in audit_rows(plane, device_id(term)) if r["details"].get("session")
                                == session_id and r["action"].endswith("ended")], "the session's end audited")
    assert ended[0]["details"]["exit_code"] is None


def test_the_gate_refuses_stale_attestation_with_its_reason_and_an_audit_row(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]
    plane.clock.advance(2 * plane.settings.attestation_max_age_seconds)
    try:
        with pytest.raises(ServerRefused) as refused:
            operator(plane).open(device_id(term), SessionRequest(verb="shell"))
    finally:
        plane.clock.advance(-2 * plane.settings.attestation_max_age_seconds)
    assert (refused.value.status, refused.value.code) == (403, "attestation_stale")
    assert "last passing quote is" in refused.value.message
    row = audit_rows(plane, device_id(term))[0]
    assert (row["outcome"], row["details"]["code"]) == ("refused", "attestation_stale")


def test_a_quarantined_device_gets_no_shell_but_its_logs_read_only_when_asked(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, bad = world[0].plane, world[1]["bad"]
    assert eventually(lambda: (world[0].record(bad).attestation or {}).get("quarantined"),
                      "the tampered device quarantined")
    for request, code in ((SessionRequest(verb="shell"), "quarantined"),
                          (SessionRequest(verb="logs"), "quarantined")):
        with pytest.raises(ServerRefused) as refused:
            operator(plane).open(device_id(bad), request)
        assert (refused.value.status, refused.value.code) == (403, code)
    assert "--forensic" in refused.value.message

    async def forensic() -> bytes:
        request = SessionRequest(verb="logs", forensic=True, follow=True)
        async with await operator(plane).session(device_id(bad), request) as channel:
            await channel.send(b"rm -rf /\r")  # read-only: never reaches the device
            return await collect(channel, b"attestation")

    logs = asyncio.run(forensic())
    assert b"attestation" in logs  # the agent's own log: its refused check-ins
    rows = audit_rows(plane, device_id(bad))
    assert [r["details"]["code"] for r in rows if r["outcome"] == "refused"][:2] == ["quarantined", "quarantined"]
    opened = next(r for r in rows if r["outcome"] == "opened")
    assert opened["details"]["read_only"] is True
    ended = next(r for r in rows if r["action"] == "session logs ended")
    assert (ended["details"]["bytes_in"], ended["details"]["read_only"]) == (0, True)


def test_an_operator_outside_the_devices_scope_is_refused_and_audited(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]
    berlin = scoped_token(plane, Role.OPERATOR, "site in (berlin-*)")
    with pytest.raises(ServerRefused) as refused:
        operator(plane, token=berlin).open(device_id(term), SessionRequest(verb="shell"))
    assert (refused.value.status, refused.value.code) == (404, "not_found")  # its existence is not theirs to learn
    viewer = operator(plane, Role.VIEWER)
    with pytest.raises(ServerRefused) as too_weak:
        viewer.open(device_id(term), SessionRequest(verb="logs"))
    assert (too_weak.value.status, too_weak.value.code) == (403, "insufficient_role")
    row = next(r for r in audit_rows(plane, device_id(term)) if r["actor"] == "berlin-operator")
    assert (row["outcome"], row["details"]["code"]) == ("refused", "not_found")


def test_a_site_policy_without_shells_refuses_them_on_the_device_and_still_allows_logs(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, nosh = world[0].plane, world[1]["nosh"]

    async def run() -> bytes:
        with pytest.raises(SessionRefused) as refused:
            await operator(plane).session(device_id(nosh), SessionRequest(verb="shell"))
        assert refused.value.code == "site_policy"
        assert "no-shell.json" in refused.value.message
        out = _Sink()
        channel = await operator(plane).session(device_id(nosh), SessionRequest(verb="logs", lines=50))
        assert await stream(channel, out) == 0
        return out.data

    logs = asyncio.run(run())
    assert b"edgefleet.agent" in logs
    # Its own log only: not the server's, nor another device's that runs in this process.
    assert b"edgefleet.server" not in logs
    assert device_id(world[1]["term"]).encode() not in logs
    row = next(r for r in audit_rows(plane, device_id(nosh)) if r["action"] == "session shell ended")
    assert row["outcome"] == "refused"
    assert "policy refuses remote shell" in row["details"]["refused"]


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from the device's loopback, pid {os.getpid()}, path {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_port_forward_reaches_a_service_on_the_devices_loopback_and_nothing_else(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]
    service = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    try:
        async def run() -> list[str]:
            stop = asyncio.Event()
            port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            forwarding = asyncio.create_task(forward_port(operator(plane), device_id(term), ("127.0.0.1", 0),
                                                          service.server_address[1], port.set_result, stop))
            local = await port
            bodies = []
            async with httpx.AsyncClient() as client:
                for path in ("/one", "/two"):  # each connection is a session of its own
                    answer = await client.get(f"http://127.0.0.1:{local}{path}",
                                              headers={"connection": "close"}, timeout=30)
                    bodies.append(answer.text)
            stop.set()
            await forwarding
            return bodies

        bodies = asyncio.run(run())
    finally:
        service.shutdown()
        service.server_close()
    assert [b.rsplit(" ", 1)[-1] for b in bodies] == ["/one", "/two"]
    assert all("hello from the device's loopback" in b for b in bodies)
    with pytest.raises(ServerRefused) as refused:
        operator(plane).open(device_id(term), SessionRequest(verb="forward", host="10.0.0.1", port=22))
    assert (refused.value.status, refused.value.code) == (403, "not_loopback")


def test_the_session_cli_commands_show_their_help() -> None:
    for command in (("devices", "shell"), ("devices", "logs"), ("devices", "port-forward"), ("devices", "cp"),
                    ("audit", "replay")):
        assert "Usage" in cli(*command, "--help")





def test_the_dashboards_terminal_runs_a_command_in_chromium_and_its_recording_replays_the_same_output(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    if shutil.which("chromium") is None:
        need("chromium", "Debian's chromium is not installed")
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        need("playwright", "the playwright package is not installed")
    abworld, term = world[0], world[1]["term"]
    plane = abworld.plane
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    async def steps() -> tuple[str, str]:
        async with async_playwright() as playwright:
            browser, page = await signed_in_page(playwright, abworld, Role.OPERATOR)
            await page.goto(f"{plane.url}/ui/devices/{device_id(term)}")
            await page.click("#open-terminal")
            await page.click("#open-shell")
            state = page.locator("#session-state")
            await expect(state).to_contain_text(" open (shell)", timeout=30_000)
            await page.keyboard.type("echo browser-$((20+22))\n")
            screen = "window.edgefleetTerminal.buffer.active"
            await page.wait_for_function(
                f"[...Array({screen}.length).keys()].some(i => {screen}.getLine(i).translateToString().trim()"
                f" === 'browser-42')", timeout=30_000)
            await page.keyboard.type("exit 4\n")
            await expect(state).to_contain_text("exit 4", timeout=30_000)
            text = await page.evaluate(
                f"[...Array({screen}.length).keys()].map(i => {screen}.getLine(i).translateToString().trimEnd())"
                ".join('\\n')")
            await page.screenshot(path=str(SCREENSHOTS / "device-terminal.png"))
            session = (await state.inner_text()).split()[1]
            # The log view of the same device: the agent's own log, followed.
            await page.click("#open-logs")
            await expect(state).to_contain_text(" open (logs)", timeout=30_000)
            await page.wait_for_function(
                f"[...Array({screen}.length).keys()].some(i => {screen}.getLine(i).translateToString()"
                ".includes('remote shell session'))", timeout=30_000)
            await page.screenshot(path=str(SCREENSHOTS / "device-logs.png"))
            await browser.close()
            return session, text

    session, screen_text = asyncio.run(steps())
    assert "browser-42" in screen_text.splitlines()
    replayed = cli("audit", "replay", session, "--speed", "0", *server_args(plane))
    assert "echo browser-$((20+22))" in replayed
    assert "\rbrowser-42\n" in replayed  # the same output, as the device's terminal printed it
    ended = next(r for r in audit_rows(plane, device_id(term)) if r["details"].get("session") == session
                 and r["action"] == "session shell ended")
    assert (ended["actor"], ended["details"]["exit_code"]) == ("test-operator", 4)


def test_the_documented_cli_commands_run_a_command_with_its_exit_code_and_show_the_logs(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
           "EDGEFLEET_SERVER_URL": plane.url, "EDGEFLEET_ADMIN_TOKEN": plane.tokens[Role.OPERATOR],
           "EDGEFLEET_CA_FILE": str(plane.settings.pki.ca_cert)}

    def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgefleet", *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120, check=False)

    shell = edgefleet("devices", "shell", device_id(term), "--", "echo", "from-the-cli;", "exit", "9")
    assert (shell.returncode, "from-the-cli" in shell.stdout) == (9, True), shell.stderr
    logs = edgefleet("devices", "logs", device_id(term), "-n", "20")
    assert logs.returncode == 0, logs.stderr
    assert "edgefleet" in logs.stdout
    refused = edgefleet("devices", "port-forward", device_id(term), "8080:not-a-port")
    assert refused.returncode == 2
    assert "LOCAL:REMOTE" in refused.stderr


def test_the_shell_command_in_a_real_terminal_passes_keys_raw_and_follows_the_local_terminals_size(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    """``edgefleet devices shell`` on a terminal of its own (a PTY this test holds, as a
    person's terminal emulator would): its size is the session's, a local resize reaches
    the device, and keys pass raw (Ctrl-C interrupts the remote job, not the CLI)."""
    plane, term = world[0].plane, world[1]["term"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}, "TERM": "xterm",
           "EDGEFLEET_SERVER_URL": plane.url, "EDGEFLEET_ADMIN_TOKEN": plane.tokens[Role.OPERATOR],
           "EDGEFLEET_CA_FILE": str(plane.settings.pki.ca_cert)}
    local, remote_end = os.openpty()
    set_size(local, 100, 30)
    process = subprocess.Popen([sys.executable, "-m", "edgefleet", "devices", "shell", device_id(term)], env=env,
                               stdin=remote_end, stdout=remote_end, stderr=remote_end, start_new_session=True)
    os.close(remote_end)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while marker not in seen:
            assert time.monotonic() < deadline, f"no {marker!r} in {seen[-500:]!r}"
            ready, _, _ = select.select([local], [], [], 0.5)
            if ready:
                seen += os.read(local, 65536)

    try:
        read_until(b"# " if os.getuid() == 0 else b"$ ")  # the prompt: the shell reads keys now
        os.write(local, b"stty size\r")
        read_until(b"30 100")
        set_size(local, 120, 40)
        os.kill(process.pid, signal.SIGWINCH)  # as the kernel does for the terminal's foreground job
        os.write(local, b"sleep 1; stty size\r")  # the resize travels beside these keys: it lands first
        read_until(b"40 120")
        os.write(local, b"sleep 600\r")
        time.sleep(0.5)
        os.write(local, b"\x03")  # raw: the remote sleep is interrupted, the CLI lives on
        os.write(local, b"echo after-$((3*3))\r")
        read_until(b"after-9")
        os.write(local, b"exit 6\r")
        assert process.wait(60) == 6
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(local)


def test_a_file_copied_to_the_device_replaces_its_target_only_whole_and_one_copied_back_is_the_same(
        world: tuple[AbWorld, dict[str, EmulatedDevice]], tmp_path: Path) -> None:
    plane, term, nosh = world[0].plane, world[1]["term"], world[1]["nosh"]
    local = tmp_path / "config.bin"
    local.write_bytes(os.urandom(300_000))  # more than one frame
    target = tmp_path / "on-device" / "config.bin"  # the emulated device's host is this machine
    target.parent.mkdir()
    target.write_bytes(b"the old file")
    ops = operator(plane)
    assert asyncio.run(copy_to_device(ops, device_id(term), local, str(target))) == 300_000
    assert target.read_bytes() == local.read_bytes()
    back = tmp_path / "back.bin"
    assert asyncio.run(copy_from_device(ops, device_id(term), str(target), back)) == 300_000
    assert back.read_bytes() == local.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.bin"]  # no partial left behind

    async def cut_short() -> None:  # the link drops after part of the file: the target stays whole
        request = SessionRequest(verb="copy", direction="put", path=str(target), size=300_000)
        channel = await ops.session(device_id(term), request)
        await channel.send(b"x" * 100_000)
        await asyncio.sleep(0.5)
        channel._ws.transport.abort()

    asyncio.run(cut_short())
    eventually(lambda: sorted(p.name for p in target.parent.iterdir()) == ["config.bin"], "the partial removed")
    assert target.read_bytes() == local.read_bytes()
    with pytest.raises(SessionRefused) as missing:
        asyncio.run(copy_from_device(ops, device_id(term), str(tmp_path / "nothing-here"), back))
    assert missing.value.code == "unreadable"
    relative = plane.client(role=Role.OPERATOR).post(f"/api/v1/admin/devices/{device_id(term)}/sessions",
                                                     json={"verb": "copy", "direction": "get", "path": "etc/passwd"})
    assert relative.status_code == 422  # a path on the device is absolute
    # Through the CLI, as documented; a site that refuses shells (its own verb) still allows copies.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
           "EDGEFLEET_SERVER_URL": plane.url, "EDGEFLEET_ADMIN_TOKEN": plane.tokens[Role.OPERATOR],
           "EDGEFLEET_CA_FILE": str(plane.settings.pki.ca_cert)}
    done = subprocess.run([sys.executable, "-m", "edgefleet", "devices", "cp", f"{device_id(term)}:{target}",
                           str(tmp_path / "via-cli.bin")], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert (done.returncode, (tmp_path / "via-cli.bin").read_bytes() == local.read_bytes()) == (0, True), done.stderr
    assert asyncio.run(copy_to_device(ops, device_id(nosh), local, str(tmp_path / "allowed"))) == 300_000


def test_a_session_cannot_be_joined_by_another_device_or_operator_or_without_a_certificate(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term, nosh = world[0].plane, world[1]["term"], world[1]["nosh"]
    from edgefleet.web.channel import connect_channel
    from edgefleet.web.tls import tls_context

    other_operator = scoped_token(plane, Role.OPERATOR, "site in (store-*)")
    ca = plane.settings.pki.ca_cert
    opened = operator(plane).open(device_id(term), SessionRequest(verb="shell", command=["sleep 30"]))
    nosh_dir = nosh.device.agent_dir

    async def attacks() -> list[str]:
        outcomes = []
        # Another operator (its own valid token) cannot attach to this operator's session.
        intruder = await connect_channel(f"wss://127.0.0.1:{plane.server.port}{opened.attach}", tls_context(ca),
                                         headers={"authorization": f"Bearer {other_operator}"})
        assert await intruder.receive() is None
        outcomes.append(intruder.closed_reason)
        # Another device (its own valid certificate) cannot take the device's side; nor can
        # it name the device it is not (its certificate says who it is); nor can a caller
        # without a certificate. Refused at the handshake, the reason in the server's log only.
        nosh_tls = tls_context(ca, nosh_dir / "device.pem", nosh_dir / "device.key")
        wrong = await connect_channel(
            f"wss://127.0.0.1:{plane.server.port}/api/v1/devices/{device_id(nosh)}/sessions/{opened.id}", nosh_tls)
        assert await wrong.receive() is None
        outcomes.append(wrong.closed_reason)
        for device, context in ((device_id(term), nosh_tls), (device_id(term), tls_context(ca))):
            with pytest.raises(ServerRefused) as refused:
                await connect_channel(
                    f"wss://127.0.0.1:{plane.server.port}/api/v1/devices/{device}/sessions/{opened.id}", context)
            outcomes.append(str(refused.value.status))
        # The session's own operator still gets it, and a frame over the limit ends it.
        async with await operator(plane).attach(opened) as shell:
            await shell.send(b"")
            await shell._ws.send(b"x" * (MAX_FRAME_BYTES + 512))
            while (frame := await shell.receive()) is not None:
                if isinstance(frame, Ended):
                    outcomes.append(frame.reason)
            outcomes.append(shell.closed_reason)
        return outcomes

    outcomes = asyncio.run(attacks())
    assert outcomes[:4] == ["4404 no such session waiting for you", "4404 no such session offered to you", "403",
                            "403"]
    assert "over the limit" in " ".join(outcomes[4:])
    ended = eventually(lambda: [r for r in audit_rows(plane, device_id(term)) if r["details"].get("session")
                                == opened.id and r["action"].endswith("ended")], "the session's end audited")
    assert ended[0]["details"]["ended_by"] == "the operator sent a frame over the limit"


def test_more_sessions_at_once_than_one_check_in_offers_all_begin(
        world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]
    count = MAX_OFFERS + 8  # one answer carries MAX_OFFERS; the rest come with the next check-in

    async def run() -> list[int]:
        ops = operator(plane)
        request = SessionRequest(verb="shell", command=["read line; exit $line"])
        channels = await asyncio.gather(*(ops.session(device_id(term), request) for _ in range(count)))
        for number, channel in enumerate(channels):
            await channel.send(f"{number}\r".encode())
        codes = [(await exit_code(channel))[0] for channel in channels]
        for channel in channels:
            await channel.__aexit__()
        return codes

    assert asyncio.run(run()) == list(range(count))


def test_a_shell_that_cannot_be_recorded_is_not_opened(world: tuple[AbWorld, dict[str, EmulatedDevice]]) -> None:
    plane, term = world[0].plane, world[1]["term"]
    recordings = plane.settings.data_dir / "sessions"
    aside = recordings.with_name("sessions.aside")
    recordings.rename(aside)
    recordings.write_text("not a directory: no recording can be made here")
    try:
        with pytest.raises(SessionRefused) as refused:
            asyncio.run(operator(plane).session(device_id(term), SessionRequest(verb="shell")))
    finally:
        recordings.unlink()
        aside.rename(recordings)
    assert "recording cannot be made" in refused.value.message
    ended = eventually(lambda: [r for r in audit_rows(plane, device_id(term)) if r["action"] == "session shell ended"
                                and "recording" in (r["details"]["ended_by"] or "")], "the refusal audited")
    assert ended[0]["details"]["bytes_out"] == 0

"""The ``edgefleet`` command: help, layered settings, and the operator's path end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import pytest
import typer
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.cli.app import COMMANDS as LAZY_COMMANDS
from edgefleet.cli.app import load_command
from edgefleet.errors import ConfigError
from edgefleet.server import ServerSettings
from edgefleet.settings import load_settings


def _every_command() -> list[list[str]]:
    """Every command and group of the ``edgefleet`` tree, as the argv that names it."""
    found: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        found.append(path)
        if not hasattr(command, "list_commands"):
            return
        context = typer.Context(command)  # type: ignore[arg-type]
        for name in sorted(command.list_commands(context)):  # the root group loads its commands here
            walk(command.get_command(context, name), [*path, name])  # type: ignore[arg-type]

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = _every_command()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgefleet")
def test_every_command_explains_itself_with_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert len(result.output.splitlines()) > 5


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_the_root_helps_summary_of_each_command_agrees_with_the_commands_own_help(name: str) -> None:
    summary = LAZY_COMMANDS[name][2]
    own = (load_command(name).help or "").strip()
    assert summary.strip()
    assert "\n" not in summary
    if isinstance(load_command(name), click.Group):
        assert summary == own  # a group's help is one line already
    else:  # a command's docstring, said shorter: it starts the same way
        assert own.split()[:2] == summary.split()[:2], (own, summary)


@pytest.mark.parametrize("module", ["edgefleet.agent", "edgefleet.agent.evidence"])
def test_the_device_entry_points_explain_themselves_without_the_command_line(module: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_device_agent_entry_point_loads_neither_the_cli_nor_the_server() -> None:
    # Under emulation (and on small devices) every imported module costs seconds.
    probe = ("import sys, edgefleet.agent.__main__; "
             "print(sorted(m for m in sys.modules if m.startswith(('edgefleet.cli', 'edgefleet.server', "
             "'fastapi', 'typer'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_flags_win_over_environment_which_wins_over_the_file(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "server.toml"
    config.write_text('port = 1001\nhost = "0.0.0.0"\nfleet_name = "from-file"\n')
    monkeypatch.setenv("EDGEFLEET_PORT", "2002")
    monkeypatch.setenv("EDGEFLEET_HOST", "127.0.0.2")
    settings = load_settings(ServerSettings, config, {"port": 3003, "host": None})
    assert (settings.port, settings.host, settings.fleet_name) == (3003, "127.0.0.2", "from-file")
    monkeypatch.delenv("EDGEFLEET_PORT")
    assert load_settings(ServerSettings, config, {}).port == 1001


def test_bad_settings_are_a_clear_config_error(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("port = 99999\n")
    with pytest.raises(ConfigError, match="port"):
        load_settings(ServerSettings, config, {})
    config.write_text("prot = 8443\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(ServerSettings, config, {})
    config.write_text("port = \n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(ServerSettings, config, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(ServerSettings, tmp_path / "missing.toml", {})


def test_server_refuses_to_start_without_init(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["server", "--data-dir", str(tmp_path / "empty"), "--port", "0"])
    assert result.exit_code == 2
    assert "edgefleet server init" in result.output


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgefleet", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_operator_path_init_serve_tokens_devices_and_graceful_stop(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = tmp_path / "data"
    db = [] if backend == "sqlite" else ["--database-url", request.getfixturevalue("postgres_url")]
    init = _cli("server", "init", "--data-dir", str(data))
    assert init.returncode == 0, init.stderr
    admin = _cli("tokens", "create-admin", "--data-dir", str(data), *db, "--name", "ops", "--role", "operator")
    assert admin.returncode == 0, admin.stderr
    token = admin.stdout.strip()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgefleet", "server", "--data-dir", str(data), *db,
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                ca = ssl.create_default_context(cafile=data / "pki" / "ca.pem")
                if httpx.get(f"{url}/readyz", verify=ca).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.1)
        env = {"EDGEFLEET_SERVER_URL": url, "EDGEFLEET_ADMIN_TOKEN": token,
               "EDGEFLEET_CA_FILE": str(data / "pki" / "ca.pem")}
        created = _cli("tokens", "create", "--site", "store-9", "--labels", "ring=canary", env=env)
        assert created.returncode == 0, created.stderr
        assert created.stdout.strip().startswith("efb_")
        listed = _cli("devices", "ls", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "total" in json.loads(listed.stdout)
        wrong = _cli("devices", "ls", env={**env, "EDGEFLEET_ADMIN_TOKEN": "efa_" + "0" * 16 + "_" + "A" * 43})
        assert wrong.returncode == 1
        assert "401" in wrong.stderr
        server.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once shut down; systemd counts that as a clean stop.
        assert server.wait(20) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
        output = server.communicate()[0]
    assert "Waiting for application shutdown" in output
    assert "control plane stopped" in output


def test_the_readmes_agent_settings_are_valid_as_written_and_name_the_tpm(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("# /etc/edgefleet/agent.toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "agent.toml").write_text(block)
    from edgefleet.agent import AgentSettings

    settings = load_settings(AgentSettings, tmp_path / "agent.toml", {})
    assert settings.tpm == "device:/dev/tpmrm0"  # without it the server refuses a device that cannot attest
    assert settings.bootstrap_token_file is not None


def test_the_readmes_sign_in_settings_are_valid_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [part.split("\n", 1)[1].split("```", 1)[0] for part in readme.split("# /etc/edgefleet/server.toml")[1:]]
    (block,) = [b for b in blocks if "[oidc]" in b]
    (tmp_path / "server.toml").write_text(block)
    from edgefleet.server.settings import ServerSettings

    settings = load_settings(ServerSettings, tmp_path / "server.toml", {})
    assert settings.oidc is not None
    assert settings.oidc.roles["store-ops"] == "operator"
    assert settings.oidc.scopes["store-ops"] == "site in (berlin-*)"

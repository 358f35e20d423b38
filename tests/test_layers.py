"""The package layers hold: the hub and the agent load no control-plane code, the shared
HTTP layer and the wire contract depend on none of their users (the contracts are in
pyproject.toml, checked by import-linter), and a command loads only what it runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from edgefleet.cli.app import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_in_pyproject_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def imported_modules(*argv: str) -> set[str]:
    """The modules ``python -X importtime -m edgefleet ARGV`` imports."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgefleet", *argv], capture_output=True,
                            text=True, check=True)
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
            and "|" in line}


def test_the_hub_command_loads_neither_the_control_plane_nor_sqlalchemy() -> None:
    modules = imported_modules("hub", "--help")
    assert "edgefleet.hub.loop" in modules  # the hub command was loaded
    assert not {m for m in modules if m.split(".")[0] in ("sqlalchemy", "alembic")}
    assert not {m for m in modules if m.startswith(("edgefleet.server", "edgefleet.store", "edgefleet.agent"))}


def test_the_version_flag_loads_no_subcommand() -> None:
    modules = imported_modules("--version")
    assert "edgefleet.cli.app" in modules
    assert not {m for m in modules if m.startswith(("edgefleet.cli.common", "edgefleet.server", "edgefleet.hub",
                                                    "edgefleet.agent", "edgefleet.demo", "sqlalchemy"))}


def test_the_root_help_lists_every_command_and_loads_none() -> None:
    modules = imported_modules("--help")
    assert not {m for m in modules if m.startswith("edgefleet.cli.") and m.endswith("_cmd")}
    assert not {m for m in modules if m.startswith(("edgefleet.server", "edgefleet.hub", "edgefleet.agent",
                                                    "sqlalchemy"))}
    shown = subprocess.run([sys.executable, "-m", "edgefleet", "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert all(f" {name} " in shown for name in COMMANDS)


STORE_WRITERS = {"set_desired", "set_desired_many"}  # edgefleet.store.devices: the desired document's writes
ONE_WRITER = {"edgefleet/server/desired.py", "edgefleet/store/devices.py"}  # the writer, and the store


def _writes_desired(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").endswith("store.devices") and any(a.name in STORE_WRITERS for a in node.names)
    if isinstance(node, ast.Name):
        return node.id in STORE_WRITERS
    if isinstance(node, ast.Attribute):  # the module's function, not the admin client's method
        return node.attr in STORE_WRITERS and isinstance(node.value, ast.Name) and node.value.id == "devices"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
        return any(k.arg in ("desired", "desired_version") for k in node.keywords)
    return False


def desired_writes(source: str) -> list[int]:
    """Lines of ``source`` that import or name one of the store's desired-state writers, or
    set a ``desired`` column in an SQL statement."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source)) if _writes_desired(node)})


def test_only_the_one_writer_changes_a_devices_stored_desired_document() -> None:
    src = ROOT / "src"
    offenders = {str(path.relative_to(src)): lines for path in sorted(src.rglob("*.py"))
                 if str(path.relative_to(src)) not in ONE_WRITER
                 and (lines := desired_writes(path.read_text()))}
    assert offenders == {}, f"desired state written outside server/desired.py: {offenders}"
    # The check itself finds what it looks for.
    assert desired_writes("from edgefleet.store.devices import set_desired\n") == [1]
    assert desired_writes("await devices.set_desired_many(conn, docs, now)\n") == [1]
    assert desired_writes("admin.set_desired(device_id, document)\n") == []  # over the API: the writer runs
    assert desired_writes("update(Device).values(desired={}, desired_at=now)\n") == [1]


def package_imports(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (anywhere in it: functions and
    ``if TYPE_CHECKING`` too), with ``from a.b import c`` read as a.b.c when c is a module."""
    base = ROOT / "src"
    modules = {".".join(p.relative_to(base).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (base / package.replace(".", "/")).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, if it has one."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            found = visit(target, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    return next((c for c in (visit(n, []) for n in sorted(graph)) if c), None)


def test_the_agents_modules_import_each_other_without_a_cycle() -> None:
    assert cycle_in(package_imports("edgefleet.agent")) is None
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check finds one


AGENT_MODULE_MAX_LINES = 430  # about 400: a module past it has taken on a second job


def test_no_module_of_the_agent_grows_past_about_four_hundred_lines() -> None:
    agent = ROOT / "src" / "edgefleet" / "agent"
    sizes = {path.relative_to(agent).as_posix(): len(path.read_text().splitlines()) for path in agent.rglob("*.py")}
    assert len(sizes) > 20  # it reads the agent
    assert "daemon.py" in sizes
    assert {name: lines for name, lines in sizes.items() if lines > AGENT_MODULE_MAX_LINES} == {}

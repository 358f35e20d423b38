"""The control plane under simulation: ``edgefleet server`` processes sharing one port
(SO_REUSEPORT, the kernel as the load balancer) and one database, each sampled for CPU and
memory from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx

from edgefleet.errors import ConfigError
from edgefleet.server.settings import ServerSettings
from edgefleet.util.ports import free_port
from edgefleet.web.tls import tls_context

# where the simulator creates (and afterwards drops) a database of its own for each run
POSTGRES_ADMIN_URL = os.environ.get("EDGEFLEET_SIM_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")



@dataclass(frozen=True)
class ProcessSample:
    cpu_seconds: float
    rss_bytes: int


def sample_process(pid: int) -> ProcessSample | None:
    """CPU seconds used so far and resident memory, from /proc; None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return ProcessSample((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
                         rss_pages * os.sysconf("SC_PAGE_SIZE"))


async def create_postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> tuple[str, str]:
    """A new, empty database; (its name, its SQLAlchemy URL)."""
    name = f"edgefleet_sim_{secrets.token_hex(4)}"
    try:
        conn = await asyncpg.connect(admin_url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigError(f"cannot reach PostgreSQL at {admin_url}: {exc}") from exc
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return name, f"{base}/{name}"


async def drop_postgres_database(name: str, admin_url: str = POSTGRES_ADMIN_URL) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class ServerPool:
    """``processes`` control plane processes on one port and one database."""

    settings: ServerSettings
    processes: int
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    port: int = 0
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    command_prefix: list[str] = field(default_factory=lambda: [sys.executable])  # e.g. under a profiler

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> ServerPool:
        """Start the processes one after another (each applies migrations, safely), and
        return when every one of them listens and the pool answers ready.

        Raises:
            ConfigError: a process exited or did not get ready within ``timeout``.
        """
        if self.processes > 1 and self.settings.database_url is None:
            raise ConfigError("several server processes need PostgreSQL (SQLite serves one process)")
        self.port = self.port or free_port()
        command = [*self.command_prefix, "-m", "edgefleet", "server", "--data-dir", str(self.settings.data_dir),
                   "--port", str(self.port), "--reuse-port", "--log-level", self.settings.log_level]
        if self.settings.database_url:
            command += ["--database-url", self.settings.database_url]
        # Which TPMs the processes trust is the pool's settings' choice (the simulator's
        # software TPMs are trusted on first use), unless the caller's env says otherwise.
        env = {**os.environ, "EDGEFLEET_EK_TRUST": self.settings.ek_trust, **self.env}
        for index in range(self.processes):
            log = self.log_dir / f"server-{index}.log" if self.log_dir else None
            proc = await _spawn(command, env, log)
            self.procs.append(proc)
            await self._wait_listening(proc, timeout)
        await self._wait_ready(timeout)
        return self

    async def _wait_listening(self, proc: asyncio.subprocess.Process, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not _listens(proc.pid, self.port):
            if proc.returncode is not None or loop.time() > deadline:
                raise ConfigError(f"server process {proc.pid} did not start (exit {proc.returncode}); see its log")
            await asyncio.sleep(0.1)

    async def _wait_ready(self, timeout: float) -> None:
        """Each process answers /readyz once its startup (migrations) is done; ask until
        enough answers in a row say ready that every process has most likely said so."""
        context = tls_context(self.settings.pki.ca_cert)
        loop = asyncio.get_running_loop()
        deadline, streak = loop.time() + timeout, 0
        while streak < 4 * self.processes:
            try:
                async with httpx.AsyncClient(verify=context, timeout=5) as fresh:  # a new connection each time
                    ok = (await fresh.get(f"{self.url}/readyz")).status_code == 200
            except httpx.TransportError:
                ok = False
            streak = streak + 1 if ok else 0
            if loop.time() > deadline:
                raise ConfigError(f"the control plane at {self.url} did not get ready in {timeout:.0f} s")
            if not ok:
                await asyncio.sleep(0.2)

    def samples(self) -> list[ProcessSample]:
        return [s for s in (sample_process(p.pid) for p in self.procs if p.returncode is None) if s is not None]

    async def stop(self, timeout: float = 30.0, *, sig: int = signal.SIGTERM) -> None:
        """Ask each process to stop with ``sig`` (SIGINT lets a profiler wrapping the
        server write its profile: uvicorn re-raises the signal once it has shut down)."""
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _spawn(command: list[str], env: dict[str, str], log: Path | None) -> asyncio.subprocess.Process:
    """Start ``command`` with its output appended to ``log`` (or dropped)."""
    if log is None:
        return await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.DEVNULL)
    handle = await asyncio.to_thread(open, log, "ab")
    try:
        return await asyncio.create_subprocess_exec(*command, env=env, stdout=handle, stderr=asyncio.subprocess.STDOUT)
    finally:
        handle.close()


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False

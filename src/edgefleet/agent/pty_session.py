"""A shell (or one command) on a real pseudo-terminal, for a remote session: keystrokes in,
output out, resizes, the exit code. The process leads a session of its own with the PTY
as its controlling terminal, so Ctrl-C reaches its foreground job as at a console. When
the session ends any other way (the link dropped, the agent stops), every process of that
session is killed: nothing an operator started outlives the channel."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import signal
import struct
import subprocess
import termios
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

log = logging.getLogger("edgefleet.agent.remote")
READ_BYTES = 16 * 1024
KILL_GRACE_SECONDS = 2.0


def login_shell() -> str:
    shell = pwd.getpwuid(os.getuid()).pw_shell
    return shell if shell and os.access(shell, os.X_OK) and not shell.endswith(("nologin", "false")) else "/bin/sh"


def argv_for(command: Sequence[str]) -> list[str]:
    """A login shell, or ``command`` run by the shell as ssh runs one (words joined)."""
    shell = login_shell()
    return [shell, "-l"] if not command else [shell, "-c", " ".join(command)]


def set_size(fd: int, cols: int, rows: int) -> None:
    """The terminal's size; the kernel tells the foreground job (SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _controlling_tty() -> None:  # in the child, after setsid(): stdin is the PTY
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def session_members(session_id: int) -> list[int]:
    """Every process whose session is ``session_id`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == session_id:  # field 6 of proc(5): session
            found.append(int(entry.name))
    return found


def kill_session(session_id: int, sig: int = signal.SIGKILL) -> None:
    for pid in session_members(session_id):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class PtyProcess:
    """One process on its own PTY. ``output`` is called with what it prints, in order."""

    def __init__(self, argv: Sequence[str], *, cols: int, rows: int, env: dict[str, str]) -> None:
        self._master, slave = os.openpty()
        set_size(self._master, cols, rows)
        try:
            home = env.get("HOME", "/")
            self.process = subprocess.Popen(  # noqa: S603 - the operator's command, on purpose
                list(argv), stdin=slave, stdout=slave, stderr=slave, env=env, cwd=home if os.path.isdir(home) else "/",
                start_new_session=True, preexec_fn=_controlling_tty, close_fds=True)
        finally:
            os.close(slave)
        os.set_blocking(self._master, False)
        self.pid = self.process.pid

    def resize(self, cols: int, rows: int) -> None:
        set_size(self._master, cols, rows)

    async def write(self, data: bytes) -> None:
        while data:
            try:
                written = os.write(self._master, data)
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the terminal's input queue is full: the program reads slowly
                continue
            except OSError:
                return  # the terminal closed: the process is gone
            data = data[written:]

    async def pump_output(self, output: Callable[[bytes], Awaitable[None]]) -> None:
        """Hand every output to ``output`` until the terminal closes (the last process
        holding it ended)."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(self._master, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(self._master, READ_BYTES)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: no process holds the terminal any longer
                    return
                if not data:
                    return
                await output(data)
        finally:
            loop.remove_reader(self._master)

    async def wait(self) -> int:
        """The exit code (128 + the signal for a process a signal ended)."""
        if self.process.poll() is None:
            # A pidfd turns readable when the process exits: no polling, no thread.
            pidfd = os.pidfd_open(self.pid)
            ended = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_reader(pidfd, ended.set)
            try:
                if self.process.poll() is None:
                    await ended.wait()
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        code = self.process.wait()
        return 128 - code if code < 0 else code

    async def end(self) -> None:
        """Hang up on the whole session, then kill whatever is left of it; reap the leader.
        Cancelled while it waits for the hang-up (the agent stops), it still kills and
        reaps: the grace period is what a cancellation cuts short, never the cleanup."""
        try:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGHUP)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wait(), KILL_GRACE_SECONDS)
        finally:
            kill_session(self.pid)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()  # SIGKILL cannot be caught: the leader is gone at once
            with contextlib.suppress(OSError):
                os.close(self._master)

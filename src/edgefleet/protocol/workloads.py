"""Workloads as a group's configuration declares them, and as a device reports them.

A workload's code is a signed release artifact: ``target`` names a target of the image
repository (TUF), and the device runs exactly those bytes or nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from edgefleet.protocol.v1 import Name, ShortText, Strict

TargetPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,254}$")]
GuestPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/-]{0,254}$")]
Relative = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class Limits(Strict):
    memory_mib: Annotated[int, Field(ge=1, le=65536)] = 64  # linear memory, all of the module's
    fuel: Annotated[int, Field(ge=1)] | None = None  # instructions (wasmtime fuel) per run
    wall_seconds: Annotated[float, Field(gt=0, le=31 * 86400)] | None = None  # per run


class Directory(Strict):
    """A directory of the device's workload data (``<data>/<name>/<host>``), preopened."""

    host: Relative
    guest: GuestPath
    writable: bool = False


class Restart(Strict):
    policy: Literal["always", "on-failure", "never"] = "on-failure"
    initial_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    max_seconds: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # A run that lasted this long resets the backoff: the workload was not crash-looping.
    stable_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0


class WorkloadSpec(Strict):
    name: Name
    kind: Literal["wasm"]
    target: TargetPath
    args: Annotated[list[ShortText], Field(max_length=64)] = []
    env: Annotated[dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], ShortText],
                   Field(max_length=64)] = {}
    dirs: Annotated[list[Directory], Field(max_length=16)] = []
    limits: Limits = Limits()
    restart: Restart = Restart()


State = Literal["starting", "running", "backing_off", "exited", "stopped", "refused"]
Reason = Literal["exited", "crashed", "memory_limit", "cpu_limit", "wall_time", "stopped", "refused"]


class WorkloadStatus(Strict):
    name: Name
    kind: str
    target: str
    sha256: str | None  # of the bytes that run (or were refused)
    state: State
    restarts: int = 0
    last_exit: Reason | None = None
    exit_code: int | None = None
    detail: str | None = None  # why it last stopped, or why it was refused
    output: list[str] = []  # its last lines of stdout and stderr
    update_refused: str | None = None  # why the version declared now does not run instead

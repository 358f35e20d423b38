"""Workloads as a group's configuration declares them, and as a device reports them.

A workload's code is signed release artifacts: each target path names a target of the
image repository (TUF), and the device runs exactly those bytes or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from edgefleet.protocol.base import MAX_INT, Audience, Count, Name, ShortText, Strict
from edgefleet.protocol.hashing import declared_workloads

TargetPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,254}$")]
GuestPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/-]{0,254}$")]
Relative = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Marker = Annotated[str, StringConstraints(min_length=4, max_length=64)]  # a health marker in a workload's output


class Limits(Strict):
    memory_mib: Annotated[int, Field(ge=1, le=65536)] = 64  # linear memory, all of the module's
    fuel: Annotated[int, Field(ge=1, le=MAX_INT)] | None = None  # instructions (wasmtime fuel) per run
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


class TokenFile(Strict):
    """A workload token (JWT-SVID) the agent keeps fresh in ``<data>/<name>/tokens/<path>``
    while the device is attested: for the one service ``audience`` names."""

    path: Relative
    audience: Audience


TokenFiles = Annotated[list[TokenFile], Field(max_length=8)]


class WasmWorkload(Strict):
    """A WebAssembly module run under WASI."""

    name: Name
    kind: Literal["wasm"]
    target: TargetPath
    args: Annotated[list[ShortText], Field(max_length=64)] = []
    env: Annotated[dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], ShortText],
                   Field(max_length=64)] = {}
    dirs: Annotated[list[Directory], Field(max_length=16)] = []
    limits: Limits = Limits()
    restart: Restart = Restart()
    health_marker: Marker | None = None  # healthy once a line of its output holds this (no signal without)
    tokens: TokenFiles = []  # preopen ``tokens`` (a ``dirs`` entry) to read them

    @property
    def targets(self) -> list[str]:
        return [self.target]


class MicroVmWorkload(Strict):
    """A microVM: a kernel and an initramfs (its root filesystem), both signed targets,
    booted by QEMU's ``microvm`` machine. It is healthy once its serial console prints
    ``health_marker`` on a line."""

    name: Name
    kind: Literal["microvm"]
    kernel: TargetPath
    initrd: TargetPath
    cmdline: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 ._=,:/+-]{0,512}$")] = ""
    vcpus: Annotated[int, Field(ge=1, le=64)] = 1
    memory_mib: Annotated[int, Field(ge=32, le=262144)] = 128
    health_marker: Marker = "EDGEFLEET-HEALTHY"
    restart: Restart = Restart()

    @property
    def targets(self) -> list[str]:
        return [self.kernel, self.initrd]


class NativeLimits(Strict):
    memory_mib: Annotated[int, Field(ge=1, le=262144)] | None = None  # address space (RLIMIT_AS)
    cpu_seconds: Annotated[int, Field(ge=1, le=31 * 86400)] | None = None  # CPU time per run (RLIMIT_CPU)
    wall_seconds: Annotated[float, Field(gt=0, le=31 * 86400)] | None = None  # per run


class NativeWorkload(Strict):
    """A native service: a program run as a child process of the agent, in a session of
    its own, in ``<data>/<name>`` with only the declared environment. The program is a
    signed artifact (``target``; ``command`` are its arguments) or, without one, a program
    of the device's signed OS image (``command[0]``, an absolute path)."""

    name: Name
    kind: Literal["native"]
    target: TargetPath | None = None
    command: Annotated[list[ShortText], Field(max_length=64)] = []
    env: Annotated[dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], ShortText],
                   Field(max_length=64)] = {}
    limits: NativeLimits = NativeLimits()
    restart: Restart = Restart()
    health_marker: Marker | None = None  # healthy once a line of its output holds this (no signal without)
    tokens: TokenFiles = []  # in ``tokens/`` of its working directory

    @model_validator(mode="after")
    def _a_program(self) -> NativeWorkload:
        if self.target is None and (not self.command or not self.command[0].startswith("/")):
            raise ValueError("a native service needs a target, or a command whose first word is an absolute path")
        return self

    @property
    def targets(self) -> list[str]:
        return [self.target] if self.target else []


WorkloadSpec: TypeAlias = Annotated[WasmWorkload | MicroVmWorkload | NativeWorkload, Field(discriminator="kind")]

# A workload's kind as a configuration names it (GitOps renders it so) -> its spec's kind.
RENDERED_KINDS = {"WasmModule": "wasm", "MicroVM": "microvm", "NativeService": "native"}
_SPEC: TypeAdapter[WorkloadSpec] = TypeAdapter(WorkloadSpec)


def declared(config: Mapping[str, Any]) -> tuple[list[tuple[Mapping[str, Any], WorkloadSpec]], list[str]]:
    """The workloads a configuration declares, each with its entry and its spec, and why
    any invalid one is left out (its name, the field, what is wrong). The server refuses a
    configuration with an invalid workload; the agent runs the valid ones and says why it
    left the others out."""
    found: list[tuple[Mapping[str, Any], WorkloadSpec]] = []
    invalid = []
    for entry in declared_workloads(config):
        kind = entry.get("kind")
        if not isinstance(kind, str) or kind not in RENDERED_KINDS:
            invalid.append(f"{entry.get('name')}: kind {kind!r} is not one of {', '.join(RENDERED_KINDS)}")
            continue
        try:
            found.append((entry, _SPEC.validate_python({**entry, "kind": RENDERED_KINDS[kind]})))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"][1:]))  # past the kind's tag
            invalid.append(f"{entry.get('name')}: {where + ': ' if where else ''}{first['msg']}")
    return found, invalid


OUTPUT_LINES = 5  # a workload's last lines of output in its status (a status report is at most 64 KiB)
OUTPUT_WIDTH = 200  # characters kept of each

State = Literal["starting", "running", "backing_off", "exited", "stopped", "refused"]
Reason = Literal["exited", "crashed", "memory_limit", "cpu_limit", "wall_time", "stopped", "refused"]


def failed_run(reason: str, exit_code: int | None) -> bool:
    """Did a run end badly? Only a clean exit (code 0) and a stop that was asked for did not."""
    return reason != "stopped" and (reason != "exited" or exit_code not in (0, None))


class WorkloadStatus(Strict):
    name: Name
    kind: str
    targets: list[str]
    sha256: str | None  # of the bytes that run: one artifact's sha256, or that of several's in order
    state: State
    restarts: Count = 0
    last_exit: Reason | None = None
    exit_code: Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)] | None = None
    detail: Annotated[str, StringConstraints(max_length=1000)] | None = None  # why it last stopped, or was refused
    output: Annotated[list[Annotated[str, StringConstraints(max_length=OUTPUT_WIDTH)]],
                      Field(max_length=OUTPUT_LINES)] = []  # its last lines of stdout and stderr
    # why the version declared now does not run instead
    update_refused: Annotated[str, StringConstraints(max_length=1000)] | None = None
    healthy: bool | None = None  # None: the workload has no health signal

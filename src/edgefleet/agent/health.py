"""Health checks on a trial boot, with greenboot's semantics: a failed *required* check
rolls the update back, a failed *wanted* check is reported and tolerated.

Kinds: ``command`` (exit status 0), ``http`` (a 2xx answer), ``systemd`` (the unit is
active), ``workloads`` (every workload of the device's configuration runs, healthy: the
agent answers it; it waits for them up to its timeout). Every check has a timeout; a
check still running at its timeout has failed (a hung command is killed with its whole
process group).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.errors import InvalidRequest


class HealthCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    kind: Literal["command", "http", "systemd", "workloads"]
    required: bool = True
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    command: Annotated[list[str], Field(min_length=1, max_length=64)] | None = None
    url: Annotated[str, Field(max_length=2048)] | None = None
    unit: Annotated[str, Field(max_length=256)] | None = None

    @model_validator(mode="after")
    def _target(self) -> HealthCheck:
        needs = {"command": self.command, "http": self.url, "systemd": self.unit, "workloads": True}
        if needs[self.kind] is None:
            field = {"command": "command", "http": "url", "systemd": "unit"}[self.kind]
            raise ValueError(f"a {self.kind} check needs '{field}'")
        return self


def parse_checks(specs: Iterable[Mapping[str, Any]]) -> list[HealthCheck]:
    """Raises InvalidRequest naming the first check that is malformed."""
    checks = []
    for spec in specs:
        try:
            checks.append(HealthCheck.model_validate(spec))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidRequest(f"health check {spec.get('name', '?')!r}: {first['msg']}",
                                 code="invalid_health_check") from exc
    return checks


@dataclass(frozen=True)
class CheckResult:
    name: str
    required: bool
    passed: bool
    detail: str
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "required": self.required, "passed": self.passed, "detail": self.detail[:200],
                "seconds": round(self.seconds, 3)}


def _command(argv: list[str], timeout: float, cancel: threading.Event) -> tuple[bool, str]:
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                                   stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return False, f"cannot run {argv[0]}: {exc.strerror or exc}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, err = process.communicate(timeout=min(0.2, max(deadline - time.monotonic(), 0.01)))
            break
        except subprocess.TimeoutExpired:
            if cancel.is_set() or time.monotonic() >= deadline:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                if cancel.is_set():
                    return False, "cancelled: the trial was rolled back"
                return False, f"hung: still running after {timeout:g}s, killed"
    if process.returncode == 0:
        return True, "exit 0"
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return False, f"exit {process.returncode} {tail[0]}".strip()


def _http(url: str, timeout: float) -> tuple[bool, str]:
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"{exc.__class__.__name__}: {exc}"
    return response.is_success, f"HTTP {response.status_code}"


Probe = Callable[[float, threading.Event], tuple[bool, str]]  # (timeout, cancel) -> passed, detail


def run_check(check: HealthCheck, cancel: threading.Event | None = None, workloads: Probe | None = None) -> CheckResult:
    """Runs ``check`` with its timeout enforced around the whole check, not per phase;
    ``cancel`` kills a running command (the trial was rolled back meanwhile);
    ``workloads`` answers a ``workloads`` check."""
    cancel = cancel or threading.Event()
    started = time.monotonic()
    outcome: list[tuple[bool, str]] = []

    def work() -> None:
        if check.kind == "command":
            assert check.command is not None
            outcome.append(_command(check.command, check.timeout_seconds, cancel))
        elif check.kind == "workloads":
            outcome.append(workloads(check.timeout_seconds, cancel) if workloads is not None
                           else (False, "this agent supervises no workloads"))
        elif check.kind == "systemd":
            assert check.unit is not None
            outcome.append(_command(["systemctl", "is-active", "--quiet", check.unit], check.timeout_seconds,
                                    cancel))
        else:
            assert check.url is not None
            outcome.append(_http(check.url, check.timeout_seconds))

    worker = threading.Thread(target=work, name=f"health-{check.name}", daemon=True)
    worker.start()
    worker.join(check.timeout_seconds + 1.0)  # commands kill themselves at the timeout
    passed, detail = outcome[0] if outcome else (False, f"hung: no answer after {check.timeout_seconds:g}s")
    return CheckResult(check.name, check.required, passed, detail, time.monotonic() - started)


def run_checks(checks: Iterable[HealthCheck], cancel: threading.Event | None = None,
               workloads: Probe | None = None) -> list[CheckResult]:
    return [run_check(check, cancel, workloads) for check in checks]


def verdict(results: Iterable[CheckResult]) -> str | None:
    """None when every required check passed, else why not."""
    failed = [r for r in results if r.required and not r.passed]
    if not failed:
        return None
    return "required health check failed: " + "; ".join(f"{r.name} ({r.detail})" for r in failed)

"""Acting on the desired state's configuration: the OS configuration, the workloads and the
Kubernetes manifests, each only as the director signed it, and what runs reported back."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet.agent import osconfig
from edgefleet.agent.health import Probe
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import AgentState
from edgefleet.agent.updates import UpdateClient
from edgefleet.agent.workload_tokens import TokenKeeper, wanted_tokens
from edgefleet.clock import Clock
from edgefleet.errors import TransportError, UpdateRefused
from edgefleet.protocol.desired import DesiredDocument, known_parts
from edgefleet.protocol.hashing import canonical, workload_part
from edgefleet.protocol.v1 import ConfigReport
from edgefleet.protocol.workload_verdicts import Verdict, judge
from edgefleet.protocol.workloads import WorkloadStatus, declared
from edgefleet.workloads.kubernetes import ManifestSync
from edgefleet.workloads.supervisor import Supervisor

log = logging.getLogger("edgefleet.agent")

# The parts of a desired state a device acts on: the release (which the director's signed
# metadata names again) and the configuration (which must be the director's signed config
# target). Anything else steers nothing.
SIGNED_PARTS = frozenset(DesiredDocument.model_fields)


def usable(document: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The desired state as the agent keeps it: its release and configuration only when
    they are a valid ``DesiredDocument`` (the model the server writes with), else left out,
    with why. Anything else is kept, to be reported as ignored."""
    try:
        DesiredDocument.model_validate(known_parts(document))
    except ValidationError as exc:
        first = exc.errors()[0]
        why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        return {k: v for k, v in document.items() if k not in SIGNED_PARTS}, why
    return document, None


def director_signed(config: dict[str, object], updates: UpdateClient) -> bool:
    """Is ``config`` exactly the director's signed config target (length and sha256 of its
    canonical bytes)?"""
    signed = updates.assigned_config()
    data = canonical(config)
    return signed is not None and signed.length == len(data) and \
        signed.hashes.get("sha256") == hashlib.sha256(data).hexdigest()


class Configuration:
    """What the device runs of its configuration. ``workloads`` and ``tokens`` are set once
    the agent is enrolled; ``on_unsigned`` hears when what the device ignores changes (a
    health finding)."""

    def __init__(self, settings: AgentSettings, os_config_dir: Path, clock: Clock,
                 on_unsigned: Callable[[], None]) -> None:
        self.settings, self.os_config_dir, self.clock, self.on_unsigned = settings, os_config_dir, clock, on_unsigned
        self.workloads: Supervisor | None = None
        self.tokens: TokenKeeper | None = None  # only on a device that attests and verifies what it runs
        self.manifests = (ManifestSync(settings.kubernetes, settings.kubeconfig, settings.kubernetes_git_dir,
                                       settings.kubernetes_resync_seconds) if settings.kubernetes != "off" else None)
        self.applied = -1  # the desired state version whose configuration the agent has acted on
        self.unsigned: str | None = None  # what the desired state holds that the director did not sign (ignored)
        self.invalid_desired: str | None = None  # why the last desired state's signed parts were left out
        self.invalid_workloads: str | None = None  # which workloads of the signed configuration are left out, why
        self._workloads_changed: set[str] = set()  # workloads whose kept artifacts changed on disk, unreported

    def apply_os_config(self, state: AgentState, updates: UpdateClient | None) -> None:
        """Put the rendered OS configuration in place when it differs from what is there.

        The configuration must be exactly the director's signed config target (length and
        sha256 of its canonical bytes); otherwise it waits. A device without TUF roots
        applies none (fail closed).
        """
        config = state.desired.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("os"), dict):
            return
        if osconfig.in_sync(self.os_config_dir, config["os"]):
            return
        if updates is None or not director_signed(config, updates):
            log.warning("configuration in the desired state is not what the director signed; not applied")
            state.update_error = "config_not_signed"
            return
        osconfig.apply(self.os_config_dir, config["os"], instance=str(config.get("os_hash", ""))[:16])
        log.info("applied OS configuration of commit %s", (config.get("commits") or {}))

    def mark_applied(self, state: AgentState, updates: UpdateClient) -> bool:
        """The agent has acted on the desired state it holds, unless its configuration waits
        for the director's signature; returns whether it has."""
        config = state.desired.get("config")
        signed = not isinstance(config, dict) or director_signed(config, updates)
        self._note_unsigned(state, signed)
        if state.desired_version < 0 or not signed:
            return False
        self.applied = state.desired_version
        return True

    def _note_unsigned(self, state: AgentState, config_signed: bool) -> None:
        """Say (a health finding, and the log once) what of the desired state this device
        ignores because the director did not sign it: a configuration other than the signed
        one, or any instruction outside it (an older server's unsigned ``update`` or
        ``maintenance``, or a forged one)."""
        ignored = ([] if config_signed else ["config"]) + sorted(set(state.desired) - SIGNED_PARTS)
        reasons = ([f"not signed by the director, ignored: {', '.join(ignored)}"] if ignored else []) + (
            [f"not a valid desired state, ignored: {self.invalid_desired}"] if self.invalid_desired else [])
        why = "; ".join(reasons) or None
        if why != self.unsigned:
            if why is not None:
                log.warning("desired state version %d: %s", state.desired_version, why)
            self.unsigned = why
            self.on_unsigned()

    async def apply_workloads(self, state: AgentState, updates: UpdateClient) -> None:
        """Run exactly the workloads of the director-signed configuration, their artifacts
        fetched from the image repository and verified. A workload whose artifacts cannot
        be fetched now keeps running as it is; one that does not verify is refused."""
        config = state.desired.get("config")
        if self.workloads is None:
            return
        if not isinstance(config, dict):
            self._note_invalid([])
            return
        found, invalid = declared(config)
        if not found and not invalid and self.workloads.idle:
            self._note_invalid([])
            return
        if not director_signed(config, updates):
            return  # the configuration step logs and reports it
        self._note_invalid(invalid)
        if self.tokens is not None:
            self.tokens.want(wanted_tokens(spec for _, spec in found))
        wanted, keep = [], set()
        for _, spec in found:
            try:
                artifacts, changed = await asyncio.to_thread(updates.artifacts, spec.targets)
            except UpdateRefused as exc:
                self.workloads.refuse(spec, exc.message)
                keep.add(spec.name)
                continue
            except TransportError as exc:
                log.warning("workload %s: artifacts unreachable now, keeping what runs: %s", spec.name, exc)
                keep.add(spec.name)
                continue
            wanted.append((spec, artifacts))
            if changed:
                self._workloads_changed.add(spec.name)  # drift: reported once, then healed
        await self.workloads.apply(wanted, keep)

    def _note_invalid(self, invalid: list[str]) -> None:
        """Say (the log once, and a health finding while it lasts) which workloads of the
        signed configuration this device cannot read and leaves out."""
        why = "; ".join(invalid) or None
        if why != self.invalid_workloads:
            if why is not None:
                log.error("workloads of the configuration are invalid, left out: %s", why)
            self.invalid_workloads = why
            self.on_unsigned()  # the verdict changes at once

    def workloads_probe(self, state: AgentState, loop: asyncio.AbstractEventLoop) -> Probe:
        """A ``workloads`` health check (run in a worker thread): passes once every workload
        of the configuration runs, verified and healthy; fails at once when one failed."""

        async def verdict() -> Verdict:
            config = state.desired.get("config")
            workloads = config.get("workloads") if isinstance(config, dict) else None
            report = self.report(state)
            statuses = [s.model_dump() for s in self.workloads.status()] if self.workloads is not None else []
            return judge(workloads if isinstance(workloads, dict) else None,
                         report.parts if report is not None else {}, statuses)

        def probe(timeout: float, cancel: threading.Event) -> tuple[bool, str]:
            deadline = time.monotonic() + timeout
            while True:
                found = asyncio.run_coroutine_threadsafe(verdict(), loop).result(timeout)
                if found.phase == "committed":
                    return True, "every workload of the configuration runs"
                if found.phase == "failed":
                    return False, found.reason or "a workload failed"
                if cancel.is_set() or time.monotonic() >= deadline:
                    return False, f"workloads not all running and healthy after {timeout:g}s"
                cancel.wait(0.2)

        return probe

    async def apply_manifests(self, config: object) -> None:
        """The group's Kubernetes manifests of the director-signed configuration, to the
        device's cluster or to the repository its Argo CD / Flux watch."""
        if self.manifests is None or not isinstance(config, dict):
            return
        workloads = config.get("workloads")
        manifests = workloads.get("manifests") if isinstance(workloads, dict) else None
        if isinstance(manifests, list):
            await asyncio.to_thread(self.manifests.sync, str(config.get("group")), manifests, self.clock.monotonic())

    def workload_statuses(self) -> list[WorkloadStatus] | None:
        found = self.workloads.status() if self.workloads is not None else []
        kubernetes = self.manifests.status() if self.manifests is not None else None
        return [*found, *([kubernetes] if kubernetes else [])][:32] or None

    def report(self, state: AgentState) -> ConfigReport | None:
        """The OS configuration on disk, and each declared workload that runs exactly as
        declared (its part is left out otherwise: the server sees the difference)."""
        config = state.desired.get("config")
        if not isinstance(config, dict):
            return None
        parts = osconfig.observe(self.os_config_dir)
        for entry, spec in declared(config)[0]:
            if self.workloads is not None and self.workloads.runs(spec) and spec.name not in self._workloads_changed:
                name, digest = workload_part(entry)
                parts[name] = digest
        return ConfigReport(parts=parts)

    def reported(self, state: AgentState) -> None:
        """A status report went out: once it was one the server judges drift on, changed
        workloads have been seen out of sync."""
        if self.applied == state.desired_version:
            self._workloads_changed.clear()

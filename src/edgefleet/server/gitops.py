"""GitOps on the control plane: fetch each sync on an interval and on the push webhook,
decide each new commit once (``gitops.sync``), record it, alert on a refusal, and write the
rendered configuration into each device's desired state, versioned by commit. Devices'
reports of what they really run are compared with it (drift), with alerts and optional
self-heal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from edgefleet.clock import Clock
from edgefleet.errors import EdgefleetError, StoreError, TransportError
from edgefleet.gitops.git import GitMirror
from edgefleet.gitops.render import DeviceInfo, Rendering, render
from edgefleet.gitops.sync import APP_PATHS, ROOT_PATHS, Decision, SyncSource, decide, files_for
from edgefleet.protocol.desired import known_parts
from edgefleet.protocol.hashing import config_hash, desired_parts
from edgefleet.protocol.workload_verdicts import EMPTY
from edgefleet.releases.image import release_fields
from edgefleet.server.alerts import Alerts
from edgefleet.server.director import DirectorService
from edgefleet.server.metrics import Metrics
from edgefleet.server.repository import RepositoryService
from edgefleet.server.rollouts import RolloutController, group_rollouts
from edgefleet.server.settings import ServerSettings
from edgefleet.store import Database
from edgefleet.store.devices import desired_state, get_device, list_devices
from edgefleet.store.gitops import accepted_commits, drift_of, record_commit, refused_before, set_drift
from edgefleet.store.rollouts import rollout_heads
from edgefleet.store.schema import Device

log = logging.getLogger("edgefleet.server.gitops")


def device_info(device: Device) -> DeviceInfo:
    """What templates and selectors see of a device."""
    return DeviceInfo(device.id, device.site, str(device.inventory.get("hostname") or device.id), device.labels)


@dataclass
class GitOpsService:
    settings: ServerSettings
    db: Database
    clock: Clock
    metrics: Metrics
    alerts: Alerts
    repository: RepositoryService
    director: DirectorService  # owns the desired-state writer (signs, forgets, wakes)
    rollouts: RolloutController | None = None  # starts the groups' rollouts from accepted commits
    self_heal: bool = False  # from fleet.yaml of the accepted root commit
    _rolled_out: str | None = None  # the accepted commits whose groups' rollouts have all been started
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def sources(self) -> list[SyncSource]:
        """Root first: application commits are judged against the accepted root."""
        sources = [SyncSource(s.name, s.kind, s.url, s.branch, s.allowed_signers,
                              ROOT_PATHS if s.kind == "root" else APP_PATHS) for s in self.settings.gitops]
        return sorted(sources, key=lambda s: s.kind != "root")

    def mirror(self, source: SyncSource) -> GitMirror:
        return GitMirror(self.settings.data_dir / "gitops" / f"{source.name}.git", source.url, source.branch)

    def trigger(self) -> None:
        self._wake.set()

    def device_joined(self, device_id: str) -> None:
        """A new device gets the accepted configuration of its group without waiting for
        the next commit (in the background: enrollment does not wait for git)."""
        if not self.settings.gitops:
            return
        task = asyncio.create_task(self._refresh(device_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, device_id: str) -> None:
        try:
            async with self._lock:
                async with self.db.transaction() as conn:
                    accepted = await accepted_commits(conn)
                    device = await get_device(conn, device_id)
                if not accepted or device is None:
                    return
                files = await asyncio.to_thread(self.accepted_files, accepted)
                rendering = await asyncio.to_thread(render, files, [device_info(device)])
                if rendering.errors:
                    log.error("accepted configuration no longer renders for %s: %s", device_id,
                              "; ".join(str(e) for e in rendering.errors[:3]))
                    return
                await self._apply(rendering, accepted, only={device_id})
        except (EdgefleetError, OSError) as exc:
            log.warning("could not render the accepted configuration for %s: %s", device_id, exc)

    def accepted_files(self, accepted: dict[str, str], skip: str | None = None) -> dict[str, bytes]:
        """Each sync's own files at its accepted commit (but ``skip``'s)."""
        files: dict[str, bytes] = {}
        for source in self.sources:
            if source.name in accepted and source.name != skip:
                files.update(files_for(self.mirror(source), source, accepted[source.name]))
        return files

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.sync_once()
                failures = 0
            except EdgefleetError as exc:
                failures += 1
                log.warning("GitOps sync failed (%d in a row), will retry: %s", failures, exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_sync_seconds(failures))

    def _next_sync_seconds(self, failures: int) -> float:
        """The interval; after a failed sync sooner, doubling from 1 s up to the interval, so a
        passing fault (a remote down for a moment, a validator that did not start) does not
        hold the fleet's Git state back for a whole interval."""
        interval = self.settings.gitops_interval_seconds
        return interval if failures == 0 else min(interval, 2.0 ** (failures - 1))

    async def sync_once(self) -> list[Decision]:
        """Fetch every sync and decide each new tip; returns the decisions made.

        Raises TransportError (a remote could not be fetched) or StoreError.
        """
        async with self._lock:
            decisions, failures = [], []
            for source in self.sources:
                try:
                    decision = await self._sync(source)
                except TransportError as exc:
                    log.warning("sync %s: %s", source.name, exc)  # the others go on
                    failures.append(exc)
                    continue
                if decision is not None:
                    decisions.append(decision)
            await self._start_rollouts()
            if failures and not decisions and len(failures) == len(self.sources):
                raise failures[0]
            return decisions

    async def accepted_root(self) -> tuple[SyncSource, str] | None:
        """The root sync and its accepted commit, if there are both."""
        root = next((s for s in self.sources if s.kind == "root"), None)
        if root is None:
            return None
        async with self.db.transaction() as conn:
            commit = (await accepted_commits(conn)).get(root.name)
        return None if commit is None else (root, commit)

    async def _start_rollouts(self) -> None:
        """Each group's release in the accepted root commit goes out as a wave rollout, and so
        does the workload set of each group with a ``rollout:`` plan (on the one process
        that leads the rollout controllers)."""
        if self.rollouts is None or not await self.rollouts.leadership.held():
            return
        root = next((s for s in self.sources if s.kind == "root"), None)
        async with self.db.transaction() as conn:
            accepted = await accepted_commits(conn)
        key = json.dumps(accepted, sort_keys=True)
        if root is None or root.name not in accepted or key == self._rolled_out:
            return
        rendering = await asyncio.to_thread(render, await asyncio.to_thread(self.accepted_files, accepted), [])
        if rendering.errors:  # cannot happen to accepted commits unless the code changed since
            log.error("accepted commits %s no longer render: %s", accepted,
                      "; ".join(map(str, rendering.errors[:3])))
            return
        waiting = await self.rollouts.from_git(rendering.groups, accepted[root.name])
        await self.rollouts.workloads_from_git(rendering.groups, rendering.workloads, "gitops@" + "+".join(
            accepted[s.name][:12] for s in self.sources if s.name in accepted))
        if not waiting:
            self._rolled_out = key

    async def _workload_bases(self, rendering: Rendering) -> dict[str, dict[str, Any]]:
        """Per group whose workloads roll out in waves: the set a device that runs none of
        the group's yet starts with (the last set rolled out to the whole group; until a
        first rollout, the rendered one). Devices running a set keep it until a rollout
        tells them otherwise."""
        planned = [name for name, group in rendering.groups.items() if group.rollout is not None]
        if self.rollouts is None or not planned:
            return {}
        async with self.db.transaction() as conn:
            heads = await rollout_heads(conn)  # newest first
        bases = {}
        for name in planned:
            latest = next(iter(group_rollouts(heads, name, "workloads")), None)
            settled = None if latest is None else (
                latest.spec["workloads"] if latest.status == "completed" else latest.spec.get("workloads_before"))
            bases[name] = settled if isinstance(settled, dict) else rendering.workloads.get(name, EMPTY)
        return bases

    async def _sync(self, source: SyncSource) -> Decision | None:
        mirror = self.mirror(source)
        tip = await asyncio.to_thread(mirror.fetch)
        async with self.db.transaction() as conn:
            accepted = await accepted_commits(conn)
            root = next((s.name for s in self.sources if s.kind == "root"), None)
            if source.kind == "app" and root is not None and root not in accepted:
                # An application is judged against the platform's groups and paths: before
                # the root has an accepted commit there is nothing to judge it by, and a
                # refusal for that would be final.
                log.info("sync %s waits for an accepted commit of %s", source.name, root)
                return None
            # Decided once: a refusal is final; an old acceptance is judged again (moving back).
            if accepted.get(source.name) == tip or await refused_before(conn, source.name, tip):
                return None
            rows = await list_devices(conn, limit=1_000_000)
        devices = [device_info(d) for d in rows]
        decision = await asyncio.to_thread(self._decide, source, mirror, accepted, tip, devices)
        now = self.clock.now()
        async with self.db.transaction() as conn:
            await record_commit(conn, source.name, tip, decision.accepted, decision.reasons, now)
            if not decision.accepted:
                await self.alerts.raise_alert(conn, "gitops_refused", f"{source.name}@{tip[:12]}",
                                              f"commit {tip[:12]} of sync {source.name} refused: "
                                              + "; ".join(decision.reasons[:5]),
                                              {"sync": source.name, "commit": tip, "reasons": decision.reasons})
        self.alerts.wake()
        self.metrics.gitops_commits.labels(source.name, "accepted" if decision.accepted else "refused").inc()
        if decision.accepted and decision.rendering is not None:
            commits = {**accepted, source.name: tip}
            await self._apply(decision.rendering, commits)
            log.info("sync %s accepted %s", source.name, tip[:12])
        else:
            log.warning("sync %s refused %s: %s", source.name, tip[:12], "; ".join(decision.reasons))
        return decision

    def _decide(self, source: SyncSource, mirror: GitMirror, accepted: dict[str, str], tip: str,
                devices: list[DeviceInfo]) -> Decision:
        other = self.accepted_files(accepted, skip=source.name)
        published = self.repository.published()
        targets = [] if published is None else [
            path for path, target in published.signed.targets.items() if release_fields(target)]
        return decide(mirror, source, accepted.get(source.name), tip, other, devices, targets)

    async def _apply(self, rendering: Rendering, commits: dict[str, str], only: set[str] | None = None) -> None:
        """Write each device's rendered configuration into its desired state if it changed."""
        self.self_heal = rendering.fleet.self_heal
        bases = await self._workload_bases(rendering)
        async with self.director.desired.transaction() as changes:
            conn = changes.conn
            for device in await list_devices(conn, limit=1_000_000):
                if only is not None and device.id not in only:
                    continue
                found = await conn.run_sync(desired_state, device.id)
                current = dict(found[1]) if found else {}
                config = rendering.documents.get(device.id)
                if config is not None and config["group"] in bases:
                    running = current.get("config")
                    config = {**config, "workloads": running["workloads"] if isinstance(running, dict) and running.get(
                        "group") == config["group"] else bases[config["group"]]}
                # The windows travel only inside the signed configuration (an older
                # document's unsigned top-level copy is dropped).
                document = known_parts(current)
                if config is None:
                    document.pop("config", None)
                else:
                    document["config"] = {**config, "commits": commits, "os_hash": config_hash(config["os"])}
                if document != current:
                    await changes.set(device.id, document)  # signed before the device hears of it

    async def observe(self, device_id: str, reported: dict[str, Any] | None, applied: int | None) -> None:
        """Compare what a device reports running with its desired configuration, once it
        has acted on that version (``applied``; before, it is on its way: not drift)."""
        async with self.director.desired.transaction() as changes:
            conn = changes.conn
            found = await conn.run_sync(desired_state, device_id)
            if found is not None and reported is not None and (applied is None or applied < found[0]):
                return
            config = (found[1] if found else {}).get("config")
            before = await drift_of(conn, device_id)
            if not isinstance(config, dict) or reported is None:
                state, differences = "unknown", {}
            else:
                wanted = desired_parts(config)
                reported_parts = reported.get("parts", {})
                differences = {part: {"desired": wanted.get(part), "reported": reported_parts.get(part)}
                               for part in sorted(set(wanted) | set(reported_parts))
                               if wanted.get(part) != reported_parts.get(part)}
                state = "out_of_sync" if differences else "in_sync"
            if before is not None and before.state == state and before.differences == differences:
                return
            heals = before.heals if before is not None else 0
            if state == "out_of_sync":
                self.metrics.drift.inc()
                await self.alerts.raise_alert(conn, "drift", device_id,
                                              f"{device_id} runs configuration that differs from its desired state: "
                                              + ", ".join(differences), {"device_id": device_id,
                                                                          "differences": differences})
                if self.self_heal and isinstance(config, dict) and found is not None:
                    heals += 1
                    await changes.set(device_id, {**known_parts(found[1]), "config": {**config, "heal": heals}})
            await set_drift(conn, device_id, state, differences, self.clock.now(), heals)
        self.alerts.wake()


async def restore_self_heal(service: GitOpsService) -> None:
    """At start: self-heal follows the fleet.yaml of the accepted root commit."""
    try:
        found = await service.accepted_root()
        if found is not None:
            root, commit = found
            files = await asyncio.to_thread(service.accepted_files, {root.name: commit})
            service.self_heal = render({k: v for k, v in files.items() if k == "fleet.yaml"}, []).fleet.self_heal
    except (EdgefleetError, StoreError, OSError) as exc:
        log.warning("cannot read the accepted fleet settings: %s", exc)

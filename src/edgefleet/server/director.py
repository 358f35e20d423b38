"""The director service: assigns releases to devices and serves each device its own
signed director metadata (Uptane). Which release a device *may* take will be the rollout
controller's decision; today an operator assigns it.

An assignment also writes ``release`` into the device's desired state (through the one
writer, ``server/desired.py``, which the director owns: it signs what the writer stores),
so a device waiting in a long poll hears about it at once and then verifies it through
TUF. How the device is to take the release (force a reboot, retry a failed release,
revert to the other slot) is signed with it (``releases.instructions.Instructions``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tuf.api.metadata import Metadata, TargetFile, Targets

from edgefleet.clock import Clock
from edgefleet.errors import Conflict, EdgefleetError, NotFound, StoreError
from edgefleet.protocol.desired import known_parts
from edgefleet.protocol.v1 import DIRECTOR_ROOT_FILE, DirectorBundle
from edgefleet.releases.director import DirectorFiles, config_target, resign_timestamp, sign_assignment
from edgefleet.releases.image import release_fields
from edgefleet.releases.instructions import PLAIN, Instructions
from edgefleet.releases.metadata import EXPIRY
from edgefleet.server.desired import DesiredWriter
from edgefleet.server.devicecache import DeviceCache
from edgefleet.server.longpoll import LongPolls
from edgefleet.server.repository import RepositoryService
from edgefleet.store import Database
from edgefleet.store.devices import desired_documents, desired_state, hardware_and_config
from edgefleet.store.director import (
    Versions,
    all_director_states,
    director_state,
    director_versions,
    save_assignment,
    save_assignments,
    save_timestamp,
)
from edgefleet.store.schema import DirectorState


@dataclass(frozen=True)
class Assignment:
    device_id: str
    release: str | None
    version: int


T = TypeVar("T")
ASSIGN_BATCH = 500  # devices per round trip of assign_many
SIGNED_FILES_CACHED = 4096  # devices whose newest snapshot and targets are kept in memory
BUNDLED_ROOTS = 32  # director roots one bundle carries at most (a TUF client follows as many rotations)


def _next_versions(current: DirectorState | Versions | None) -> tuple[int, int]:
    """The targets/snapshot and timestamp versions after ``current``."""
    return (1, 1) if current is None else (current.version + 1, current.timestamp_version + 1)


def _with_config(targets: list[TargetFile], config: Any) -> list[TargetFile]:
    """The release's targets plus, when the desired state carries rendered configuration,
    its config target."""
    return targets + ([config_target(config)] if isinstance(config, dict) else [])


def _signed_instructions(current: DirectorState | None) -> Instructions:
    """The instructions signed with the device's current assignment: re-signing its
    configuration keeps them (the signed metadata is their one copy)."""
    if current is None:
        return PLAIN
    signed: Metadata[Targets] = Metadata.from_bytes(current.targets)
    images = [t for t in signed.signed.targets.values() if release_fields(t).get("kind") == "os-image"]
    return Instructions.of(images[0]) if images else PLAIN


async def _retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """A read-sign-store step races the device's first metadata fetch (which creates its
    director state) and other writers (compare-and-swap on the version): retry it."""
    for n in range(3):
        try:
            return await attempt()
        except StoreError as exc:
            if exc.code != "integrity_error" or n == 2:
                raise
        except Conflict as exc:
            if exc.code != "concurrent_change" or n == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class SignedFiles:
    """Each device's newest director snapshot and targets, as signed or last read, by
    version. A device reads its timestamp, then the snapshot and targets it names: those
    two come from here instead of the database. A version's files never change (a new
    assignment is a new version), so any server process may serve what it holds; one that
    has not seen a device's newer version yet may still serve the older one's, which the
    device's TUF client judges against the timestamp it just read. Bounded: the devices
    least recently stored go first."""

    def __init__(self, limit: int = SIGNED_FILES_CACHED) -> None:
        self.limit = limit
        self._files: dict[str, tuple[int, bytes, bytes]] = {}

    def keep(self, device_id: str, version: int, snapshot: bytes, targets: bytes) -> None:
        current = self._files.pop(device_id, None)
        if current is not None and current[0] > version:
            self._files[device_id] = current  # a read that raced a newer assignment
            return
        while len(self._files) >= self.limit:
            del self._files[next(iter(self._files))]
        self._files[device_id] = (version, snapshot, targets)

    def get(self, device_id: str, name: str) -> bytes | None:
        held = self._files.get(device_id)
        return None if held is None else _named(name, *held)


def _versioned(version: int, snapshot: bytes, targets: bytes) -> dict[str, bytes]:
    """A version's snapshot and targets under their TUF consistent-snapshot names."""
    return {f"{version}.snapshot.json": snapshot, f"{version}.targets.json": targets}


def _named(name: str, version: int, snapshot: bytes, targets: bytes) -> bytes | None:
    """The file ``name`` among a version's snapshot and targets, if it is one of them."""
    return _versioned(version, snapshot, targets).get(name)


@dataclass
class DirectorService:
    db: Database
    repository: RepositoryService
    clock: Clock
    devices: DeviceCache
    long_polls: LongPolls
    signed: SignedFiles = field(default_factory=SignedFiles)
    desired: DesiredWriter = field(init=False)

    def __post_init__(self) -> None:
        self.desired = DesiredWriter(self.db, self.clock, self.devices, self.long_polls, self.sign_config)

    def release_targets(self, release: str) -> list[TargetFile]:
        """The image and artifacts of ``release`` as the image repository publishes them."""
        published = self.repository.published()
        if published is None:
            raise NotFound("no releases have been published", code="unknown_release")
        found = []
        for target in published.signed.targets.values():
            fields = release_fields(target)
            if fields.get("version") == release or fields.get("release") == release:
                found.append(target)
        if not any(release_fields(t).get("kind") == "os-image" for t in found):
            raise NotFound(f"release {release} is not published", code="unknown_release")
        return found

    async def revert(self, device_id: str, release: str) -> Assignment:
        """Send a device back to ``release``, which it ran before and still holds in its
        other slot: the director names it again and the desired state asks the device to
        switch back to that slot now (no download, no maintenance window)."""
        return await self.assign(device_id, release, force_reboot=True, revert=True)

    async def assign(self, device_id: str, release: str, *, force_reboot: bool = False,
                     retry_failed: bool = False, revert: bool = False) -> Assignment:
        """Raises NotFound (device or release) or Conflict (hardware type, concurrent change).

        The director's metadata says what to install and, signed with it, how (force a
        reboot, retry a failed release, revert); the signed configuration says when (its
        maintenance windows).
        """
        options = Instructions(force_reboot=force_reboot, retry_failed=retry_failed, revert=revert)

        async def attempt() -> Assignment:
            done, failed = await self._assign_batch([device_id], release, options)
            if device_id in failed:
                raise failed[device_id]
            return done[0]

        return await _retrying(attempt)

    async def assign_many(self, device_ids: Sequence[str], release: str) -> dict[str, EdgefleetError]:
        """Assign one release to many devices in a few round trips per batch (the rollout
        controller's path). Raises NotFound when the release is not published; returns
        the devices that could not be assigned, and why."""
        failed: dict[str, EdgefleetError] = {}
        options = PLAIN
        for start in range(0, len(device_ids), ASSIGN_BATCH):
            batch = device_ids[start:start + ASSIGN_BATCH]

            async def attempt() -> tuple[list[Assignment], dict[str, EdgefleetError]]:
                return await self._assign_batch(batch, release, options)  # noqa: B023 - awaited at once

            failed.update((await _retrying(attempt))[1])
        return failed

    async def assign_workloads(self, device_ids: Sequence[str], workloads: dict[str, Any]) -> list[str]:
        """Tell devices to run workload set ``workloads`` (a workload rollout's step): it
        replaces the ``workloads`` of each one's rendered configuration, which is signed
        again before the device hears of it. Devices without configuration are left out.
        Returns the devices told."""
        async with self.desired.transaction() as changes:
            documents = await desired_documents(changes.conn, device_ids)
            changed = {d: {**known_parts(doc), "config": {**doc["config"], "workloads": workloads}}
                       for d, doc in documents.items()
                       if isinstance(doc.get("config"), dict) and doc["config"].get("workloads") != workloads}
            await changes.set_many(changed)  # signed by the writer before the devices hear of it
        return list(changed)

    async def _assign_batch(self, device_ids: Sequence[str], release: str, options: Instructions) -> tuple[
            list[Assignment], dict[str, EdgefleetError]]:
        """Read, check, sign (in one worker thread) and store a batch; each device's
        director state moves by compare-and-swap, so a concurrent change fails only it."""
        targets = await asyncio.to_thread(self.release_targets, release)
        image = next(t for t in targets if release_fields(t).get("kind") == "os-image")
        fits = release_fields(image).get("hardware_ids", [])
        async with self.db.transaction(readonly=True) as conn:
            devices = await hardware_and_config(conn, device_ids)
            states = await director_versions(conn, device_ids)
        failed: dict[str, EdgefleetError] = {}
        todo: list[tuple[str, list[TargetFile], Versions | None]] = []
        for device_id in device_ids:
            if device_id not in devices:
                failed[device_id] = NotFound(f"device {device_id} not found")
                continue
            hardware, config = devices[device_id]
            if hardware not in (fits if isinstance(fits, list) else []):
                failed[device_id] = Conflict(f"release {release} fits {fits}, device {device_id} is {hardware}",
                                             code="hardware_mismatch")
            else:
                todo.append((device_id, _with_config(targets, config), states.get(device_id)))
        signer = self.repository.online_signer("director", "targets")
        now = self.clock.now()
        signed = await asyncio.to_thread(lambda: [sign_assignment(d, t, *_next_versions(c), now, signer, options)
                                                  for d, t, c in todo])
        writes = [(d, files, None if current is None else current.version)
                  for (d, _, current), files in zip(todo, signed, strict=True)]

        def keep_signed() -> None:  # served from memory when the woken devices ask
            for (device_id, _, _), files in zip(todo, signed, strict=True):
                if device_id in stored:
                    self.signed.keep(device_id, files.version, files.snapshot, files.targets)

        async with self.desired.transaction() as changes:
            stored = await save_assignments(changes.conn, release, writes, now)
            documents = await desired_documents(changes.conn, list(stored))
            await changes.set_many({d: {**known_parts(documents.get(d, {})), "release": release}
                                    for d in stored}, signed=True)
            changes.on_commit.append(keep_signed)
        done = [Assignment(d, release, files.version) for (d, _, _), files in zip(todo, signed, strict=True)
                if d in stored]
        for device_id, _, _ in todo:
            if device_id not in stored:
                failed[device_id] = Conflict(f"device {device_id} was reassigned concurrently; retry",
                                             code="concurrent_change")
        return done, failed

    async def sign_config(self, device_id: str) -> None:
        """Re-sign a device's director metadata after its rendered configuration changed:
        the assigned release's targets (if any) plus the configuration target. A fleet whose
        release owners have not published a director root yet has nothing to sign with:
        its devices have no director root either, and take configuration over mTLS."""
        if not self.repository.director.exists():
            return

        async def attempt() -> None:
            async with self.db.transaction() as conn:
                current = await conn.run_sync(director_state, device_id)
                found = await conn.run_sync(desired_state, device_id)
            if found is None:
                return
            release = current.release if current is not None else None
            targets = await asyncio.to_thread(self.release_targets, release) if release else []
            files = await self._sign(device_id, _with_config(targets, found[1].get("config")), current,
                                     _signed_instructions(current))
            async with self.db.transaction() as conn:
                if not await save_assignment(conn, device_id, release, files, self.clock.now(),
                                             previous_version=None if current is None else current.version):
                    raise Conflict(f"director metadata of {device_id} changed concurrently",
                                   code="concurrent_change")

        await _retrying(attempt)

    async def _sign(self, device_id: str, targets: list[TargetFile], current: DirectorState | None,
                    instructions: Instructions) -> DirectorFiles:
        signer = self.repository.online_signer("director", "targets")
        return await asyncio.to_thread(sign_assignment, device_id, targets, *_next_versions(current),
                                       self.clock.now(), signer, instructions)

    async def file(self, device_id: str, name: str) -> bytes:
        """One file of ``device_id``'s director repository (TUF consistent-snapshot names).

        Raises NotFound for anything else, including superseded versions.
        """
        match = DIRECTOR_ROOT_FILE.match(name)
        if match:
            path = self.repository.director.metadata_dir / f"{int(match.group(1))}.root.json"
            if not await asyncio.to_thread(path.exists):
                raise NotFound(f"no director root {match.group(1)}")
            return await asyncio.to_thread(path.read_bytes)
        held = self.signed.get(device_id, name)
        if held is not None:
            return held
        state = await self._current(device_id)
        if name == "timestamp.json":
            return await self._fresh_timestamp(device_id, state)
        found = _named(name, state.version, state.snapshot, state.targets)
        if found is None:
            raise NotFound(f"no director file {name} for {device_id}")
        return found

    async def bundle(self, device_id: str, root: int, snapshot: int) -> DirectorBundle:
        """``device_id``'s director repository in one answer, for a device that trusts root
        version ``root`` and holds snapshot version ``snapshot`` (0: none): the roots after
        its own, the current timestamp, and the snapshot and targets unless it holds them.
        What a TUF client would fetch file by file, in one round trip; it verifies each."""
        # A failed open of a local file (no rotation: the usual answer) costs microseconds,
        # far less than a worker thread's round trip.
        roots = self._roots_after(root)
        state = await self._current(device_id)
        files = {f"{version}.root.json": data.decode() for version, data in roots[:BUNDLED_ROOTS]}
        files["timestamp.json"] = (await self._fresh_timestamp(device_id, state)).decode()
        if state.version != snapshot:
            files.update({name: data.decode() for name, data in
                          _versioned(state.version, state.snapshot, state.targets).items()})
        return DirectorBundle(files=files, latest_root=None if len(roots) > BUNDLED_ROOTS else (
            roots[-1][0] if roots else root))

    def _roots_after(self, root: int) -> list[tuple[int, bytes]]:
        """The director roots after version ``root``, in order, one more than a bundle
        carries when there are that many (a device so far behind reads the rest file by
        file, as TUF's client would)."""
        found = []
        for version in range(root + 1, root + 2 + BUNDLED_ROOTS):
            try:
                found.append((version, (self.repository.director.metadata_dir / f"{version}.root.json").read_bytes()))
            except FileNotFoundError:
                break
        return found

    async def _current(self, device_id: str) -> DirectorState:
        """The device's current director state (kept in ``signed`` for the files that
        follow); a device with nothing assigned yet gets an empty, signed targets list (it
        then knows for certain that it should run nothing new).

        Raises NotFound when the director has no root yet.
        """
        state = await self.db.read(director_state, device_id)
        if state is None and not await asyncio.to_thread(self.repository.director.exists):
            raise NotFound("no director repository: its root has not been published", code="no_director_root")
        if state is None:
            files = await self._sign(device_id, [], None, PLAIN)
            async with self.db.transaction() as conn:
                if await conn.run_sync(director_state, device_id) is None:
                    await save_assignment(conn, device_id, None, files, self.clock.now(), previous_version=None)
                state = await conn.run_sync(director_state, device_id)
            assert state is not None
        self.signed.keep(device_id, state.version, state.snapshot, state.targets)
        return state

    async def resign_all(self) -> int:
        """After a director root change: re-sign every device's metadata with the key the
        new root delegates to, as new versions, so each device notices and follows the
        rotation. Returns how many devices were re-signed."""
        async with self.db.transaction(readonly=True) as conn:
            states = await all_director_states(conn)
        count = 0
        for state in states:
            assigned: Metadata[Targets] = Metadata.from_bytes(state.targets)
            files = await self._sign(state.device_id, list(assigned.signed.targets.values()), state,
                                     _signed_instructions(state))
            async with self.db.transaction() as conn:
                count += await save_assignment(conn, state.device_id, state.release, files, self.clock.now(),
                                               previous_version=state.version)
        return count

    async def _fresh_timestamp(self, device_id: str, state: DirectorState) -> bytes:
        now = self.clock.now()
        if state.timestamp_expires - now > EXPIRY["timestamp"] / 2:
            data: bytes = state.timestamp
            return data
        version, data, expires = await asyncio.to_thread(
            resign_timestamp, state.version, state.snapshot, state.timestamp_version + 1, now,
            self.repository.online_signer("director", "timestamp"),
        )
        async with self.db.transaction() as conn:
            if not await save_timestamp(conn, device_id, state.timestamp_version, version, data, expires):
                fresher = await conn.run_sync(director_state, device_id)  # another request re-signed first
                assert fresher is not None
                data = fresher.timestamp
        return data

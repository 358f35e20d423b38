"""The desired state a device is told, as one typed and bounded model that the server
(every write goes through ``server/desired.py``, which validates with it) and the agent
(which validates what it receives with it) share. Unknown fields are refused.

A device acts on two parts: ``release``, which its director's signed metadata names again,
and ``config``, the configuration GitOps renders for its group, which the director signs
as the device's config target (the agent applies only those exact bytes). How to take a
release (force a reboot, retry, revert) is not here: it is signed on the director's image
target (``releases/instructions.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints

from edgefleet.protocol.base import Count, Name, ShortText, Strict

MAX_WINDOW_MINUTES = 7 * 24 * 60


class Model(Strict):
    # No coercion: the configuration's bytes are signed, and a device hashes what it got.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WindowSpec(Model):
    """``{"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin", "duration_minutes": 120}``:
    opens at each cron time, local wall-clock time in the zone, for the duration."""

    cron: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"
    duration_minutes: Annotated[int | float, Field(gt=0, le=MAX_WINDOW_MINUTES)]


class Maintenance(Model):
    """No windows means always."""

    download: Annotated[list[WindowSpec], Field(max_length=32)] = []
    install: Annotated[list[WindowSpec], Field(max_length=32)] = []


class OsConfig(Model):
    ignition: Annotated[dict[str, Any], Field(max_length=64)] | None = None
    cloud_init: Annotated[str, StringConstraints(max_length=262_144)] | None = None


Entries = Annotated[list[dict[str, Any]], Field(max_length=64)]


class WorkloadSet(Model):
    """Each entry is checked by the agent against ``protocol.workloads`` (an invalid one is
    left out and reported, the others run)."""

    manifests: Annotated[list[dict[str, Any]], Field(max_length=1024)] = []
    wasm: Entries = []
    microvm: Entries = []
    native: Entries = []


class RenderedConfig(Model):
    group: Name
    release: ShortText | None = None
    maintenance: Maintenance = Maintenance()
    os: OsConfig = OsConfig()
    workloads: WorkloadSet = WorkloadSet()
    commits: Annotated[dict[Name, ShortText], Field(max_length=16)] = {}  # sync name -> accepted commit
    os_hash: ShortText | None = None
    heal: Count | None = None  # bumped by self-heal: a new version of the same configuration


class DesiredDocument(Model):
    release: ShortText | None = None
    config: RenderedConfig | None = None


def known_parts(document: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a stored document that this model knows: what a writer builds on (an
    older server's unsigned ``maintenance`` or ``update`` copies are left behind)."""
    return {key: document[key] for key in DesiredDocument.model_fields if key in document}

"""Maintenance windows: a cron expression for when a window opens, the time zone the
expression is read in, and how long the window stays open.

Cron times are local wall-clock times (cronsim, Debian cron's rules across DST): a start
that falls into the hour skipped in spring happens when the clocks have moved on (02:30 ->
03:00); a start in the hour repeated in autumn happens once, at its first occurrence. The
duration is elapsed time, so a two-hour window is two hours long on the night the clocks
change. A schedule with no windows is always open.

What a window means is shared: GitOps judges a group's windows at sync with this code,
and the agent enforces them with it (its download stop is ``agent/windowstop.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from edgefleet.errors import InvalidRequest

MAX_DURATION = timedelta(days=7)


@dataclass(frozen=True)
class Window:
    cron: str
    zone: ZoneInfo
    duration: timedelta

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Window:
        """``{"cron": "0 2 * * *", "timezone": "Europe/Berlin", "duration_minutes": 120}``.

        Raises InvalidRequest naming what is wrong.
        """
        cron, zone_name, minutes = spec.get("cron"), spec.get("timezone", "UTC"), spec.get("duration_minutes")
        if not isinstance(cron, str) or not isinstance(zone_name, str):
            raise InvalidRequest("a maintenance window needs a cron expression and a time zone", code="invalid_window")
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 < minutes * 60 <= \
                MAX_DURATION.total_seconds():
            raise InvalidRequest(f"window duration must be 1 minute to 7 days, got {minutes!r}", code="invalid_window")
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidRequest(f"unknown time zone {zone_name!r}", code="invalid_window") from exc
        try:
            CronSim(cron, datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as exc:
            raise InvalidRequest(f"bad cron expression {cron!r}: {exc}", code="invalid_window") from exc
        return cls(cron, zone, timedelta(minutes=minutes))

    def last_start(self, now: datetime) -> datetime | None:
        """The latest opening at or before ``now`` (aware)."""
        # Compared in UTC: aware times in one zone compare by wall clock, ignoring DST folds.
        local = now.astimezone(self.zone)
        for start in CronSim(self.cron, local + timedelta(hours=1), reverse=True):
            if start.astimezone(UTC) <= now:
                return start.astimezone(UTC)
        return None  # pragma: no cover - cronsim iterates forever

    def is_open(self, now: datetime) -> bool:
        return self.closes_at(now) is not None

    def closes_at(self, now: datetime) -> datetime | None:
        """When the window open at ``now`` closes (None: it is not open)."""
        start = self.last_start(now)
        return start + self.duration if start is not None and now < start + self.duration else None

    def next_open(self, now: datetime) -> datetime:
        """``now`` when open, else when the window next opens."""
        if self.is_open(now):
            return now
        for start in CronSim(self.cron, now.astimezone(self.zone) - timedelta(hours=1)):
            if start.astimezone(UTC) > now:
                return start.astimezone(UTC)
        raise AssertionError("unreachable: cronsim iterates forever")  # pragma: no cover


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[Mapping[str, Any]] | None) -> Schedule:
        return cls(tuple(Window.parse(spec) for spec in specs or ()))

    def is_open(self, now: datetime) -> bool:
        return not self.windows or any(w.is_open(now) for w in self.windows)

    def next_open(self, now: datetime) -> datetime:
        return min((w.next_open(now) for w in self.windows), default=now)

    def closes_at(self, now: datetime) -> datetime | None:
        """When the open windows have all closed (None: no windows, always open; or none is
        open now). A window that opens later is not counted: the caller looks again then."""
        return max((c for w in self.windows if (c := w.closes_at(now)) is not None), default=None)


@dataclass(frozen=True)
class MaintenancePolicy:
    """Separate windows for downloading and for installing and rebooting."""

    download: Schedule = Schedule()
    install: Schedule = Schedule()

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> MaintenancePolicy:
        """From the desired state's ``maintenance`` object. Raises InvalidRequest."""
        spec = spec or {}
        if not isinstance(spec, Mapping) or set(spec) - {"download", "install"}:
            raise InvalidRequest("maintenance takes 'download' and 'install' window lists", code="invalid_window")
        lists = {key: spec.get(key) or [] for key in ("download", "install")}
        if not all(isinstance(v, list) and all(isinstance(w, Mapping) for w in v) for v in lists.values()):
            raise InvalidRequest("maintenance windows must be lists of objects", code="invalid_window")
        return cls(Schedule.parse(lists["download"]), Schedule.parse(lists["install"]))

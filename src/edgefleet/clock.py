"""Time as an interface: the server, the agent and the planners never read the clock directly."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "ScaledClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for timeouts and intervals)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ScaledClock:
    """A virtual wall clock for simulations: real time until ``epoch`` (unix seconds), then
    ``speed`` virtual seconds per real second, so that hours of bake time and days of
    maintenance windows pass in minutes. Every process of a simulation given the same epoch
    and speed reads the same time. Intervals (``monotonic``) stay real: they pace network
    traffic, which a faster clock must not multiply.

    ``epoch`` may be set after construction (``start``): a simulation enrolls its devices on
    real time (their certificates are checked by TLS against real time) and then speeds up.
    """

    def __init__(self, speed: float, epoch: float | None = None) -> None:
        if speed < 1:
            raise ValueError("a virtual clock runs at least as fast as real time")
        self.speed = speed
        self.epoch = epoch

    def start(self, epoch: float) -> None:
        self.epoch = epoch

    def now(self) -> datetime:
        real = time.time()
        if self.epoch is None or real <= self.epoch:
            return datetime.fromtimestamp(real, UTC)
        return datetime.fromtimestamp(self.epoch + (real - self.epoch) * self.speed, UTC)

    def monotonic(self) -> float:
        return time.monotonic()

"""A download that pauses when its window closes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from edgefleet.clock import Clock
from edgefleet.util.stop import StopSignal


@dataclass(frozen=True)
class WindowStop:
    """A download's stop signal: set when the agent stops (``stopped``), and once the window
    it began in closes. What arrived by then is kept; the next window resumes it."""

    stopped: StopSignal
    closes: datetime
    clock: Clock

    def is_set(self) -> bool:
        return self.stopped.is_set() or self.clock.now() >= self.closes

"""Retry delays: exponential with full jitter (AWS architecture blog), so a whole fleet
coming back after an outage does not hit the control plane in lockstep."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """Delay before the next attempt after one more failure."""
        ceiling = min(self.maximum, self.initial * (2 ** min(self.failures, 62)))
        self.failures += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


def jittered(interval: float, rng: random.Random, spread: float = 0.2) -> float:
    """``interval`` +/- ``spread`` so that devices started together drift apart."""
    return interval * rng.uniform(1 - spread, 1 + spread)

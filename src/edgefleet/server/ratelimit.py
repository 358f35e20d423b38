"""Per-device request rate limits: a token bucket per device certificate.

Keyed by the device a verified client certificate names, never by address: a whole store
or factory line sits behind one NAT address, and one misbehaving device must not starve
its neighbours. Each server process keeps its own buckets (behind a load balancer that
spreads a device over N processes, a device may reach N times the rate); the limit is a
guard against runaway agents, not an accounting.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    at: float


class DeviceRateLimiter:
    """``rate`` requests per second on average, ``burst`` at once; ``rate`` 0 disables it.
    At most ``entries`` buckets are kept (the least recently used go first: a device that
    has been quiet that long has a full bucket anyway)."""

    def __init__(self, rate: float, burst: int, *, entries: int = 200_000,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.entries = entries
        self.monotonic = monotonic
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def charge(self, device_id: str) -> None:
        """Take one request from ``device_id``'s bucket.

        Raises:
            RateLimited: the bucket is empty; ``retry_after`` says when one token is back.
        """
        if self.rate <= 0:
            return
        now = self.monotonic()
        bucket = self._buckets.pop(device_id, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            if len(self._buckets) >= self.entries:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        self._buckets[device_id] = bucket
        if bucket.tokens < 1.0:
            raise RateLimited(f"device {device_id} exceeds {self.rate:g} requests/s (burst {self.burst:g})",
                              retry_after=(1.0 - bucket.tokens) / self.rate)
        bucket.tokens -= 1.0

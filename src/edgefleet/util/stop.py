"""What long blocking work (a download, a delta's assembly) polls to end early."""

from __future__ import annotations

from typing import Protocol


class StopSignal(Protocol):
    """Set when the work should end now: ``threading.Event`` is one; so is a window's end."""

    def is_set(self) -> bool: ...

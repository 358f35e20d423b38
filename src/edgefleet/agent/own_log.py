"""The agent's own last log lines, for a remote logs session on a device without a journal."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging

OWN_LOG_LINES = 500


# The agent whose code runs now: set in its loop's context, inherited by the tasks and
# threads it starts, so a log line is told from one of another agent or a server that
# shares the process (the demo, the simulator, tests).
RUNNING: contextvars.ContextVar[object | None] = contextvars.ContextVar("edgefleet_agent", default=None)


class OwnLog(logging.Handler):
    """The agent's own log, the last lines of it, for a logs session where there is no
    journal; followers get new lines as they are logged."""

    def __init__(self, owner: object, lines: int = OWN_LOG_LINES) -> None:
        super().__init__(logging.INFO)
        self.owner = owner
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self.followers: set[asyncio.Queue[str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if RUNNING.get() is not self.owner:
            return  # another agent's, or the server's
        line = self.format(record)
        self.lines.append(line)
        for queue in self.followers:
            queue.put_nowait(line)

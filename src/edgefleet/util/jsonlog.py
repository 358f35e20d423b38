"""Structured logs: one JSON object per line (time, level, logger, message, and the
exception if any), for journald, Loki or any log shipper. Daemons log this way when
``EDGEFLEET_LOG_FORMAT=json``."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


# HTTP clients' per-request lines ("HTTP Request: GET ... 200"): one per poll and check-in.
REQUEST_LOGGERS = ("httpx", "httpcore")


def request_lines_at_debug(level: str) -> None:
    """Per-request lines of the HTTP clients only at DEBUG: at INFO an agent would log every
    poll, drowning what it decided."""
    if logging.getLevelName(level.upper()) != logging.DEBUG:
        for name in REQUEST_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

"""``python -m edgefleet.agent --config FILE``: the agent daemon as a device runs it, with
settings from FILE and EDGEFLEET_AGENT_* variables, JSON logs, and none of the command
line's other commands loaded (under emulation every imported module costs seconds)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgefleet.agent.main import run
from edgefleet.agent.settings import AgentSettings
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.settings import load_settings
from edgefleet.util.jsonlog import JsonFormatter, request_lines_at_debug


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgefleet.agent", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    request_lines_at_debug(args.log_level)
    try:
        run(load_settings(AgentSettings, args.config, {}))
    except ConfigError as exc:
        logging.getLogger("edgefleet.agent").error("configuration error: %s", exc.message)
        return 2
    except EdgefleetError as exc:
        logging.getLogger("edgefleet.agent").error("%s: %s", exc.code, exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

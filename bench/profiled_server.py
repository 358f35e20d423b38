"""Run ``edgefleet ...`` under cProfile counting CPU time (not wall time: an idle event loop
costs nothing), and write the profile when the process stops (SIGINT).

    python bench/profiled_server.py OUT.prof -m edgefleet server --port ...
"""

from __future__ import annotations

import cProfile
import sys
import time

from edgefleet.cli import main

if __name__ == "__main__":
    out, rest = sys.argv[1], sys.argv[2:]
    if rest[:2] == ["-m", "edgefleet"]:
        rest = rest[2:]
    sys.argv = ["edgefleet", *rest]
    profile = cProfile.Profile(time.process_time)
    try:
        profile.runcall(main)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        profile.dump_stats(out)

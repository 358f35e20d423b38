"""The device agent: enroll, check in, report status; hardware behind small interfaces.

``daemon`` is the loop (I/O shell), ``backoff`` and ``state`` its pure parts,
``transport`` the HTTPS client, ``hardware/`` the interfaces with their real (Linux host)
and emulated (vdevice) implementations.
"""

import sys

# httpx imports its own command-line client (click, pygments and rich: about 70 modules)
# whenever they are installed, as they are beside edgefleet's CLI; the agent never runs it.
# A None entry makes that import fail, and httpx then leaves its CLI out (its own fallback).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from edgefleet.agent.daemon import Agent
from edgefleet.agent.settings import AgentSettings

__all__ = ["Agent", "AgentSettings"]

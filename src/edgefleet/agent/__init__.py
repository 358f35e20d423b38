"""The device agent: enroll, check in, report status; hardware behind small interfaces.

``daemon`` is the loop (I/O shell), ``backoff`` and ``state`` its pure parts,
``transport`` the HTTPS client, ``hardware/`` the interfaces with their real (Linux host)
and emulated (vdevice) implementations.
"""

from edgefleet.agent.daemon import Agent
from edgefleet.agent.settings import AgentSettings

__all__ = ["Agent", "AgentSettings"]

"""The site's policy for remote sessions on this device: a file in the image
(``remote-access.json``, e.g. ``{"shell": false}``) that may refuse any verb, whatever
the fleet's operator is allowed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edgefleet.protocol.sessions import Refused, Verb

log = logging.getLogger("edgefleet.agent.remote")
VERBS: tuple[Verb, ...] = ("shell", "logs", "forward", "copy")


@dataclass(frozen=True)
class SitePolicy:
    """Which verbs this device's site allows (``remote-access.json`` in the image: e.g.
    ``{"shell": false}``). No file: all of them. An unreadable file: none (fail closed)."""

    allowed: frozenset[str]
    source: str

    @classmethod
    def load(cls, path: Path | None) -> SitePolicy:
        if path is None or not path.exists():
            return cls(frozenset(VERBS), "no policy file")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not all(isinstance(v, bool) for v in data.values()):
                raise ValueError("expected an object of verb: true/false")
        except (OSError, ValueError) as exc:
            log.error("remote access policy %s is unusable, refusing every session: %s", path, exc)
            return cls(frozenset(), f"{path} (unusable: {exc})")
        return cls(frozenset(v for v in VERBS if data.get(v, True)), str(path))

    def refusal(self, verb: str) -> Refused | None:
        if verb in self.allowed:
            return None
        return Refused(code="site_policy", reason=f"this site's policy refuses remote {verb} ({self.source})")

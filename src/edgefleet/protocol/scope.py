"""An operator's scope: the devices (and rollouts) a scoped token or sign-in may see and act on.

A scope is a list of requirements that must all hold, each on a device label or its site::

    site in (berlin-*, potsdam-01), ring=canary

``key=value`` pins a key to one value, ``key in (v1, v2)`` to one of several; a value may
hold ``*`` (any run of characters, nothing else is special). ``site`` is the site a
device enrolled at; any other key is an operator's label (as rollout selectors read them).
A device is in scope when every requirement holds for it. A rollout is in scope when its
selector pins every key the scope names to a value the scope admits: then every device it
can ever take (joiners included) is in scope too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Requirement", "Scope", "ScopeError", "parse_scope"]

MAX_TEXT = 1000
MAX_REQUIREMENTS = 16
MAX_VALUES = 32
_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}"
_VALUE = re.compile(r"[A-Za-z0-9*][A-Za-z0-9._*-]{0,63}")
_REQUIREMENT = re.compile(rf"\s*(?P<key>{_KEY})\s*(?:=\s*(?P<one>[^,()\s]+)|\s+in\s*\((?P<many>[^()]*)\))\s*(?:,|$)")


class ScopeError(ValueError):
    """A scope that cannot be read; the message names the part."""


@dataclass(frozen=True)
class Requirement:
    key: str
    values: tuple[str, ...]  # one of these (``*`` as a wildcard)
    listed: bool = False  # written ``key in (...)``: shown so again

    def admits(self, value: str | None) -> bool:
        return value is not None and any(_glob(pattern).fullmatch(value) for pattern in self.values)

    def __str__(self) -> str:
        if len(self.values) == 1 and not self.listed:
            return f"{self.key}={self.values[0]}"
        return f"{self.key} in ({', '.join(self.values)})"


@dataclass(frozen=True)
class Scope:
    requirements: tuple[Requirement, ...]

    def admits(self, site: str | None, labels: Mapping[str, str]) -> bool:
        """Whether a device with this site and these labels is in scope."""
        return all(r.admits(site if r.key == "site" else labels.get(r.key)) for r in self.requirements)

    def covers(self, selector: Mapping[str, str]) -> bool:
        """Whether every device ``selector`` (exact labels, ``site`` too) can ever match is
        in scope: the selector pins each key the scope names to a value it admits."""
        return all(r.admits(selector.get(r.key)) for r in self.requirements)

    def __str__(self) -> str:
        return ", ".join(map(str, self.requirements))


@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def parse_scope(text: str) -> Scope:
    """Raises ScopeError naming what could not be read (an empty scope is refused: it
    would be the whole fleet, which is no scope at all)."""
    if len(text) > MAX_TEXT:
        raise ScopeError(f"a scope of {len(text)} characters is over {MAX_TEXT}")
    requirements: list[Requirement] = []
    at = 0
    while at < len(text) and text[at:].strip():
        match = _REQUIREMENT.match(text, at)
        if match is None:
            raise ScopeError(f"cannot read {text[at:].strip()[:40]!r}: write key=value or key in (v1, v2)")
        raw = [match["one"]] if match["one"] is not None else [v.strip() for v in match["many"].split(",")]
        for value in raw:
            if not _VALUE.fullmatch(value):
                raise ScopeError(f"{match['key']}: {value!r} is not a value (letters, digits, . _ - and *)")
        if len(raw) > MAX_VALUES:
            raise ScopeError(f"{match['key']}: more than {MAX_VALUES} values")
        if any(r.key == match["key"] for r in requirements):
            raise ScopeError(f"{match['key']} is named twice")
        requirements.append(Requirement(match["key"], tuple(raw), listed=match["many"] is not None))
        at = match.end()
    if not requirements:
        raise ScopeError("an empty scope: leave it out for the whole fleet")
    if len(requirements) > MAX_REQUIREMENTS:
        raise ScopeError(f"more than {MAX_REQUIREMENTS} requirements")
    return Scope(tuple(requirements))

"""What the director signs beside the release it names for one device: the device it is
for and how to take it. Read by the server when it signs and by the agent when it verifies
(so this module stays light: no signing code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuf.api.metadata import TargetFile

from edgefleet.errors import UpdateRefused


@dataclass(frozen=True)
class Instructions:
    """How a device is to take the release its director names: signed with the assignment,
    on the image target, so that a compromised server database, mirror or proxy can neither
    forge nor change them (Uptane: whatever steers a device is signed)."""

    force_reboot: bool = False  # install and reboot now, outside the maintenance windows
    retry_failed: bool = False  # try again a release that failed on this device before
    revert: bool = False  # switch back to the other slot, which holds the named release

    def fields(self) -> dict[str, bool]:
        return {"force_reboot": self.force_reboot, "retry_failed": self.retry_failed, "revert": self.revert}

    @classmethod
    def of(cls, target: TargetFile) -> Instructions:
        """The instructions signed on the director's image ``target`` (none: the defaults).

        Raises UpdateRefused when one is there but not a boolean."""
        bound = director_fields(target)
        found = {name: bound.get(name, False) for name in ("force_reboot", "retry_failed", "revert")}
        wrong = sorted(name for name, value in found.items() if not isinstance(value, bool))
        if wrong:
            raise UpdateRefused(f"director instructions {wrong} are not booleans", code="director_bad_instructions")
        return cls(**found)


PLAIN = Instructions()  # take it in the maintenance windows, no retry of a failed release, no revert


def director_fields(target: TargetFile) -> dict[str, Any]:
    """What the director adds to a target it lists for one device (``custom.director``)."""
    custom = target.custom if isinstance(target.custom, dict) else {}
    fields = custom.get("director", {})
    return fields if isinstance(fields, dict) else {}

"""What every protocol model shares: strictness and the basic bounded strings."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_INT = 2**62  # the largest integer a request may carry: both stores hold it (64-bit signed)
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
ShortText = Annotated[str, StringConstraints(max_length=128)]
# An advisory's id or alias: CVE-2026-1234, DSA-5801-1, GHSA-..., PYSEC-...
ADVISORY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$"
# The one service a workload token is for (a JWT ``aud``): a URI or a name, printable, no spaces.
Audience = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,255}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

"""What a remote-session request may name: an absolute device path of at most 4096
characters without NUL, for a file copy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgefleet.protocol.sessions import SessionRequest


@pytest.mark.parametrize("path", ["/etc/hostname", "/" + "a" * 4095, "/srv/données/é"])
def test_a_copy_names_any_absolute_path_up_to_4096_characters(path: str) -> None:
    assert SessionRequest(verb="copy", path=path, direction="get").path == path


@pytest.mark.parametrize("path", ["etc/hostname", "/etc/\x00shadow", "/" + "a" * 4096, ""])
def test_a_copy_path_that_is_relative_holds_nul_or_is_too_long_is_refused(path: str) -> None:
    with pytest.raises(ValidationError):
        SessionRequest(verb="copy", path=path, direction="get")

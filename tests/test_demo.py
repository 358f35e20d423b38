"""The demo is the showcase: it must run to the end on its own."""

from __future__ import annotations

import asyncio
import io
import logging
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from edgefleet.demo.runner import DemoOptions, run_demo, swtpm_usable


def test_headless_demo_tells_the_whole_story_and_the_rollout_halts_on_the_implant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    output = io.StringIO()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo makes its directory
    ok = asyncio.run(run_demo(DemoOptions(devices=12, sites=3, headless=True, duration=5),
                              Console(file=output, width=160)))
    text = output.getvalue()
    assert ok, text
    # The scripted tamper and the refused device are expected events: warnings, not errors.
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "is removed (--keep keeps it)" in " ".join(text.split())
    assert not list(tmp_path.iterdir())  # a successful run leaves nothing behind
    assert "all devices checked in" in text
    assert "configuration pushed" in text
    assert "each verified it" in text
    assert "attestation" in text
    assert "quarantined" in text  # the device that booted a tampered image
    assert "rollout halted by itself in wave 2" in text
    assert "attestation failed on" in text
    assert "/ui/" in text  # the dashboard
    assert "devices: 12" in text
    assert ("one swtpm (TPM 2.0 emulator) per device" in text) == swtpm_usable()

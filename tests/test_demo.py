"""The demo is the showcase: it must run to the end on its own."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from edgefleet.demo.runner import DemoOptions, run_demo, swtpm_usable


def test_headless_demo_tells_the_whole_story_and_the_rollout_halts_on_the_implant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    output = io.StringIO()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo makes its directory
    technician: dict[str, str] = {}

    async def visit_the_technicians_page() -> None:
        """While the demo runs: the page it printed serves that device's own view."""
        pattern = re.compile(r"technician's page of (hw-\S+) .*?: (http://\S+)\s+credential: (\S+)")
        while not (found := pattern.search(output.getvalue())):  # noqa: ASYNC110 - a console, not an event
            await asyncio.sleep(0.2)
        hardware_id, url, credential = found.groups()

        def visit() -> str:
            deadline = time.monotonic() + 120  # the page is up while the device's agent runs (not across a reboot)
            while True:
                try:
                    with httpx.Client(base_url=url, timeout=10) as browser:
                        assert browser.post("login", data={"credential": credential}).status_code in (200, 303)
                        return browser.get("status.json").text
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the technician's page never answered"
                    time.sleep(0.2)

        technician["hardware_id"], technician["status"] = hardware_id, await asyncio.to_thread(visit)

    async def both() -> bool:
        demo = asyncio.ensure_future(run_demo(DemoOptions(devices=12, sites=3, headless=True, duration=5),
                                              Console(file=output, width=160)))
        visit = asyncio.ensure_future(visit_the_technicians_page())
        await asyncio.wait({demo, visit}, return_when=asyncio.FIRST_COMPLETED)
        ok = await demo
        assert visit.done(), "the demo ended before its technician's page was visited"
        visit.result()
        return ok

    ok = asyncio.run(both())
    text = output.getvalue()
    assert ok, text
    assert technician["hardware_id"].startswith("hw-store-berlin-")
    assert '"site":"store-berlin"' in technician["status"]  # the device's own view, served by its agent
    assert '"device_id":"dev-' in technician["status"]
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

"""The device's telemetry: the durable buffer, what writes into it (the agent's events,
figures and, when asked, its own warnings) and what ships it upstream."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import StateDir
from edgefleet.telemetry.buffer import open_buffer
from edgefleet.telemetry.health import BufferHealth
from edgefleet.telemetry.recorder import Recorder, RecordingHandler
from edgefleet.telemetry.shipper import Shipper
from edgefleet.web.device_client import DeviceTransport, HttpsTransport

log = logging.getLogger("edgefleet.agent")


class TelemetryLink:
    """Opened by ``start`` once the device is enrolled, closed by ``stop``."""

    def __init__(self, settings: AgentSettings, state_dir: StateDir, rng: random.Random, *, site: str,
                 capture_logs: bool) -> None:
        self.settings, self.dir, self.rng, self.site = settings, state_dir, rng, site
        self.capture_logs = capture_logs  # the agent's own warnings into telemetry (one agent per process)
        self.recorder: Recorder | None = None
        self.shipper: Shipper | None = None
        self.transport: HttpsTransport | None = None  # its own, when a site's hub receives telemetry
        self._log_handler: logging.Handler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reported_phase: str | None = None

    async def start(self, device_id: str, transport: DeviceTransport, halt: asyncio.Event) -> Recorder:
        """The buffer opened, flushed and shipped until ``halt``; returns its recorder."""
        settings = self.settings
        buffer = await asyncio.to_thread(open_buffer, self.dir.path / "telemetry.db", settings.telemetry_max_bytes)
        recorder = Recorder(buffer)
        if settings.telemetry_url:  # the site's hub receives it; the hub forwards summaries upstream
            self.transport = HttpsTransport(
                settings.telemetry_url, settings.telemetry_ca_file or self.dir.ca, cert_file=self.dir.cert,
                key_file=self.dir.key, timeout=settings.request_timeout_seconds)
            transport = self.transport
        self.recorder, self.shipper = recorder, Shipper(
            buffer, transport.ship_telemetry, device_id, site=self.site,
            max_age_seconds=settings.telemetry_batch_seconds,
            backoff_initial_seconds=settings.backoff_initial_seconds,
            backoff_max_seconds=settings.backoff_max_seconds, rng=self.rng)
        if self.capture_logs:
            self._log_handler = RecordingHandler(recorder)
            logging.getLogger("edgefleet").addHandler(self._log_handler)
        self._tasks = [asyncio.create_task(recorder.run(halt, on_flushed=self.shipper.wake), name="telemetry-flush"),
                       asyncio.create_task(self.shipper.run(halt), name="telemetry-ship")]
        return recorder

    async def stop(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("edgefleet").removeHandler(self._log_handler)
            self._log_handler = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        recorder = self.recorder
        if recorder is not None:
            await asyncio.to_thread(recorder.flush)
        if self.transport is not None:
            await self.transport.aclose()
            self.transport = None
        if recorder is not None:
            recorder.buffer.close()

    def buffer_use(self) -> tuple[int, int]:
        """Bytes held in the buffer, and its cap (a health source)."""
        recorder = self.recorder
        return (recorder.buffer.figures().bytes if recorder is not None else 0), self.settings.telemetry_max_bytes

    async def record(self, update_state: str, update_error: str | None) -> None:
        """Events and the agent's own figures into telemetry, with each status report."""
        recorder = self.recorder
        if recorder is None:
            return
        if update_state != self._reported_phase:
            recorder.event("update_phase", phase=update_state, error=update_error)
            self._reported_phase = update_state
        figures = await asyncio.to_thread(recorder.buffer.figures)
        health = BufferHealth(figures, self.shipper.last_success if self.shipper is not None else None)
        for name, value in health.samples().items():
            recorder.metric(f"edgefleet_agent_telemetry_{name}", value)
        if self.settings.metrics_file is not None:
            await asyncio.to_thread(self.write_metrics_file, self.settings.metrics_file, health)

    @staticmethod
    def write_metrics_file(path: Path, health: BufferHealth) -> None:
        from edgefleet.telemetry.health_metrics import write_textfile  # prometheus_client, when asked for

        try:
            write_textfile(path, "edgefleet_agent_telemetry", health)
        except OSError as exc:
            log.warning("cannot write the metrics file %s: %s", path, exc)

    def local_view(self) -> dict[str, object] | None:
        """The buffer's figures, as the technician's page shows them (None before start)."""
        recorder = self.recorder
        if recorder is None:
            return None
        figures = recorder.buffer.figures()
        return {"queued": figures.queued, "bytes": figures.bytes, "dropped": figures.dropped,
                "oldest_age_seconds": figures.oldest_age_seconds,
                "last_ship": self.shipper.last_success if self.shipper is not None else None}

    def recent_logs(self) -> list[dict[str, object]]:
        recorder = self.recorder
        return [] if recorder is None else [{"at": at, "level": level, "source": source, "message": message}
                                            for at, level, source, message in reversed(recorder.recent)][:100]

"""Telemetry that survives bad links: the device buffer, shipping, export formats and the hub."""

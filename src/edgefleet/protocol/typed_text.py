"""The short text forms an operator types for a rollout (CLI flags, the dashboard's form):
``k=v`` pairs (labels, selectors, budgets) and waves ``SIZE`` or ``SIZE/BAKE_SECONDS``
(``1``, ``10%``, ``10%/1800``). One reading for every place that takes them; each raises
ValueError with the text it could not read."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

WAVE = re.compile(r"(?P<size>[0-9]+%?)(?:/(?P<bake>[0-9]+(?:\.[0-9]+)?)s?)?")


def parse_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.strip().partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()


def parse_pairs(texts: Iterable[str]) -> dict[str, str]:
    return dict(parse_pair(text) for text in texts if text.strip())


def parse_wave(text: str) -> dict[str, Any]:
    """A wave as the API takes it (``{"size": ..., "bake_seconds": ...}``)."""
    match = WAVE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"a wave is SIZE or SIZE/BAKE_SECONDS (10, 10%, 10%/1800), got {text!r}")
    wave: dict[str, Any] = {"size": match["size"]}
    if match["bake"]:
        wave["bake_seconds"] = float(match["bake"])
    return wave

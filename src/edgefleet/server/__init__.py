"""The control plane: FastAPI app (``app``), its HTTP handlers (``routes/``) and the uvicorn
runner (``run``; mTLS in ``web/mtls.py``). Handlers parse, call a service, and map the result.

The names below load on first use: a command that only needs ``server.settings`` (or the
CLI's help) does not pay for the whole app."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.server.app import create_app
    from edgefleet.server.run import ServerThread, serve
    from edgefleet.server.settings import ServerSettings

__all__ = ["ServerSettings", "ServerThread", "create_app", "serve"]

_HOME = {"create_app": "app", "ServerThread": "run", "serve": "run", "ServerSettings": "settings"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)

"""The control plane: FastAPI app (``app``), its HTTP handlers (``routes/``) and the uvicorn
runner with mTLS (``run``, ``tls``). Handlers parse, call a service, and map the result."""

from edgefleet.server.app import create_app
from edgefleet.server.run import ServerThread, serve
from edgefleet.server.settings import ServerSettings

__all__ = ["ServerSettings", "ServerThread", "create_app", "serve"]

"""mTLS for uvicorn: the server asks for a client certificate (optional, so enrollment
works on the same port) and hands it to the app as the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``), which uvicorn does not implement."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class MutualTlsHttpProtocol(HttpToolsProtocol):
    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # asyncio and uvloop call connection_made after the handshake, so the peer
        # certificate (already verified against the fleet CA) is known here, once per
        # connection rather than once per request.
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            self._tls = None
            return
        der = ssl_object.getpeercert(binary_form=True)
        self._tls = {
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
            "server_cert": None,
            "client_cert_name": None,
        }

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]

    def shutdown(self) -> None:
        # An idle keep-alive connection has nothing in flight: drop it now. A TLS close()
        # would wait for the peer's close_notify, holding server shutdown for the whole
        # grace period whenever a device keeps its connection open.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()

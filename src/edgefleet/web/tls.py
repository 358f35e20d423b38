"""The client side of the fleet's TLS: an SSL context that trusts the fleet CA and presents
a certificate when it has one (agent, hub and admin tools alike)."""

from __future__ import annotations

import ssl
from pathlib import Path


def tls_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None, *,
                system_cas: bool = False) -> ssl.SSLContext:
    """Trusting the fleet CA (and, for mirrors such as CDNs, the system's CAs), presenting
    the device certificate if given."""
    context = ssl.create_default_context() if system_cas else ssl.create_default_context(cafile=str(ca_file))
    if system_cas:
        context.load_verify_locations(cafile=str(ca_file))
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file))
    return context

"""The client side of the fleet's TLS: an SSL context that trusts the fleet CA and presents
a certificate when it has one (agent, hub and admin tools alike)."""

from __future__ import annotations

import ssl
import weakref
from pathlib import Path

from edgefleet.errors import ConfigError

# Every live context presenting a certificate, by its (certificate, key) files: a device that
# renewed its certificate reloads them all at once (``reload_presented``), so each of its
# clients presents the new one from its next connection.
_PRESENTING: dict[tuple[Path, Path], weakref.WeakSet[ssl.SSLContext]] = {}


def tls_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None, *,
                system_cas: bool = False) -> ssl.SSLContext:
    """Trusting the fleet CA (and, for mirrors such as CDNs, the system's CAs), presenting
    the device certificate if given. Raises ConfigError naming the file that is missing or
    is not a certificate (or key)."""
    try:
        context = ssl.create_default_context() if system_cas else ssl.create_default_context(cafile=str(ca_file))
        if system_cas:
            context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the CA file {ca_file}: {exc.strerror or exc}") from exc
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the certificate {cert_file} with key {key_file}: "
                              f"{exc.strerror or exc}") from exc
        _PRESENTING.setdefault((cert_file, key_file), weakref.WeakSet()).add(context)
    return context


def reload_presented(cert_file: Path, key_file: Path) -> int:
    """Load ``cert_file`` and ``key_file`` anew into every live context presenting them; how
    many. Raises ConfigError when they cannot be used (nothing is changed then: the first
    load fails before any context is touched)."""
    contexts = list(_PRESENTING.get((cert_file, key_file), ()))
    for context in contexts:
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the certificate {cert_file} with key {key_file}: "
                              f"{exc.strerror or exc}") from exc
    return len(contexts)

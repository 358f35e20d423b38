"""edgefleet: immutable edge fleets with GitOps desired state and TPM attestation."""

from edgefleet._version import __version__

__all__ = ["__version__"]

"""HTTP plumbing that the control plane, the hub and the agent share: TLS contexts and the
mTLS server protocol, the error body, the body bound, serving on uvicorn, and the device
API client. It depends on none of them (tests/test_layers.py holds it to that)."""

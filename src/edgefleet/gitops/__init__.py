"""GitOps: the fleet repository synced with the real git CLI, signatures checked against
signers pinned in the server's configuration, rendered per group, gated by CEL policies."""

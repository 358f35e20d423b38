"""HTTP handlers: parse, call the service or store, map the result. Nothing more."""

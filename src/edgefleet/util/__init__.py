"""Small helpers shared by the server, the agent and the CLI."""

"""A site's regional hub: telemetry store-and-forward with summaries and exporters, and a
mirror of the fleet's repository. Its own process: it imports neither the control plane
(server/, store/) nor the agent (tests/test_layers.py holds it to that)."""

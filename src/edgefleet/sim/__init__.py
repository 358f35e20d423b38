"""The fleet simulator (``edgefleet sim``): thousands of emulated devices running the real
agent code, in sites behind emulated links, against real control plane processes."""

"""``edgefleet demo``: a control plane and a fleet of emulated devices on one machine."""

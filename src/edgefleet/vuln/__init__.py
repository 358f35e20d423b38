"""Software bills of materials, vulnerability advisories (OSV) and VEX, and what they mean for the fleet."""

"""Signed releases: the TUF image repository (Uptane's "image repo").

``keys`` keeps offline and online signing keys, ``image`` describes an image as a TUF
target with edgefleet's custom fields, ``metadata`` builds and checks TUF metadata (pure),
``repository`` lays it out on disk as consistent snapshots that any static HTTP server can
serve, and ``online`` is what the control plane signs with its online keys.
"""

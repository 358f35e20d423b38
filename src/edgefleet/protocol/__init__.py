"""The wire contract between devices, the control plane and the admin CLI (API v1).

Every model forbids unknown fields and bounds every size, so a request is either fully
understood or refused before anything touches the database.
"""
